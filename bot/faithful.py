"""The gate every model-written sentence passes before a customer reads it.

The small embedded models, measured, say "yes, you can return worn shoes", echo the
customer's question back, and promise actions nobody took ("we'll be in touch"). Asked
whether a reply contradicts a passage, they do no better than chance, so the gate does not
ask them. It checks what can be checked in every launch language:

- **polarity**: a sentence may not open with a yes or a no (``compose/LL.toml [check]``)
  unless the passage itself opens that way: no free generation decides a yes/no question;
- **promises**: commitments and actions ("I have issued a refund", "wir melden uns") that
  no passage states;
- **echo**: a reply that mostly repeats the customer's message;
- **repetition**: a reply that says the same stretch of text three times or more (a model
  caught in a loop: "…ご案内いたしかねますが、一般的なご案内方法については…" over and over);
- **conditions**: a sentence that grants a return, exchange, refund, cancellation or change
  ("you can return them", "sie können umgetauscht werden") for an item or order in a state
  that a policy of the shop excludes (``excludes`` in ``knowledge/faq``: worn,
  washed, tags removed, unsealed, personalized, already shipped, and the kind gift card),
  named in the sentence or, when the sentence names none, in the customer's message ("I
  wore them once, can I return them?" -> "You can return them within 30 days."), unless
  the sentence negates or restricts it ("can't", "only if", "must be unworn");
- **numbers**: every number, amount or duration, in digits or in words of the reply's
  language ("dreißig Tage", "三十天"), must be in a passage. The customer's own figures are
  not policy facts ("confirm my refund is 500 EUR"); only their order, tracking and SKU
  numbers may be repeated.

A failed check means the composed reply (acknowledgement + curated answer) is shown instead.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from num2words import num2words

from bot.compose import CheckLexicon
from bot.llm import OnDelta

_DIGITS = re.compile(r"\d+(?:[.,\u00a0\u202f ]\d{3})*(?:[.,]\d+)?")
_SENTENCE_END = re.compile(r"(?<=[.!?؟])\s+|(?<=[。！？])\s*|\n+")
_LEADING = re.compile(r"^[\s\"'«»„“”‘’¡¿(（「『\-–—*]+")
_NORMALIZE = re.compile(r"[^\w]+")
# Word numbers that collide with common words ("one of", "un", "一部", 일 = day) are left out.
_WORD_NUMBERS = (*range(2, 101), *range(200, 1001, 100), 365)
_NUM2WORDS_LANG = {"zh": "ja"}  # num2words has no Chinese; the kanji numerals are shared
_EXTRA_WORDS: Mapping[str, Mapping[str, int]] = {
    "zh": {"两": 2, "兩": 2},
    "en": {"a dozen": 12, "fortnight": 14},
}
ECHO_RATIO = 0.6
REPEAT_SPAN = 24  # characters (after lower-casing and punctuation to spaces)
REPEAT_TIMES = 3
_UNSPACED = frozenset({"zh", "ja"})


@dataclass(frozen=True)
class Problem:
    kind: str  # polarity | promise | condition | echo | repetition | number
    detail: str

    def __str__(self) -> str:
        return f"{self.kind}: {self.detail}"


@dataclass
class Verdict:
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class FaithfulnessChecker:
    """``checker.check(reply, question=..., passages=[...], language="de")``."""

    def __init__(self, lexicons: Mapping[str, CheckLexicon]) -> None:
        self.lexicons = lexicons

    def check(
        self,
        reply: str,
        *,
        question: str,
        passages: Sequence[str],
        language: str,
        allowed_numbers: Iterable[str] = (),
        excluded: Collection[str] = (),
    ) -> Verdict:
        """All problems of a whole reply (or of the part of it streamed so far).
        ``excluded``: the states the shop's policies rule out (``STATES``)."""
        verdict = Verdict()
        for sentence in split_sentences(reply):
            verdict.problems += self.check_sentence(
                sentence,
                passages=passages,
                language=language,
                allowed=allowed_numbers,
                excluded=excluded,
                question=question,
            )
        if is_echo(reply, question):
            verdict.problems.append(Problem("echo", reply[:80]))
        if (loop := repeated(reply)) is not None:
            verdict.problems.append(Problem("repetition", loop))
        return verdict

    def check_sentence(
        self,
        sentence: str,
        *,
        passages: Sequence[str],
        language: str,
        allowed: Iterable[str] = (),
        excluded: Collection[str] = (),
        question: str = "",
    ) -> list[Problem]:
        lexicon = self.lexicons.get(language)
        problems: list[Problem] = []
        if lexicon is not None:
            word = opening_polarity(sentence, lexicon, language)
            if word and not any(opening_polarity(p, lexicon, language) == word for p in passages):
                problems.append(Problem("polarity", word))
            for pattern in lexicon.promise:
                found = pattern.search(sentence)
                if found and not any(pattern.search(p) for p in passages):
                    problems.append(Problem("promise", found.group(0)))
            if excluded and (granted := granted_state(sentence, lexicon, excluded, question)):
                problems.append(Problem("condition", granted))
        grounded = set(allowed)
        for passage in passages:
            grounded |= numbers_in(passage, language)
        problems += [
            Problem("number", n) for n in sorted(numbers_in(sentence, language) - grounded)
        ]
        return problems


def granted_state(
    sentence: str, lexicon: CheckLexicon, excluded: Collection[str], question: str = ""
) -> str | None:
    """ "You can return shoes you wore once" with ``worn`` excluded -> "worn: wore": the
    sentence grants something (``grant``), does not negate or restrict it (``negation``),
    and names an excluded state, or names none while the customer's ``question`` does (the
    grant then answers it: "I wore them once, can I return them?" -> "You can return them
    within 30 days."). None when it passes."""
    grant = next((m for p in lexicon.grant if (m := p.search(sentence))), None)
    if grant is None or any(p.search(sentence) for p in lexicon.negation):
        return None
    for text, where in ((sentence, ""), (question, " in the question")):
        for state in excluded:
            for pattern in lexicon.states.get(state, ()):
                if text and (found := pattern.search(text)):
                    return f"{state}: {found.group(0)}{where} ({grant.group(0)})"
    return None


def split_sentences(text: str) -> list[str]:
    return [s for s in (part.strip() for part in _SENTENCE_END.split(text)) if s]


def opening_polarity(sentence: str, lexicon: CheckLexicon, language: str) -> str | None:
    """The yes/no word a sentence opens with ("Ja, ..." -> "ja"), if any."""
    head = _LEADING.sub("", sentence).lower()
    unspaced = language in _UNSPACED  # "はい" glues to what follows; "no" is not "now"
    for word in sorted((*lexicon.yes, *lexicon.no), key=len, reverse=True):
        if head.startswith(word):
            following = head[len(word) : len(word) + 1]
            if unspaced or not following or not (following.isalnum() or following == "_"):
                return word
    return None


def drop_opening_polarity(text: str, lexicon: CheckLexicon, language: str) -> str:
    """ "Yes, exchanges are free." -> "Exchanges are free.": a curated answer quoted under an
    acknowledgement must not answer a yes/no question the customer may not have asked."""
    stripped = text.lstrip()
    lead = _LEADING.match(stripped)
    body = stripped[lead.end() :] if lead else stripped
    word = opening_polarity(body, lexicon, language)
    if word is None:
        return text
    rest = re.sub(r"^[\s,，、.!！:：;；،-]+", "", body[len(word) :])
    if not rest:
        return text
    return rest[0].upper() + rest[1:]


def is_echo(reply: str, question: str) -> bool:
    """The reply mostly repeats the customer's message."""
    a, b = _norm(reply)[:400], _norm(question)[:400]
    if len(b) < 8 or not a:
        return False
    if b in a and len(b) >= 0.5 * len(a):
        return True
    return difflib.SequenceMatcher(None, a, b, autojunk=False).ratio() >= ECHO_RATIO


def repeated(text: str) -> str | None:
    """A stretch of ``REPEAT_SPAN`` characters the text says ``REPEAT_TIMES`` times or more,
    without overlap; None if there is none."""
    norm = _norm(text)
    starts: dict[str, int] = {}  # the last counted start of each stretch
    counts: dict[str, int] = {}
    for i in range(len(norm) - REPEAT_SPAN + 1):
        stretch = norm[i : i + REPEAT_SPAN]
        if stretch in starts and i - starts[stretch] < REPEAT_SPAN:
            continue
        starts[stretch] = i
        counts[stretch] = counts.get(stretch, 0) + 1
        if counts[stretch] >= REPEAT_TIMES:
            return stretch
    return None


def _norm(text: str) -> str:
    return _NORMALIZE.sub(" ", text.lower()).strip()


def numbers_in(text: str, language: str) -> set[str]:
    """Canonical numbers in ``text``: digits ("1.299,00" -> "1299") and number words."""
    found = {_canonical(raw) for raw in _DIGITS.findall(text)}
    regex, values = _word_numbers(language)
    if regex is not None:
        found |= {str(values[m.group(0).lower()]) for m in regex.finditer(text)}
    return found


def _canonical(raw: str) -> str:
    raw = re.sub(r"[\u00a0\u202f ]", "", raw)
    raw = re.sub(r"[.,]\d{1,2}$", "", raw)  # cents/decimals: 49,90 -> 49
    return raw.replace(",", "").replace(".", "").lstrip("0") or "0"


@lru_cache(maxsize=16)
def _word_numbers(language: str) -> tuple[re.Pattern[str] | None, dict[str, int]]:
    values: dict[str, int] = dict(_EXTRA_WORDS.get(language, {}))
    lang = _NUM2WORDS_LANG.get(language, language)
    try:
        for n in _WORD_NUMBERS:
            values[num2words(n, lang=lang).lower()] = n
    except NotImplementedError:
        return None, {}
    words = sorted(values, key=len, reverse=True)
    alternatives = "|".join(re.escape(w) for w in words)
    if language in _UNSPACED:
        # Kanji numerals glue to counters (三十天, 三十日): no word boundary, but not inside
        # a longer numeral (the longest alternative wins).
        return re.compile(alternatives), values
    return re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE), values


class Unfaithful(Exception):
    """Raised from the stream to stop generating once a sentence fails the gate."""

    def __init__(self, problems: Sequence[Problem]) -> None:
        super().__init__("; ".join(str(p) for p in problems))
        self.problems = list(problems)


# A sentence is complete at . ! ? ؟ followed by a space, at CJK full stops, or at a newline.
_COMPLETE = re.compile(r"[.!?؟](?=\s)|[。！？]|\n")


class SentenceGate:
    """Streams model text sentence by sentence, each one released only once it passes.

    ``feed`` is the ``on_delta`` of the generation; ``finish`` checks what is left and the
    whole reply. Either raises ``Unfaithful``: what was released so far had passed.
    """

    def __init__(
        self,
        checker: FaithfulnessChecker,
        *,
        question: str,
        passages: Sequence[str],
        language: str,
        allowed_numbers: Iterable[str] = (),
        excluded: Collection[str] = (),
        on_delta: OnDelta | None = None,
    ) -> None:
        self._checker = checker
        self._question = question
        self._passages = list(passages)
        self._language = language
        self._allowed = set(allowed_numbers)
        self._excluded = tuple(excluded)
        self._on_delta = on_delta
        self._pending = ""
        self.released = ""

    async def feed(self, piece: str) -> None:
        self._pending += piece
        ends = list(_COMPLETE.finditer(self._pending))
        if not ends:
            return
        cut = ends[-1].end()
        ready, self._pending = self._pending[:cut], self._pending[cut:]
        await self._release(ready)

    async def finish(self, text: str) -> None:
        """Check the unreleased tail and the whole ``text`` (citations already removed)."""
        if self._pending.strip():
            await self._release(self._pending)
            self._pending = ""
        verdict = self._checker.check(
            text,
            question=self._question,
            passages=self._passages,
            language=self._language,
            allowed_numbers=self._allowed,
            excluded=self._excluded,
        )
        if not verdict.ok:
            raise Unfaithful(verdict.problems)

    async def _release(self, text: str) -> None:
        problems: list[Problem] = []
        for sentence in split_sentences(text):
            problems += self._checker.check_sentence(
                sentence,
                passages=self._passages,
                language=self._language,
                allowed=self._allowed,
                excluded=self._excluded,
                question=self._question,
            )
        if is_echo(self.released + text, self._question):
            problems.append(Problem("echo", text[:80]))
        if (loop := repeated(self.released + text)) is not None:
            problems.append(Problem("repetition", loop))
        if problems:
            raise Unfaithful(problems)
        self.released += text
        if self._on_delta is not None:
            await self._on_delta(text)
