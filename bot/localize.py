"""Localization: the reply as the customer's locale writes it.

- ``{money:key}``, ``{length:key}``, ``{weight:key}``, ``{time:key}``, ``{shop:key}`` templates
  in curated answers are filled from the shop's facts for the customer's market, formatted with
  CLDR (Babel): 1299.5 EUR in de_DE is ``1.299,50 €``; lengths and weights in the locale's units.
- ``{hours:key}`` renders a contact channel's opening hours from shop.toml with the locale's
  weekday names, time format, list pattern and time-zone name: ``Monday–Friday 8:00 AM–6:00 PM
  (Pacific Time)`` in en_US, ``月曜日～金曜日 8:00～20:00（中央ヨーロッパ時間）`` in ja_JP.
- Amounts that the model or the customer wrote (``€49.90``) are re-formatted for the locale.
- Register (Sie/du, vous/tu) is a property of the curated text and of the translation
  prompt; this module exposes it for both.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import time
from functools import lru_cache

from babel import Locale, UnknownLocaleError
from babel.dates import format_time, get_timezone, get_timezone_name
from babel.lists import format_list
from babel.numbers import format_currency, format_decimal
from babel.units import format_unit

from bot.errors import KnowledgeError
from bot.knowledge import TEMPLATE, Hours, Knowledge, LanguageSettings

_CM_PER_INCH = 2.54
_LB_PER_KG = 2.20462
_SYMBOL_TO_CURRENCY = {
    "US$": "USD", "$": "USD", "€": "EUR", "£": "GBP", "¥": "JPY", "￥": "JPY", "₩": "KRW",
    "₽": "RUB", "R$": "BRL", "C$": "CAD", "A$": "AUD", "HK$": "HKD", "₹": "INR", "元": "CNY",
    "円": "JPY", "원": "KRW", "RMB": "CNY", "руб": "RUB", "руб.": "RUB", "د.إ": "AED",
}  # fmt: skip
# How a time-zone name follows the hours: full-width brackets in Chinese and Japanese, no
# space before the bracket in Korean (as the localized texts write it), " (…)" elsewhere.
_ZONE_BRACKETS = {"zh": "{0}（{1}）", "ja": "{0}（{1}）", "ko": "{0}({1})"}
_AMOUNT_RE = re.compile(
    r"^(?P<pre>[A-Z]{3}|US\$|R\$|C\$|A\$|HK\$|[$€£¥￥₩₽₹])?\s?"
    r"(?P<num>[\d.,\u00a0\u202f ]*\d)\s?"
    r"(?P<post>[A-Z]{3}|[€£¥￥₩₽₹元円원]|руб\.?|د\.إ)?$"
)


RENDERED_KEPT = 4096  # filled templates kept (entries x localities seen)


@dataclass(frozen=True)
class Locality:
    """Who the reply is for: language, CLDR locale, market."""

    language: str
    locale: str
    market: str
    settings: LanguageSettings | None = None

    @property
    def imperial(self) -> bool:
        return bool(self.settings and self.settings.units == "imperial")


def locality_for(
    knowledge: Knowledge,
    language: str,
    *,
    locale_hint: str | None = None,
    market: str | None = None,
) -> Locality:
    """Resolve language + page locale (``pt-PT``) + explicit market into a Locality.

    The market comes from the explicit choice, else the hint's country, else the
    language's default market; the hint's country refines the CLDR locale (``de_AT``).
    """
    settings = knowledge.languages.get(language)
    locale = settings.locale if settings else language
    parsed = _parse_locale(locale_hint) if locale_hint else None
    country = None
    if parsed and parsed.language == language and parsed.territory:
        country = parsed.territory
        if parsed.script is None and language != "zh":
            locale = f"{language}_{country}"
    if market and market.upper() in knowledge.markets:
        code = market.upper()
    elif market:
        code = knowledge.market_code(language=language, country=market)
    else:
        code = knowledge.market_code(language=language, country=country)
    return Locality(language=language, locale=locale, market=code, settings=settings)


@lru_cache(maxsize=256)
def _parse_locale(tag: str) -> Locale | None:
    try:
        return Locale.parse(tag.replace("-", "_"))
    except (ValueError, UnknownLocaleError):
        return None


def language_of(locale_tag: str | None) -> str | None:
    """The language of a page or browser locale ("es-MX" -> "es", "zh_Hant_TW" -> "zh")."""
    parsed = _parse_locale(locale_tag.strip()) if locale_tag and locale_tag.strip() else None
    return parsed.language if parsed else None


class Localizer:
    def __init__(self, knowledge: Knowledge) -> None:
        self.knowledge = knowledge
        # Filled templates: the facts are fixed while the knowledge is loaded, and CLDR
        # formatting was most of a curated turn's localization time (docs/server.md).
        self._rendered: dict[tuple[str, Locality], str] = {}

    def render(self, template: str, where: Locality) -> str:
        """Fill ``{kind:key}`` templates for the locality."""
        key = (template, where)
        text = self._rendered.get(key)
        if text is None:
            if len(self._rendered) >= RENDERED_KEPT:
                self._rendered.clear()
            text = self._rendered[key] = self._render(template, where)
        return text

    def _render(self, template: str, where: Locality) -> str:
        def fill(match: re.Match[str]) -> str:
            kind, key = match.group(1), match.group(2)
            if kind == "shop":
                return self.knowledge.contact[key]
            if kind == "hours":
                return self.opening_hours(key, where.locale)
            fact = self.knowledge.facts.get(key)
            if fact is None:
                raise KnowledgeError(f"unknown fact {key!r}")
            if kind == "time":
                if fact.clock is None:
                    raise KnowledgeError(f"fact {key!r} is not a time of day")
                return self.clock(fact.clock, where.locale)
            if kind == "money":
                amount, currency = fact.money(where.market)
                return self.money(amount, currency, where.locale)
            if kind == "length":
                if where.imperial:
                    return self._unit(fact.value / _CM_PER_INCH, "length-inch", where.locale)
                return self._unit(fact.value, "length-centimeter", where.locale)
            if where.imperial:
                return self._unit(fact.value * _LB_PER_KG, "mass-pound", where.locale)
            return self._unit(fact.value, "mass-kilogram", where.locale)

        return TEMPLATE.sub(fill, template)

    def opening_hours(self, key: str, locale: str) -> str:
        """``{hours:KEY}``: the timetable in the locale's words, with its time zone's name."""
        hours = self.knowledge.hours.get(key)
        if hours is None:
            raise KnowledgeError(f"unknown opening hours {key!r}")
        return _timetable(hours, locale)

    @staticmethod
    def clock(value: time, locale: str) -> str:
        """A time of day in the locale's short format, without a leading zero: 8:00, 2:00 PM."""
        loc = _locale(locale)
        return str(format_time(value, _time_pattern(loc), locale=loc))

    @staticmethod
    def money(amount: float, currency: str, locale: str) -> str:
        return str(format_currency(amount, currency, locale=locale))

    @staticmethod
    def number(value: float, locale: str) -> str:
        return str(format_decimal(value, locale=locale))

    @staticmethod
    def _unit(value: float, unit: str, locale: str) -> str:
        rounded = round(value) if value >= 10 else round(value, 1)
        return str(format_unit(rounded, unit, length="short", locale=locale))

    def reformat_amount(self, text: str, where: Locality) -> str:
        """``€49.90`` or ``49,90 €`` written anywhere -> the locale's format; else unchanged."""
        match = _AMOUNT_RE.match(text.strip())
        if not match or not (match.group("pre") or match.group("post")):
            return text
        symbol = (match.group("pre") or match.group("post") or "").strip()
        currency = symbol if re.fullmatch(r"[A-Z]{3}", symbol) else _SYMBOL_TO_CURRENCY.get(symbol)
        value = _parse_number(match.group("num"))
        if currency is None or value is None:
            return text
        return self.money(value, currency, where.locale)

    def curated(self, faq_id: str, where: Locality) -> str | None:
        template = self.knowledge.curated_answer(faq_id, where.language, where.market)
        return self.render(template, where) if template is not None else None

    def message(self, key: str, where: Locality, **values: str) -> str:
        text = self.render(self.knowledge.message(key, where.language), where)
        for name, value in values.items():
            text = text.replace("{" + name + "}", value)
        return text


@lru_cache(maxsize=64)
def _locale(tag: str) -> Locale:
    return Locale.parse(tag)


def _time_pattern(locale: Locale) -> str:
    """The short time pattern with an unpadded hour ("HH:mm" -> "H:mm"), as hours are written."""
    pattern = str(locale.time_formats["short"].pattern)
    return re.sub(r"(?<![Hh'])(HH|hh)(?![Hh])", lambda m: m.group(1)[0], pattern)


def _range(locale: Locale, start: str, end: str) -> str:
    """``start–end`` with the locale's range mark (CLDR interval fallback, spaces dropped)."""
    fallback = str(locale.interval_formats.get(None) or "{0}–{1}")
    mark = fallback.replace("{0}", "").replace("{1}", "").strip() or "–"
    return f"{start}{mark}{end}"


@lru_cache(maxsize=256)
def _timetable(hours: Hours, locale_tag: str) -> str:
    loc = _locale(locale_tag)
    names = loc.days["stand-alone"]["wide"]
    pattern = _time_pattern(loc)
    lines = []
    for o in hours.openings:
        days = names[o.first_day]
        if o.last_day != o.first_day:
            days = _range(loc, days, names[o.last_day])
        opens = format_time(o.opens, pattern, locale=loc)
        closes = format_time(o.closes, pattern, locale=loc)
        lines.append(f"{days} {_range(loc, opens, closes)}")
    zone = get_timezone_name(get_timezone(hours.timezone), width="long", locale=loc)
    text = format_list(lines, style="standard", locale=loc)
    return _ZONE_BRACKETS.get(loc.language, "{0} ({1})").format(text, zone)


def _parse_number(raw: str) -> float | None:
    """Read 1,299.00 / 1.299,00 / 1 299,00 / 49.9 / 7000 as a float."""
    s = raw.replace("\u00a0", " ").replace("\u202f", " ").replace(" ", "")
    if not s:
        return None
    last_dot, last_comma = s.rfind("."), s.rfind(",")
    decimal_sep = None
    if last_dot >= 0 and last_comma >= 0:
        decimal_sep = "." if last_dot > last_comma else ","
    elif last_dot >= 0 or last_comma >= 0:
        sep = "." if last_dot >= 0 else ","
        tail = s.rsplit(sep, 1)[1]
        if len(tail) != 3 or (s.count(sep) == 1 and len(tail) <= 2):
            decimal_sep = sep
    if decimal_sep:
        thousands = "," if decimal_sep == "." else "."
        s = s.replace(thousands, "").replace(decimal_sep, ".")
    else:
        s = s.replace(",", "").replace(".", "")
    try:
        return float(s)
    except ValueError:
        return None
