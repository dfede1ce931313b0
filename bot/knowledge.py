"""The shop's knowledge: FAQ entries, curated localizations, glossary, markets, locales.

Loaded once from ``knowledge/`` (format: docs/knowledge.md), validated, and shared read-only
by every stage. The English FAQ is the pivot; ``i18n/LL.toml`` files hold the curated
localized answers that the bot shows verbatim.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import time
from pathlib import Path
from typing import Any

from bot.errors import KnowledgeError

OUT_OF_SCOPE = "_out_of_scope"  # pseudo FAQ id of the off-topic examples
TEMPLATE = re.compile(r"\{(money|length|weight|time|shop|hours):([A-Za-z0-9_]+)\}")
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")  # index 0 = Monday, as in CLDR/Babel
TOPICS = (
    "orders",
    "shipping",
    "returns",
    "refunds",
    "payments",
    "account",
    "promotions",
    "warranty",
    "products",
    "contact",
)


@dataclass(frozen=True)
class Fact:
    key: str
    kind: str  # money | length | weight | time
    per_market: Mapping[str, str] = field(default_factory=dict)  # money: "49 EUR"
    value: float = 0.0  # length in cm, weight in kg
    clock: time | None = None  # time: a time of day ("14:00"), local to the place it concerns

    def money(self, market: str) -> tuple[float, str]:
        raw = self.per_market.get(market) or self.per_market.get("INTL")
        if raw is None:
            raise KnowledgeError(f"fact {self.key!r} has no value for market {market!r}")
        amount, _, currency = raw.strip().partition(" ")
        return float(amount), currency.strip()


@dataclass(frozen=True)
class Opening:
    """One line of a timetable: the same hours on a run of weekdays."""

    first_day: int  # 0 = Monday ... 6 = Sunday
    last_day: int  # == first_day for a single day
    opens: time
    closes: time


@dataclass(frozen=True)
class Hours:
    """When a contact channel is staffed: ``[hours.KEY]`` in shop.toml, ``{hours:KEY}``."""

    key: str
    timezone: str  # IANA zone the times are in, e.g. Europe/Amsterdam
    openings: tuple[Opening, ...]


@dataclass(frozen=True)
class Market:
    code: str
    name: str
    currency: str
    countries: tuple[str, ...]
    default: bool = False
    policy: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LanguageSettings:
    code: str
    name: str
    locale: str  # CLDR, e.g. de_DE
    market: str
    register: str  # formal | informal
    pronoun: str
    units: str  # metric | imperial
    direction: str  # ltr | rtl
    date_style: str = "medium"
    style: str = ""  # sentence-ending style where grammar marks politeness (ko, ja)


@dataclass(frozen=True)
class Answer:
    """An answer text with optional market-specific replacements."""

    text: str
    markets: Mapping[str, str] = field(default_factory=dict)

    def for_market(self, market: str) -> str:
        return self.markets.get(market, self.text)


# States (and one kind) of an item or order that an entry's policy rules out ("excludes"): a
# model-written sentence granting a return, exchange, refund, cancellation or change for one
# of them fails the faithfulness gate (bot/faithful.py; the words per language:
# compose/LL.toml).
STATES = ("worn", "washed", "tags_removed", "unsealed", "personalized", "shipped", "gift_card")


@dataclass(frozen=True)
class FaqEntry:
    id: str
    topic: str
    questions: tuple[str, ...]
    answer: Answer
    excludes: tuple[str, ...] = ()  # of STATES


@dataclass(frozen=True)
class LocalizedEntry:
    questions: tuple[str, ...]
    answer: Answer


@dataclass(frozen=True)
class Localization:
    language: str
    messages: Mapping[str, str]
    ui: Mapping[str, str]
    faq: Mapping[str, LocalizedEntry]


@dataclass(frozen=True)
class Knowledge:
    shop: Mapping[str, Any]
    contact: Mapping[str, str]
    glossary: tuple[str, ...]
    facts: Mapping[str, Fact]
    markets: Mapping[str, Market]
    languages: Mapping[str, LanguageSettings]
    entries: Mapping[str, FaqEntry]
    i18n: Mapping[str, Localization]
    fingerprint: str
    out_of_scope: tuple[str, ...] = ()  # off-topic examples, any language
    hours: Mapping[str, Hours] = field(default_factory=dict)  # opening hours per contact channel

    def entry(self, faq_id: str) -> FaqEntry:
        try:
            return self.entries[faq_id]
        except KeyError:
            raise KnowledgeError(f"unknown FAQ id {faq_id!r}") from None

    def curated_answer(self, faq_id: str, language: str, market: str) -> str | None:
        """The curated answer template in ``language``, or None where none was written."""
        if language == "en":
            return self.entry(faq_id).answer.for_market(market)
        loc = self.i18n.get(language)
        localized = loc.faq.get(faq_id) if loc else None
        return localized.answer.for_market(market) if localized else None

    def message(self, key: str, language: str) -> str:
        """A bot sentence in ``language``, falling back to English."""
        for lang in (language, "en"):
            loc = self.i18n.get(lang)
            if loc and key in loc.messages:
                return loc.messages[key]
        raise KnowledgeError(f"no message {key!r} in knowledge/i18n/en.toml")

    def ui(self, language: str) -> dict[str, str]:
        base = dict(self.i18n["en"].ui) if "en" in self.i18n else {}
        loc = self.i18n.get(language)
        if loc:
            base.update(loc.ui)
        return base

    def market_code(self, *, language: str, country: str | None = None) -> str:
        """The market of a country (ISO 3166), else the language's default market."""
        if country:
            country = country.upper()
            for market in self.markets.values():
                if country in market.countries:
                    return market.code
            return self.default_market
        settings = self.languages.get(language)
        return settings.market if settings else self.default_market

    @property
    def default_market(self) -> str:
        for market in self.markets.values():
            if market.default:
                return market.code
        return next(iter(self.markets))

    def questions(self) -> Iterator[tuple[str, str]]:
        """(faq id, question) for every question variant, English and curated localized."""
        for entry in self.entries.values():
            for q in entry.questions:
                yield entry.id, q
        for loc in self.i18n.values():
            for faq_id, localized in loc.faq.items():
                for q in localized.questions:
                    yield faq_id, q
        for text in self.out_of_scope:
            yield OUT_OF_SCOPE, text


def strip_templates(text: str) -> str:
    """Templates as plain words for the index: ``{hours:support}`` -> ``support hours``."""

    def words(match: re.Match[str]) -> str:
        kind, key = match.group(1), match.group(2).replace("_", " ")
        return f"{key} hours" if kind == "hours" else key

    return TEMPLATE.sub(words, text)


def load_knowledge(directory: Path) -> Knowledge:
    """Read and validate ``knowledge/``; raise KnowledgeError naming the file at fault."""
    if not directory.is_dir():
        raise KnowledgeError(f"knowledge directory not found: {directory}")
    digest = hashlib.sha256()
    files = sorted(directory.rglob("*.toml"))
    for path in files:
        digest.update(path.relative_to(directory).as_posix().encode())
        digest.update(path.read_bytes())

    shop = _read(directory / "shop.toml")
    facts = {key: _fact(key, raw) for key, raw in shop.get("facts", {}).items()}
    hours = {key: _hours(key, raw) for key, raw in shop.get("hours", {}).items()}
    markets = {
        code: Market(
            code=code,
            name=raw["name"],
            currency=raw["currency"],
            countries=tuple(raw.get("countries", ())),
            default=bool(raw.get("default", False)),
            policy={k: v for k, v in raw.items() if k not in _MARKET_KEYS},
        )
        for code, raw in _read(directory / "markets.toml")["markets"].items()
    }
    languages = {
        code: LanguageSettings(
            code=code,
            name=raw["name"],
            locale=raw["locale"],
            market=raw["market"],
            register=raw.get("register", "formal"),
            pronoun=raw.get("pronoun", ""),
            units=raw.get("units", "metric"),
            direction=raw.get("direction", "ltr"),
            date_style=raw.get("date_style", "medium"),
            style=raw.get("style", ""),
        )
        for code, raw in _read(directory / "locales.toml")["languages"].items()
    }
    entries: dict[str, FaqEntry] = {}
    for path in sorted((directory / "faq").glob("*.toml")):
        raw = _read(path)
        topic = raw.get("topic", path.stem)
        for item in raw.get("entry", []):
            faq_id = item["id"]
            if faq_id in entries:
                raise KnowledgeError(f"{path.name}: duplicate FAQ id {faq_id!r}")
            excludes = tuple(item.get("excludes", ()))
            unknown = sorted(set(excludes) - set(STATES))
            if unknown:
                raise KnowledgeError(f"{path.name}: {faq_id}: unknown excludes {unknown}")
            entries[faq_id] = FaqEntry(
                id=faq_id,
                topic=topic,
                questions=tuple(item.get("questions", ())),
                answer=_answer(item),
                excludes=excludes,
            )
    i18n = {
        path.stem: _localization(path, entries)
        for path in sorted((directory / "i18n").glob("*.toml"))
    }
    knowledge = Knowledge(
        shop=shop.get("shop", {}),
        contact={k: str(v) for k, v in shop.get("contact", {}).items()},
        glossary=tuple(shop.get("glossary", {}).get("terms", ())),
        facts=facts,
        markets=markets,
        languages=languages,
        entries=entries,
        i18n=i18n,
        fingerprint=digest.hexdigest()[:16],
        out_of_scope=_out_of_scope(directory / "out_of_scope.toml"),
        hours=hours,
    )
    _check_templates(knowledge)
    return knowledge


_MARKET_KEYS = {"name", "currency", "countries", "default"}


def _read(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise KnowledgeError(f"missing knowledge file: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise KnowledgeError(f"{path}: {exc}") from exc


def _out_of_scope(path: Path) -> tuple[str, ...]:
    if not path.exists():
        return ()
    examples = _read(path).get("examples", {})
    return tuple(text for texts in examples.values() for text in texts)


def _fact(key: str, raw: Mapping[str, Any]) -> Fact:
    kind = raw.get("kind", "money")
    if kind == "money":
        values = {k: str(v) for k, v in raw.items() if k != "kind"}
        return Fact(key=key, kind=kind, per_market=values)
    if kind in {"length", "weight"}:
        return Fact(key=key, kind=kind, value=float(raw["value"]))
    if kind == "time":
        return Fact(key=key, kind=kind, clock=_clock(str(raw.get("value", "")), f"fact {key!r}"))
    raise KnowledgeError(f"shop.toml: fact {key!r} has unknown kind {kind!r}")


def _clock(raw: str, where: str) -> time:
    """ "08:00" -> time(8, 0); 24-hour clock, minutes required."""
    match = re.fullmatch(r"([01]?\d|2[0-3]):([0-5]\d)", raw.strip())
    if not match:
        raise KnowledgeError(f'shop.toml: {where}: {raw!r} is not a time of day like "08:00"')
    return time(int(match.group(1)), int(match.group(2)))


def _weekdays(raw: str, where: str) -> tuple[int, int]:
    """ "mon-fri" -> (0, 4); "sat" -> (5, 5)."""
    first, _, last = raw.strip().lower().partition("-")
    last = last or first
    if first not in WEEKDAYS or last not in WEEKDAYS:
        raise KnowledgeError(f'shop.toml: {where}: days {raw!r} are not like "mon-fri" or "sat"')
    span = (WEEKDAYS.index(first), WEEKDAYS.index(last))
    if span[0] > span[1]:
        raise KnowledgeError(f"shop.toml: {where}: days {raw!r} run backwards")
    return span


def _hours(key: str, raw: Mapping[str, Any]) -> Hours:
    where = f"hours {key!r}"
    zone = str(raw.get("timezone", "")).strip()
    if not re.fullmatch(r"[A-Za-z_]+(?:/[A-Za-z0-9_+-]+)+", zone):
        raise KnowledgeError(f"shop.toml: {where}: timezone {zone!r} is not an IANA zone name")
    openings = []
    for line in raw.get("open", []):
        first, last = _weekdays(str(line.get("days", "")), where)
        opens = _clock(str(line.get("from", "")), where)
        closes = _clock(str(line.get("to", "")), where)
        if closes <= opens:
            raise KnowledgeError(f"shop.toml: {where}: closes at {closes} before opening {opens}")
        openings.append(Opening(first_day=first, last_day=last, opens=opens, closes=closes))
    if not openings:
        raise KnowledgeError(f"shop.toml: {where} has no opening times")
    days = sorted(d for o in openings for d in range(o.first_day, o.last_day + 1))
    if len(days) != len(set(days)):
        raise KnowledgeError(f"shop.toml: {where} lists a weekday twice")
    return Hours(key=key, timezone=zone, openings=tuple(openings))


def _answer(raw: Mapping[str, Any]) -> Answer:
    markets = {code: str(m["answer"]).strip() for code, m in raw.get("markets", {}).items()}
    return Answer(text=str(raw["answer"]).strip(), markets=markets)


def _localization(path: Path, entries: Mapping[str, FaqEntry]) -> Localization:
    raw = _read(path)
    faq: dict[str, LocalizedEntry] = {}
    for faq_id, item in raw.get("faq", {}).items():
        if faq_id not in entries:
            raise KnowledgeError(f"{path.name}: FAQ id {faq_id!r} is not in knowledge/faq/")
        faq[faq_id] = LocalizedEntry(
            questions=tuple(item.get("questions", ())), answer=_answer(item)
        )
    return Localization(
        language=raw.get("language", path.stem),
        messages=dict(raw.get("messages", {})),
        ui=dict(raw.get("ui", {})),
        faq=faq,
    )


def _check_templates(k: Knowledge) -> None:
    def texts() -> Iterator[tuple[str, str]]:
        for entry in k.entries.values():
            yield f"faq {entry.id}", entry.answer.text
            yield from ((f"faq {entry.id} [{m}]", t) for m, t in entry.answer.markets.items())
        for loc in k.i18n.values():
            for faq_id, le in loc.faq.items():
                yield f"i18n/{loc.language} {faq_id}", le.answer.text
                for m, t in le.answer.markets.items():
                    yield f"i18n/{loc.language} {faq_id} [{m}]", t
            yield from ((f"i18n/{loc.language} message {n}", t) for n, t in loc.messages.items())

    for where, text in texts():
        for kind, key in TEMPLATE.findall(text):
            if kind == "shop":
                if key not in k.contact:
                    raise KnowledgeError(f"{where}: unknown contact key {{shop:{key}}}")
            elif kind == "hours":
                if key not in k.hours:
                    raise KnowledgeError(f"{where}: unknown opening hours {{hours:{key}}}")
            elif key not in k.facts or k.facts[key].kind != kind:
                raise KnowledgeError(f"{where}: unknown {kind} fact {{{kind}:{key}}}")
