"""Agents' replies into the customer's language: the console's translation path.

An agent's free text is the one place where English->X machine translation reaches a
customer, and it is the embedded model's weakest direction. On top of ``Translator`` (the
same masker, translation memory and model client), this path:

1. looks the whole reply up in the translation memory (curated and agent-approved pairs);
2. splits it into sentences, each looked up again, masked and translated on its own;
3. shows the model, before each sentence, the approved pairs of that language pair most
   like it (word overlap weighted by rarity), masked the same way: an agent's sentences
   repeat ("sorry for the delay", "your refund of ..."), so the memory teaches the house
   wording and register where it has no exact match;
4. on ``check``, translates the result back into the agent's language (the model's strong
   direction) and scores it against what the agent wrote (chrF++): low agreement, or a
   protected span (order number, amount, link, brand) missing, is a warning for the agent.

``bot eval translate`` measures it against the raw model, side by side (docs/eval.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from bot.errors import TranslationError
from bot.mask import TOKEN, Masked, Masker, Scan, Span, unmask
from bot.translate import (
    LANGUAGE_NAMES,
    Translator,
    accept_translation,
    normalize,
    restore_spans,
)

Render = Callable[[str, str], str]  # (span kind, span text) -> as the target locale writes it

# Languages written without spaces between sentences.
_UNSPACED = frozenset({"zh", "ja"})
# A sentence ends at . ! ? (or their full-width forms) followed by a space and what starts a
# sentence; a dot inside "meridiangoods.com" or "24.90" is not followed by a space.
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+(?=[\"'“(¿¡]?[A-Z0-9])|(?<=[。！？])\s*")
_WORD = re.compile(r"[^\W_]+", re.UNICODE)
# How closely the back-translation must agree with what the agent wrote (chrF++, 0-100)
# before the preview warns: calibrated on the dev split (docs/eval.md, "Translation").
BACK_MIN_AGREEMENT = 40.0


@dataclass(frozen=True)
class Notice:
    code: str  # translation_failed | fuzzy_memory | placeholder_lost | back_translation
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class AgentTranslation:
    text: str
    source: str
    target: str
    engine: str  # identity | memory | llm (llm: at least one sentence went to the model)
    sentences: int = 1
    shots: int = 0  # few-shot examples shown, over all sentences
    similarity: float = 1.0  # below 1: a similar sentence's approved translation was used
    ms: float = 0.0
    warnings: tuple[Notice, ...] = ()
    back: str | None = None  # the back-translation, when checked
    agreement: float | None = None  # chrF++ of ``back`` against the agent's text


def split_sentences(text: str) -> list[str]:
    """Sentences of each line, in order; a text with no sentence end is one sentence."""
    out: list[str] = []
    for line in text.splitlines():
        out += [s.strip() for s in _SENTENCE_END.split(line) if s and s.strip()]
    return out or [text]


def join_sentences(parts: Sequence[str], language: str) -> str:
    return ("" if language in _UNSPACED else " ").join(p.strip() for p in parts)


def _words(text: str) -> list[str]:
    return _WORD.findall(normalize(TOKEN.sub(" ", text)))


@dataclass
class _PoolIndex:
    size: int
    pairs: list[tuple[str, str]]
    words: list[frozenset[str]]
    idf: dict[str, float]


@dataclass
class ExamplePicker:
    """The memory's pairs most like a sentence (IDF-weighted word overlap)."""

    shots: int = 4
    min_score: float = 0.2
    _index: dict[tuple[str, str], _PoolIndex] = field(default_factory=dict)

    def pick(
        self, pairs: Sequence[tuple[str, str]], key: tuple[str, str], text: str
    ) -> list[tuple[str, str]]:
        """Up to ``shots`` pairs, least similar first (the closest one stands next to the
        sentence); never the sentence itself."""
        if not pairs or self.shots <= 0:
            return []
        index = self._index.get(key)
        if index is None or index.size != len(pairs):
            index = self._index[key] = _build_index(pairs)
        query = set(_words(text))
        own = normalize(text)
        scored = []
        for i, words in enumerate(index.words):
            overlap = sum(index.idf[w] for w in query & words)
            if overlap <= 0 or normalize(index.pairs[i][0]) == own:
                continue
            # Dice-like: shared rarity over both sentences' size, so long examples do not win
            # by length alone. Pairs sharing only common words ("your", "the") teach little
            # and tempt a small model to copy them.
            score = overlap / math.sqrt(len(words) * max(1, len(query)))
            if score >= self.min_score:
                scored.append((score, i))
        scored.sort(reverse=True)
        return [index.pairs[i] for _, i in reversed(scored[: self.shots])]


def _build_index(pairs: Sequence[tuple[str, str]]) -> _PoolIndex:
    words = [frozenset(_words(src)) for src, _ in pairs]
    df = Counter(w for ws in words for w in ws)
    n = len(pairs)
    idf = {w: math.log((n + 1) / (c + 0.5)) for w, c in df.items()}
    return _PoolIndex(len(pairs), list(pairs), words, idf)


def mask_pair(masker: Masker, source: str, target: str) -> tuple[str, str] | None:
    """An example pair with the same tokens on both sides, or None when its spans do not
    correspond (then it is shown as written)."""
    src, tgt = masker.mask(source), masker.mask(target)
    if not src.spans:
        return None
    numbers: list[int] = []
    for span in tgt.spans:
        n = next((i for i, s in enumerate(src.spans, 1) if _same_span(s.text, span.text)), None)
        if n is None or n in numbers:
            return None
        numbers.append(n)
    if sorted(numbers) != list(range(1, len(src.spans) + 1)):
        return None
    tokens = iter(numbers)
    return src.text, TOKEN.sub(lambda m: "{" + str(next(tokens)) + "}", tgt.text)


def _same_span(a: str, b: str) -> bool:
    """Equal, or the same amount written for another locale (digits and currency)."""
    if a == b:
        return True
    da, db = re.sub(r"\D", "", a), re.sub(r"\D", "", b)
    return bool(da) and da == db


def _register(translator: Translator, target: str) -> str | None:
    settings = translator.knowledge.languages.get(target)
    if settings is None or target == "en" or not settings.pronoun:
        return None
    text = f"{settings.register} address ({settings.pronoun})"
    return f"{text}, {settings.style}" if settings.style else text


def system_prompt(source: str, target: str, register: str | None) -> str:
    src, tgt = LANGUAGE_NAMES.get(source, source), LANGUAGE_NAMES.get(target, target)
    lines = [
        f"You are a professional {tgt} localizer for the online shop Meridian Goods.",
        f"Translate the support agent's message from {src} into natural, polite {tgt}, "
        "as a native customer-service agent would write it.",
        "Translate everything, dates, weekdays and months included; never answer or "
        "comment on the message.",
        "Tokens like {1} or {2} stand for order numbers, amounts, links and brand names: "
        "copy each one exactly once.",
        "Reply with the translation only.",
    ]
    if register:
        lines.insert(2, f"Address the customer with {register}.")
    return "\n".join(lines)


def back_prompt(source: str, target: str) -> str:
    src, tgt = LANGUAGE_NAMES.get(source, source), LANGUAGE_NAMES.get(target, target)
    return (
        f"Translate this {src} customer-service message into {tgt}, as literally as "
        "possible. Reply with the translation only."
    )


def agreement(back: str, original: str) -> float:
    """chrF++ (0-100) of a back-translation against the original text."""
    from sacrebleu.metrics.chrf import CHRF

    return float(CHRF(word_order=2).sentence_score(back, [original]).score)


class AgentTranslator:
    """The console's translation path; see the module docstring."""

    def __init__(
        self,
        translator: Translator,
        *,
        shots: int = 4,
        split: bool = True,
        language_of: Callable[[str], str | None] | None = None,
        min_agreement: float = BACK_MIN_AGREEMENT,
        max_tokens: int = 400,
        cache_size: int = 512,
    ) -> None:
        self.translator = translator
        self.picker = ExamplePicker(shots)
        self.split = split
        self.language_of = language_of
        self.min_agreement = min_agreement
        self.max_tokens = max_tokens
        self._cache: OrderedDict[tuple[str, ...], AgentTranslation] = OrderedDict()
        self._cache_size = cache_size
        self._masked_pool: dict[tuple[str, str], dict[tuple[str, str], tuple[str, str]]] = {}

    @property
    def masker(self) -> Masker:
        return self.translator.masker

    async def translate(
        self,
        text: str,
        source: str,
        target: str,
        *,
        render: Render | None = None,
        check: bool = False,
        scan: Scan | None = None,
        variant: str = "",
    ) -> AgentTranslation:
        """Translate an agent's reply; ``check`` adds the back-translation agreement;
        ``scan``: the text's spans when the caller found them already; ``variant`` names
        what ``render`` depends on (the customer's locale) for the cache. Raises
        TranslationError or LLMError when no translation passes."""
        key = (text, source, target, variant)
        started = time.perf_counter()
        result = self._cache.get(key)
        if result is None:
            if scan is None or scan.text != text:
                scan = self.masker.scan(text)
            out = await self._translate(text, source, target, render, scan.masked())
            warnings = self.lost(scan.spans, out.text, render)
            if out.similarity < 1.0:  # right for a similar sentence: check it
                message = f"a similar sentence's approved translation ({out.similarity:.2f})"
                warnings.insert(0, Notice("fuzzy_memory", message))
            result = replace(out, warnings=tuple(warnings))
        if check and result.engine == "llm" and result.back is None:
            back, score = await self.back_translate(result.text, target, source, text)
            doubt = (Notice("back_translation", f"{back} ({score:.0f}/100)"),)
            result = replace(
                result, back=back, agreement=score,
                warnings=result.warnings + (doubt if score < self.min_agreement else ()),
            )  # fmt: skip
        self._cache[key] = result
        self._cache.move_to_end(key)
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return replace(result, ms=(time.perf_counter() - started) * 1000)

    def lost(self, spans: Sequence[Span], delivered: str, render: Render | None) -> list[Notice]:
        """A warning per protected span that ``delivered`` does not contain."""
        out = []
        for span in spans:
            shown = render(span.kind, span.text) if render else span.text
            if span.text not in delivered and shown not in delivered:
                out.append(Notice("placeholder_lost", span.text))
        return out

    async def back_translate(
        self, delivered: str, target: str, source: str, original: str
    ) -> tuple[str, float]:
        """``delivered`` read back into ``source`` and its chrF++ against ``original``."""
        llm = self.translator.llm
        if llm is None:
            raise TranslationError("no translation engine available", code="engine_unavailable")
        masked = self.masker.mask(delivered)
        completion = await llm.chat(
            [
                {"role": "system", "content": back_prompt(target, source)},
                {"role": "user", "content": masked.text},
            ],
            max_tokens=self.max_tokens,
            temperature=0.0,
        )
        back = completion.text.strip()
        with contextlib.suppress(ValueError):  # a token lost on the way back: score as is
            back = unmask(back, masked)
        return back, await asyncio.to_thread(agreement, back, original)

    async def _translate(
        self, text: str, source: str, target: str, render: Render | None, masked: Masked
    ) -> AgentTranslation:
        if source == target or not normalize(TOKEN.sub(" ", masked.text)):
            return AgentTranslation(text, source, target, "identity")
        memory, least = self.translator.memory, self.translator.min_similarity
        hit = await asyncio.to_thread(memory.lookup, source, target, text, min_similarity=least)
        if hit is not None:
            return AgentTranslation(hit[0], source, target, "memory", similarity=hit[1])
        sentences = [
            _local(part, masked)
            for part in (split_sentences(masked.text) if self.split else [masked.text])
        ]
        parts: list[str] = []
        engine, shots, similarity = "memory", 0, 1.0
        for sentence in sentences:
            original = unmask(sentence.text, sentence)
            if not normalize(TOKEN.sub(" ", sentence.text)):
                parts.append(restore_spans(sentence.text, sentence, render))  # a link alone
                continue
            if len(sentences) > 1:
                hit = await asyncio.to_thread(
                    memory.lookup, source, target, original, min_similarity=least
                )
                if hit is not None:
                    parts.append(hit[0])
                    similarity = min(similarity, hit[1])
                    continue
            try:
                translated, used = await self._sentence(sentence, source, target, render)
            except TranslationError:  # twice rejected: the customer pipeline's prompt, once
                if self.translator.llm is None:
                    raise
                fallback = await self.translator.translate(original, source, target, render=render)
                translated, used = fallback.text, 0
            parts.append(translated)
            engine, shots = "llm", shots + used
        return AgentTranslation(
            join_sentences(parts, target), source, target, engine, len(sentences), shots,
            similarity=similarity,
        )  # fmt: skip

    def examples(self, sentence: str, source: str, target: str) -> list[tuple[str, str]]:
        """The few-shot pairs for one sentence, masked like it where their spans match."""
        pairs = self.translator.memory.examples(source, target)
        chosen = self.picker.pick(pairs, (source, target), sentence)
        masked = self._masked_pool.setdefault((source, target), {})
        out = []
        for pair in chosen:
            if pair not in masked:
                masked[pair] = mask_pair(self.masker, *pair) or pair
            out.append(masked[pair])
        return out

    async def _sentence(
        self, masked: Masked, source: str, target: str, render: Render | None
    ) -> tuple[str, int]:
        llm = self.translator.llm
        if llm is None:
            raise TranslationError("no translation engine available", code="engine_unavailable")
        shots = self.examples(masked.text, source, target)
        system = system_prompt(source, target, _register(self.translator, target))
        problem = ""
        for attempt in range(2):
            messages: list[dict[str, str]] = [
                {
                    "role": "system",
                    "content": system
                    + (f"\nYour previous answer was rejected: {problem}." if attempt else ""),
                }
            ]
            for example, translation in shots:
                messages += [
                    {"role": "user", "content": example},
                    {"role": "assistant", "content": translation},
                ]
            messages.append({"role": "user", "content": masked.text})
            completion = await llm.chat(
                messages,
                max_tokens=min(self.max_tokens, 48 + 2 * len(masked.text)),
                temperature=0.0,
            )
            try:
                restored = accept_translation(
                    _clean(completion.text), masked, render,
                    source=source, target=target, language_of=self.language_of,
                )  # fmt: skip
            except ValueError as exc:
                problem = str(exc)
                continue
            return restored, len(shots)
        raise TranslationError(f"model translation {source}->{target} rejected: {problem}")


def _local(part: str, masked: Masked) -> Masked:
    """A sentence of a masked text with its own tokens, numbered from 1 in order."""
    numbers: list[int] = []

    def renumber(match: re.Match[str]) -> str:
        numbers.append(int(match.group(1)))
        return "{" + str(len(numbers)) + "}"

    text = TOKEN.sub(renumber, part)
    return Masked(text, tuple(masked.spans[n - 1] for n in numbers))


_PREAMBLE = re.compile(
    r"^\s*(?:translation|traducción|traduction|übersetzung|翻译|翻訳|번역)\s*[:：]\s*", re.I
)


def _clean(text: str) -> str:
    text = _PREAMBLE.sub("", text.strip()).split("\n\n")[0].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”«»「」":
        text = text[1:-1]
    return text.strip()


def as_frame(result: AgentTranslation) -> dict[str, Any]:
    """The fields a console ``preview`` frame carries about the translation."""
    out: dict[str, Any] = {
        "engine": result.engine,
        "warnings": [w.as_dict() for w in result.warnings],
        "ms": round(result.ms, 1),
    }
    if result.back is not None:
        out["back"] = result.back
        out["agreement"] = round(result.agreement or 0.0, 1)
    return out


__all__ = [
    "BACK_MIN_AGREEMENT",
    "AgentTranslation",
    "AgentTranslator",
    "ExamplePicker",
    "Notice",
    "agreement",
    "join_sentences",
    "mask_pair",
    "split_sentences",
]
