"""Translation to and from the pivot language, behind one interface.

Engines, tried in order: identity (same language), translation memory (curated and
approved translations, exact or fuzzy), then the LLM through the OpenAI-compatible client.
Protected spans are masked before any engine sees the text and checked after: a model
translation that loses one is retried once, then rejected.
"""

from __future__ import annotations

import asyncio
import difflib
import re
import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from bot.errors import LLMError, TranslationError
from bot.knowledge import Knowledge
from bot.llm import LLMClient, OnDelta
from bot.mask import Masked, Masker, Scan, unmask

LANGUAGE_NAMES = {
    "en": "English", "zh": "Simplified Chinese", "es": "Spanish", "fr": "French",
    "de": "German", "ja": "Japanese", "ko": "Korean", "pt": "Brazilian Portuguese",
    "it": "Italian", "ru": "Russian", "ar": "Arabic", "nl": "Dutch",
}  # fmt: skip
_NORMALIZE = re.compile(r"[\s\W_]+", re.UNICODE)
_PREAMBLE = re.compile(
    r"^\s*(?:translation|traducción|traduction|übersetzung|翻译|翻訳)\s*[:：]\s*", re.I
)


@dataclass(frozen=True)
class Translation:
    text: str
    source: str
    target: str
    engine: str  # identity | memory | cache | llm
    placeholders: tuple[str, ...] = ()
    similarity: float = 1.0
    usage: dict[str, Any] | None = None
    ms: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "engine": self.engine,
            "source": self.source,
            "target": self.target,
            "text": self.text,
            "placeholders": list(self.placeholders),
            "ms": round(self.ms, 2),
        }
        if self.engine == "memory":
            out["similarity"] = round(self.similarity, 3)
        if self.usage:
            out["usage"] = self.usage
        return out


def normalize(text: str) -> str:
    return _NORMALIZE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


@dataclass
class TranslationMemory:
    """Exact and fuzzy lookup of known translations, per language pair."""

    _exact: dict[tuple[str, str, str], str] = field(default_factory=dict)
    _pairs: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)
    _texts: dict[tuple[str, str, str], str] = field(default_factory=dict)  # as written

    def add(self, source: str, target: str, text: str, translation: str) -> None:
        key = normalize(text)
        if not key:
            return
        if (source, target, key) not in self._exact:
            self._pairs.setdefault((source, target), []).append((key, translation))
        self._exact[(source, target, key)] = translation
        self._texts[(source, target, key)] = text

    def examples(self, source: str, target: str) -> list[tuple[str, str]]:
        """Every (text as written, translation) pair of a language pair (few-shot pools)."""
        return [
            (self._texts[(source, target, key)], self._exact[(source, target, key)])
            for key, _ in self._pairs.get((source, target), ())
        ]

    def __len__(self) -> int:
        return len(self._exact)

    def lookup(
        self, source: str, target: str, text: str, *, min_similarity: float = 1.0
    ) -> tuple[str, float] | None:
        key = normalize(text)
        hit = self._exact.get((source, target, key))
        if hit is not None:
            return hit, 1.0
        if min_similarity >= 1.0:
            return None
        best: tuple[str, float] | None = None
        matcher = difflib.SequenceMatcher(autojunk=False)
        matcher.set_seq2(key)
        for candidate, translation in self._pairs.get((source, target), ()):
            if abs(len(candidate) - len(key)) > len(key) * (1 - min_similarity) + 2:
                continue
            matcher.set_seq1(candidate)
            if matcher.quick_ratio() < min_similarity:
                continue
            ratio = matcher.ratio()
            if ratio >= min_similarity and (best is None or ratio > best[1]):
                best = (translation, ratio)
        return best

    @classmethod
    def from_knowledge(cls, knowledge: Knowledge) -> TranslationMemory:
        """Seed with curated content: localized questions -> the entry's English question,
        and the bot's own messages in both directions."""
        memory = cls()
        english_messages = knowledge.i18n["en"].messages if "en" in knowledge.i18n else {}
        for loc in knowledge.i18n.values():
            if loc.language == "en":
                continue
            for faq_id, localized in loc.faq.items():
                canonical = knowledge.entries[faq_id].questions[0]
                for question in localized.questions:
                    memory.add(loc.language, "en", question, canonical)
            for key, text in loc.messages.items():
                if key in english_messages and "{" not in text:
                    memory.add(loc.language, "en", text, english_messages[key])
                    memory.add("en", loc.language, english_messages[key], text)
        return memory


def _prompt(source: str, target: str, register: str | None) -> str:
    src, tgt = LANGUAGE_NAMES.get(source, source), LANGUAGE_NAMES.get(target, target)
    lines = [
        f"You translate chat messages of the online shop Meridian Goods from {src} to {tgt}.",
        "Translate the meaning exactly: a question stays a question. Never answer the message.",
        "Keep every token written like {1} or {2} exactly as it is.",
        "Reply with the translation only: no notes, no quotes, no explanations.",
    ]
    if register:
        lines.append(f"Address the customer as a support agent would, using {register}.")
    return "\n".join(lines)


# Curated pairs shown to the model before the text (few-shot): small models otherwise tend
# to answer a question instead of translating it. Taken from the knowledge base, so every
# language pair gets examples written by its localizer.
_SHOT_QUESTIONS = ("orders.track", "returns.start")
_SHOT_MESSAGES = ("handoff_offer",)


def few_shot(knowledge: Knowledge, source: str, target: str) -> list[tuple[str, str]]:
    """(source text, target text) examples for a language pair, from curated content."""
    sides = {}
    for lang in (source, target):
        loc = knowledge.i18n.get(lang)
        if loc is None:
            return []
        questions = [
            knowledge.entries[i].questions[0] if lang == "en" else loc.faq[i].questions[0]
            for i in _SHOT_QUESTIONS
            if i in knowledge.entries and (lang == "en" or i in loc.faq)
        ]
        messages = [loc.messages[k] for k in _SHOT_MESSAGES if k in loc.messages]
        sides[lang] = questions + messages
    return [(a, b) for a, b in zip(sides[source], sides[target], strict=False)]


class Translator:
    def __init__(
        self,
        knowledge: Knowledge,
        masker: Masker,
        memory: TranslationMemory,
        llm: LLMClient | None,
        *,
        min_similarity: float = 0.92,
        max_tokens: int = 400,
        language_of: Callable[[str], str | None] | None = None,
        cache_size: int = 2048,
    ) -> None:
        self.knowledge = knowledge
        self.masker = masker
        self.memory = memory
        self.llm = llm
        self.min_similarity = min_similarity
        self.max_tokens = max_tokens
        self._language_of = language_of
        self._cache: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self._cache_size = cache_size
        self._shot_cache: dict[tuple[str, str], list[tuple[str, str]]] = {}

    async def translate(
        self,
        text: str,
        source: str,
        target: str,
        *,
        render: Callable[[str, str], str] | None = None,
        on_delta: OnDelta | None = None,
        use_model: bool = True,
        scan: Scan | None = None,
    ) -> Translation:
        """Translate ``text``; ``render(kind, span)`` may re-format protected spans
        (amounts for the target locale); ``scan``: the text's spans, when the turn has
        found them already. Raises TranslationError or LLMError."""
        started = time.perf_counter()
        if scan is None or scan.text != text:
            scan = self.masker.scan(text)
        masked = scan.masked()
        placeholders = tuple(masked.placeholders)

        def done(out: str, engine: str, **extra: Any) -> Translation:
            ms = (time.perf_counter() - started) * 1000
            return Translation(out, source, target, engine, placeholders, ms=ms, **extra)

        if source == target or not normalize(masked.text.replace("{", " ")):
            return done(text, "identity")
        # An exact hit is a dictionary lookup, made on the event loop; the fuzzy scan is CPU
        # work over every stored pair, off it.
        hit = self.memory.lookup(source, target, text)
        if hit is None and self.min_similarity < 1.0:
            hit = await asyncio.to_thread(
                self.memory.lookup, source, target, text, min_similarity=self.min_similarity
            )
        if hit is not None:
            return done(hit[0], "memory", similarity=hit[1])
        cached = self._cache.get((source, target, text))
        if cached is not None:
            self._cache.move_to_end((source, target, text))
            return done(cached, "cache")
        if not use_model:
            raise TranslationError("not in the translation memory", code="memory_miss")
        if self.llm is None:
            raise TranslationError("no translation engine available", code="engine_unavailable")
        out, usage = await self._with_model(masked, source, target, render, on_delta)
        self._cache[(source, target, text)] = out
        if len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return done(out, "llm", usage=usage)

    async def _with_model(
        self,
        masked: Masked,
        source: str,
        target: str,
        render: Callable[[str, str], str] | None,
        on_delta: OnDelta | None,
    ) -> tuple[str, dict[str, Any]]:
        assert self.llm is not None
        settings = self.knowledge.languages.get(target)
        register = None
        if settings and target != "en" and settings.pronoun:
            register = f"{settings.register} address ({settings.pronoun})"
        problem = ""
        for attempt in range(2):
            system = _prompt(source, target, register)
            if attempt:
                system += f"\nYour previous answer was rejected: {problem}. Try again."
            messages: list[dict[str, str]] = [{"role": "system", "content": system}]
            for example, translation in self._shots(source, target):
                messages.append({"role": "user", "content": example})
                messages.append({"role": "assistant", "content": translation})
            messages.append({"role": "user", "content": masked.text})
            completion = await self.llm.chat(
                messages,
                max_tokens=self.max_tokens,
                temperature=0.0,
                on_delta=on_delta if attempt == 0 else None,
            )
            try:
                restored = accept_translation(
                    _clean(completion.text), masked, render,
                    source=source, target=target, language_of=self._language_of,
                )  # fmt: skip
            except ValueError as exc:
                problem = str(exc)
                continue
            return restored, completion.usage()
        raise TranslationError(f"model translation {source}->{target} rejected: {problem}")

    def _shots(self, source: str, target: str) -> list[tuple[str, str]]:
        key = (source, target)
        if key not in self._shot_cache:
            self._shot_cache[key] = few_shot(self.knowledge, source, target)
        return self._shot_cache[key]


def restore_spans(candidate: str, masked: Masked, render: Callable[[str, str], str] | None) -> str:
    """A masked text's tokens replaced by its spans, as ``render`` (kind, text) writes them;
    ValueError when a token is lost or invented."""
    spans = {
        i + 1: render(s.kind, s.text) if render else s.text for i, s in enumerate(masked.spans)
    }
    return unmask(candidate, masked, render=spans)


def accept_translation(
    candidate: str,
    masked: Masked,
    render: Callable[[str, str], str] | None,
    *,
    source: str,
    target: str,
    language_of: Callable[[str], str | None] | None,
) -> str:
    """A model's translation of ``masked`` with its spans restored, or ValueError saying why
    it is refused: a token lost or invented, nothing left, or still in the source language
    (checked with ``language_of`` on texts of 15 letters or more)."""
    restored = restore_spans(candidate, masked, render)
    if not restored.strip():
        raise ValueError("empty translation")
    if language_of is not None and sum(ch.isalpha() for ch in restored) >= 15:
        detected = language_of(restored)
        if detected is not None and detected != target and detected == source:
            raise ValueError(f"the text is not in {LANGUAGE_NAMES.get(target, target)}")
    return restored


def _clean(text: str) -> str:
    text = _PREAMBLE.sub("", text.strip())
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'“”«»「」":
        text = text[1:-1]
    return text.strip()


__all__ = ["LLMError", "Translation", "TranslationMemory", "Translator", "normalize"]
