"""When a human must take over, and what the customer answered to an offer of one.

``decide`` checks one turn against these reasons, in this order, and returns the first that
holds with its *evidence* (what matched) so an agent sees why the conversation came to them:

=================  ===============================================================  ==========
reason             when                                                             evidence
=================  ===============================================================  ==========
sensitive_topic    fraud, chargeback, legal threat or safety (injury, fire, burns,  the phrase
                   electric shock, allergic reaction); ``topic`` names which
customer_request   the customer asks for a person ("can I speak to someone",        the phrase
                   "转人工", "상담원 연결해 주세요"), accepts an offer of one, or the
                   retriever's top FAQ is ``contact.human``
no_answer          ``max_no_answer`` turns in a row without an FAQ answer           --
frustration        insults to the bot, "this is useless", "you're not helping",     the phrase
                   profanity; or shouting in capitals twice in a row                 or message
rephrased          the same question a third time in a row (``rephrased``)         the FAQ id
=================  ===============================================================  ==========

An accepted offer of a person (``offer_pending``) comes before all of them.

The phrases are content, not code: ``knowledge/handoff.toml`` holds, per launch language,
regular expressions for requests, sensitive topics and frustration, and the words of
accepting or declining an offer (format and rules: docs/handoff.md). They are matched on
the customer's *original* text in the detected language and in English, and on the English
pivot when there is one. Text and patterns are folded alike first (``fold``): width, case,
accents, Arabic letter variants, apostrophes and spaces, so "Ｎｅｉｎ", "parler a quelqu'un"
and "أريد" match "nein", "parler à quelqu'un" and "اريد". Punctuation alone ("???", "!!!")
is never frustration.

``offer_answer`` reads a reply to "Shall I connect you with our team?": "ja gerne" and
"好的" accept, "no thanks" and "いいえ、結構です" decline, a new question is neither.
"""

from __future__ import annotations

import functools
import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Literal

from bot.errors import KnowledgeError

HUMAN_FAQ = "contact.human"
REASONS = ("customer_request", "sensitive_topic", "no_answer", "frustration", "rephrased")
TOPICS = ("fraud", "chargeback", "legal", "safety")
DEFAULT_RULES = Path(__file__).resolve().parent.parent / "knowledge" / "handoff.toml"

OfferAnswer = Literal["accept", "decline"]
_PATTERN_KEYS = ("request", "frustration")
_PHRASE_KEYS = ("accept", "decline", "polite")
_KEYS = frozenset((*_PATTERN_KEYS, *_PHRASE_KEYS, "sensitive"))
# Folding: curly quotes to straight ones, Arabic letter variants to one form, tatweel away.
_CHAR_MAP = str.maketrans({"’": "'", "‘": "'", "ʼ": "'", "`": "'", "´": "'", "“": '"',
                           "”": '"', "„": '"', "ة": "ه", "ى": "ي", "ـ": None})  # fmt: skip
_KEEP_MARKS = frozenset("\u3099\u309a")  # Japanese voicing marks: が is not か
_ESCAPE = re.compile(r"\\.")
_WORDS = re.compile(r"[^\W\d_]+")  # letter runs
_IDENTIFIER = re.compile(r"\d{4,}")  # order, tracking, phone numbers
_NON_WORD = re.compile(r"[\W_]+")
_DRAWN_OUT = re.compile(r"(\w)\1{2,}")  # "yesss", "jaaa", "nooo"
_NO_SPACE_SCRIPTS = ("CJK", "HIRAGANA", "KATAKANA", "HANGUL")
_MAX_OFFER_ANSWER = 60  # characters; a longer message is a new question, not an answer


@dataclass(frozen=True)
class HandoffDecision:
    handoff: bool
    reason: str | None = None
    evidence: str | None = None  # the matched phrase (or message, or FAQ id) behind `reason`
    topic: str | None = None  # sensitive_topic only: fraud | chargeback | legal | safety

    def as_dict(self) -> dict[str, object]:
        return {
            "handoff": self.handoff,
            "reason": self.reason,
            "evidence": self.evidence,
            "topic": self.topic,
        }


@dataclass(frozen=True)
class Asked:
    """One earlier customer turn: what they wrote, and the FAQ that answered it (or None)."""

    text: str
    faq: str | None = None


@dataclass(frozen=True)
class LanguageRules:
    request: tuple[re.Pattern[str], ...]
    sensitive: Mapping[str, tuple[re.Pattern[str], ...]]  # topic -> patterns
    frustration: tuple[re.Pattern[str], ...]
    accept: frozenset[str]
    decline: frozenset[str]
    polite: frozenset[str]  # "please", "thanks": may surround an answer, are none alone

    @functools.cached_property
    def any_phrase(self) -> re.Pattern[str]:
        """Every pattern of every kind in one: whether anything matches at all, in one
        search (most messages match nothing; the kinds are then not tried one by one)."""
        every = (*self.request, *self.frustration, *(p for t in self.sensitive.values() for p in t))
        return re.compile("|".join(f"(?:{p.pattern})" for p in every))

    def patterns(self, kind: str) -> tuple[re.Pattern[str], ...]:
        """``request``, ``frustration`` or a sensitive topic."""
        if kind == "request":
            return self.request
        if kind == "frustration":
            return self.frustration
        return self.sensitive[kind]


@dataclass(frozen=True)
class HandoffRules:
    """The phrase tables of knowledge/handoff.toml, compiled and checked."""

    languages: Mapping[str, LanguageRules]


# -- folding --------------------------------------------------------------------------


@dataclass(frozen=True)
class Folded:
    """Folded text, and where each of its characters came from in the (NFKC) original."""

    text: str
    source: str
    origin: tuple[int, ...]  # origin[i]: index in `source` of text[i]

    def original(self, start: int, end: int) -> str:
        """The customer's own spelling of ``text[start:end]``."""
        if start >= end:
            return ""
        return self.source[self.origin[start] : self.origin[end - 1] + 1].strip()


def fold(text: str, *, lower: bool = True) -> Folded:
    """Fold width, case, accents, Arabic variants, quotes and spaces, character by character.

    Patterns are folded with ``lower=False`` (lower-casing ``\\W`` would change its meaning),
    which is why they must be written in lower case.
    """
    source = unicodedata.normalize("NFKC", text)
    chars: list[str] = []
    origin: list[int] = []
    for index, char in enumerate(source):
        if char.isspace():
            if chars and chars[-1] != " ":
                chars.append(" ")
                origin.append(index)
            continue
        if unicodedata.category(char) == "Cf":  # zero-width and direction marks
            continue
        for out in _fold_char(char.lower() if lower else char):
            chars.append(out)
            origin.append(index)
    while chars and chars[-1] == " ":
        chars.pop()
        origin.pop()
    return Folded("".join(chars), source, tuple(origin))


@cache
def _fold_char(char: str) -> str:
    decomposed = unicodedata.normalize("NFD", char)
    kept = "".join(c for c in decomposed if unicodedata.category(c) != "Mn" or c in _KEEP_MARKS)
    return unicodedata.normalize("NFC", kept).translate(_CHAR_MAP)


def normalize_answer(text: str) -> str:
    """Folded, punctuation as spaces, letters drawn out shortened: "Neeein, danke!!" ->
    "nein danke"."""
    words = _NON_WORD.sub(" ", fold(text).text)
    return " ".join(_DRAWN_OUT.sub(r"\1", words).split())


# -- loading ----------------------------------------------------------------------------


def load_rules(path: Path, languages: Sequence[str] | None = None) -> HandoffRules:
    """Read and check ``knowledge/handoff.toml``; KnowledgeError names what is wrong.

    With ``languages``, every one of them must have every table.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise KnowledgeError(f"{path}: {exc}") from exc
    missing = [lang for lang in languages or () if lang not in data]
    if missing:
        raise KnowledgeError(f"{path}: no rules for {', '.join(missing)}")
    rules = {lang: _parse_language(path, lang, table) for lang, table in data.items()}
    _check_offer_words(path, rules)
    return HandoffRules(rules)


@cache
def default_rules() -> HandoffRules:
    """The repository's knowledge/handoff.toml, read once."""
    return load_rules(DEFAULT_RULES)


def _parse_language(path: Path, lang: str, table: object) -> LanguageRules:
    where = f"{path} [{lang}]"
    if not isinstance(table, dict):
        raise KnowledgeError(f"{where}: must be a table")
    unknown = sorted(set(table) - _KEYS)
    missing = sorted(_KEYS - set(table))
    if unknown or missing:
        raise KnowledgeError(f"{where}: unknown keys {unknown}, missing keys {missing}")
    sensitive = table["sensitive"]
    if not isinstance(sensitive, dict) or sorted(sensitive) != sorted(TOPICS):
        raise KnowledgeError(f"{where}: [sensitive] needs exactly {', '.join(TOPICS)}")
    return LanguageRules(
        request=_patterns(f"{where} request", table["request"]),
        sensitive={t: _patterns(f"{where} sensitive.{t}", sensitive[t]) for t in TOPICS},
        frustration=_patterns(f"{where} frustration", table["frustration"]),
        accept=_phrases(f"{where} accept", table["accept"]),
        decline=_phrases(f"{where} decline", table["decline"]),
        polite=_phrases(f"{where} polite", table["polite"]),
    )


def _strings(where: str, value: object) -> list[str]:
    if not isinstance(value, list) or not value:
        raise KnowledgeError(f"{where}: must be a non-empty list of strings")
    if not all(isinstance(v, str) and v.strip() for v in value):
        raise KnowledgeError(f"{where}: must be a non-empty list of strings")
    return value


def _patterns(where: str, value: object) -> tuple[re.Pattern[str], ...]:
    compiled = []
    for pattern in _strings(where, value):
        if _ESCAPE.sub("", pattern) != _ESCAPE.sub("", pattern).lower():
            raise KnowledgeError(f"{where}: write patterns in lower case: {pattern!r}")
        try:
            compiled.append(re.compile(fold(pattern, lower=False).text))
        except re.error as exc:
            raise KnowledgeError(f"{where}: bad pattern {pattern!r}: {exc}") from exc
        if compiled[-1].search(""):
            raise KnowledgeError(f"{where}: pattern matches empty text: {pattern!r}")
    return tuple(compiled)


def _phrases(where: str, value: object) -> frozenset[str]:
    phrases = frozenset(normalize_answer(p) for p in _strings(where, value))
    if "" in phrases:
        raise KnowledgeError(f"{where}: a phrase is only punctuation")
    return phrases


def _check_offer_words(path: Path, rules: Mapping[str, LanguageRules]) -> None:
    """A reply is read in every language (short replies are hard to place), so no phrase
    may accept in one language and decline in another."""
    accept = {p: lang for lang, r in rules.items() for p in r.accept}
    for lang, r in rules.items():
        clash = sorted(p for p in r.decline if p in accept)
        if clash:
            raise KnowledgeError(
                f"{path}: {clash} decline in [{lang}] but accept in [{accept[clash[0]]}]"
            )


# -- the triggers -----------------------------------------------------------------------


def decide(
    *,
    original: str,
    language: str,
    pivot: str | None,
    top_faq: str | None,
    answered: bool,
    no_answer_streak: int,
    max_no_answer: int = 2,
    offer_pending: bool = False,
    earlier: Sequence[Asked] = (),
    rules: HandoffRules | None = None,
) -> HandoffDecision:
    """Decide whether this turn hands the conversation to a human, and why.

    ``offer_pending``: the bot's previous message offered a person; an accepting reply hands
    off, a declining one does not (not even as another turn without an answer).
    ``earlier``: the customer's previous turns in this conversation, oldest first; used for
    shouting twice in a row and for the same question asked a third time.
    """
    rules = rules or default_rules()
    if offer_pending:
        answer = offer_answer(original, language, rules=rules)
        if answer == "accept":
            return HandoffDecision(True, "customer_request", _quote(original))
        if answer == "decline":
            return HandoffDecision(False)
    texts = _texts(original, pivot)
    languages = _languages(language, rules)
    phrased = _any_phrase(rules, texts, languages)

    # A fire or a fraud first: "get me a person, the charger caught fire" is routed as safety.
    for topic in TOPICS if phrased else ():
        if phrase := _first_match(rules, texts, languages, topic):
            return HandoffDecision(True, "sensitive_topic", phrase, topic)
    if phrased and (phrase := _first_match(rules, texts, languages, "request")):
        return HandoffDecision(True, "customer_request", phrase)
    if top_faq == HUMAN_FAQ:
        return HandoffDecision(True, "customer_request", f"faq:{HUMAN_FAQ}")
    if not answered and no_answer_streak + 1 >= max_no_answer:
        return HandoffDecision(True, "no_answer")
    if phrased and (phrase := _first_match(rules, texts, languages, "frustration")):
        return HandoffDecision(True, "frustration", phrase)
    if shouting(original) and any(shouting(turn.text) for turn in earlier[-2:]):
        return HandoffDecision(True, "frustration", _quote(original))
    if answered and rephrased(original, top_faq, earlier):
        return HandoffDecision(True, "rephrased", f"faq:{top_faq}")
    return HandoffDecision(False)


def matches(
    text: str, language: str, *, rules: HandoffRules | None = None
) -> list[tuple[str, str, str]]:
    """Every (kind, language, phrase) matching ``text``: to see why a message triggers."""
    rules = rules or default_rules()
    folded = fold(text)
    found = []
    for lang in _languages(language, rules):
        for kind in ("request", *TOPICS, "frustration"):
            for pattern in rules.languages[lang].patterns(kind):
                if m := pattern.search(folded.text):
                    found.append((kind, lang, folded.original(m.start(), m.end())))
    return found


def _texts(original: str, pivot: str | None) -> list[tuple[Folded, bool]]:
    """(text, is_pivot): the original always, the English pivot when it says something else."""
    texts = [(fold(original), False)]
    if pivot and pivot.strip() and pivot.strip() != original.strip():
        texts.append((fold(pivot), True))
    return texts


def _languages(language: str, rules: HandoffRules) -> list[str]:
    """The detected language, then English: customers fall back on it in every market."""
    return [lang for lang in dict.fromkeys((language, "en")) if lang in rules.languages]


def _any_phrase(
    rules: HandoffRules, texts: Iterable[tuple[Folded, bool]], languages: Sequence[str]
) -> bool:
    """Whether any phrase of any kind matches one of the texts (``_first_match`` says which)."""
    return any(
        rules.languages[lang].any_phrase.search(folded.text)
        for folded, is_pivot in texts
        for lang in (("en",) if is_pivot else languages)
    )


def _first_match(
    rules: HandoffRules, texts: Iterable[tuple[Folded, bool]], languages: Sequence[str], kind: str
) -> str | None:
    for folded, is_pivot in texts:
        for lang in ("en",) if is_pivot else languages:
            for pattern in rules.languages[lang].patterns(kind):
                if m := pattern.search(folded.text):
                    return folded.original(m.start(), m.end()) or m.group(0)
    return None


def _quote(text: str, limit: int = 120) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split())[:limit]


def shouting(text: str) -> bool:
    """A message in capitals: two or more words of four letters or more in capitals, and four
    in five cased letters upper case. Words with digits (order numbers, SKUs) do not count;
    scripts without case never shout."""
    words = [w for w in unicodedata.normalize("NFKC", text).split() if not _has_digit(w)]
    letters: list[str] = [run for w in words for run in _WORDS.findall(w)]
    long_upper = sum(len(run) >= 4 and run.isupper() for run in letters)
    cased = [c for run in letters for c in run if c.isupper() or c.islower()]
    upper = sum(c.isupper() for c in cased)
    return long_upper >= 2 and upper >= 10 and upper >= 0.8 * len(cased)


def _has_digit(word: str) -> bool:
    return any(c.isdigit() for c in word)


def rephrased(text: str, faq: str | None, earlier: Sequence[Asked], *, times: int = 2) -> bool:
    """The customer asks the same question for the third time in a row (``times`` + 1).

    "The same question" is the same FAQ answering it: the bot gave that answer to each of the
    last ``times`` turns and is about to give it again, so it is not what the customer needs.
    A number the earlier turns did not mention ("and order 48213?") makes it a new case (the
    answer helped, the customer uses it again), and ``contact.human`` is a request already.
    """
    if faq is None or faq == HUMAN_FAQ or times < 1 or len(earlier) < times:
        return False
    recent = earlier[-times:]
    if any(turn.faq != faq for turn in recent):
        return False
    seen = {n for turn in recent for n in _IDENTIFIER.findall(fold(turn.text).text)}
    return set(_IDENTIFIER.findall(fold(text).text)) <= seen


# -- answers to an offer of a person ----------------------------------------------------


def offer_answer(
    text: str, language: str, *, rules: HandoffRules | None = None
) -> OfferAnswer | None:
    """Whether a reply to "Shall I connect you with our team?" accepts, declines, or neither.

    The reply must consist only of answer words ("ja", "gerne", "no", "不用了") and polite
    words ("bitte", "thanks", "谢谢"), all of one answer: "nein danke" declines, "yes please"
    accepts, "danke" alone or "no, where is my order?" is neither (None). The detected
    language's words come first, then every other language's: a two-word reply is easily
    detected as the conversation's language whatever it is written in, and the tables are
    checked at load time never to contradict each other.
    """
    rules = rules or default_rules()
    reply = normalize_answer(text)
    if not reply or len(reply) > _MAX_OFFER_ANSWER:
        return None
    order = [*_languages(language, rules), *rules.languages]
    tables = [rules.languages[lang] for lang in dict.fromkeys(order)]
    outcomes = _cover(reply, 0, tuple(tables), {})
    answers = {label for labels in outcomes if len(labels) == 1 for label in labels}
    if answers == {"accept"}:
        return "accept"
    if answers == {"decline"}:
        return "decline"
    return None


def _cover(
    reply: str,
    start: int,
    tables: tuple[LanguageRules, ...],
    memo: dict[int, set[frozenset[str]]],
) -> set[frozenset[str]]:
    """Every set of answers ({accept}, {decline}, both or none) that a split of
    ``reply[start:]`` into known phrases can carry."""
    if start in memo:
        return memo[start]
    if reply[start : start + 1] == " ":
        start += 1
    if start >= len(reply):
        return {frozenset()}
    out: set[frozenset[str]] = set()
    memo[start] = out
    for table in tables:
        for label, phrases in (("accept", table.accept), ("decline", table.decline),
                               ("", table.polite)):  # fmt: skip
            for phrase in phrases:
                end = start + len(phrase)
                if reply.startswith(phrase, start) and _boundary(reply, end):
                    mine = frozenset((label,)) if label else frozenset()
                    out.update(mine | rest for rest in _cover(reply, end, tables, memo))
    return out


def _boundary(reply: str, end: int) -> bool:
    """Phrases end at a space, the end, or between two characters of a script written
    without spaces ("不用了谢谢", "はいお願いします")."""
    if end >= len(reply) or reply[end] == " ":
        return True
    return _unspaced(reply[end - 1]) and _unspaced(reply[end])


@cache
def _unspaced(char: str) -> bool:
    name = unicodedata.name(char, "")
    return name.startswith(_NO_SPACE_SCRIPTS)
