"""Language detection for every customer turn.

Three sources, in order of trust for the text at hand:

1. a lexicon of short chat words (``knowledge/lexicon.toml``): "merci", "thx", "谢谢";
2. lingua, restricted to the shop's languages (accurate on short text, fast);
3. langdetect, restricted to the same languages and seeded (deterministic), blended in as
   a second opinion when lingua is unsure about a longer message.

The conversation's language wins ties and ambiguous short messages (hysteresis: a new
language must beat it by ``switch_margin``); with no conversation yet, the widget's locale
hint does. Order numbers, URLs, amounts and brand names are removed before detection.
"""

from __future__ import annotations

import re
import threading
import tomllib
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from langdetect.detector_factory import DetectorFactory
from langdetect.lang_detect_exception import LangDetectException
from lingua import IsoCode639_1, Language, LanguageDetectorBuilder

from bot.config import DetectConfig
from bot.mask import Masker, Scan

# langdetect names Chinese "zh-cn"/"zh-tw"; lingua uses ISO 639-1.
_LANGDETECT_CODES = {"zh": ("zh-cn", "zh-tw")}
_PUNCT = re.compile(r"[\s\W_]+", re.UNICODE)


@dataclass(frozen=True)
class Detection:
    language: str
    confidence: float
    method: str  # lexicon | lingua | lingua+langdetect | context | hint | default
    candidates: tuple[tuple[str, float], ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {
            "language": self.language,
            "confidence": round(self.confidence, 3),
            "method": self.method,
            "candidates": [[lang, round(score, 3)] for lang, score in self.candidates[:3]],
        }


@dataclass(frozen=True)
class Lexicon:
    """Short chat phrases: which languages use them, and what they mean."""

    languages: Mapping[str, tuple[str, ...]]
    meaning: Mapping[str, str]  # phrase -> greeting | thanks | goodbye | ack

    def intent(self, text: str) -> str | None:
        return self.meaning.get(normalize_phrase(text))


def load_lexicon(path: Path) -> Lexicon:
    with path.open("rb") as f:
        raw = tomllib.load(f)
    languages: dict[str, list[str]] = {}
    meaning: dict[str, str] = {}
    for group, by_language in raw.items():
        for lang, phrases in by_language.items():
            for phrase in phrases:
                key = normalize_phrase(phrase)
                if lang not in languages.setdefault(key, []):
                    languages[key].append(lang)
                meaning.setdefault(key, group)
    return Lexicon({k: tuple(v) for k, v in languages.items()}, meaning)


def normalize_phrase(text: str) -> str:
    text = unicodedata.normalize("NFC", text).casefold()
    return _PUNCT.sub(" ", text).strip()


class LanguageDetector:
    """Thread-safe, deterministic detector over a fixed set of languages."""

    def __init__(
        self,
        languages: Sequence[str],
        config: DetectConfig,
        *,
        lexicon: Lexicon | None = None,
        masker: Masker | None = None,
        default: str = "en",
        preload: bool = False,
    ) -> None:
        self.languages = tuple(languages)
        self.config = config
        self.default = default
        self._lexicon = dict(lexicon.languages) if lexicon else {}
        self._masker = masker or Masker()
        lingua_langs = [
            Language.from_iso_code_639_1(getattr(IsoCode639_1, c.upper())) for c in self.languages
        ]
        builder = LanguageDetectorBuilder.from_languages(*lingua_langs)
        if preload:  # servers: pay the model loading at start-up, not on the first turns
            builder = builder.with_preloaded_language_models()
        self._lingua = builder.build()
        self._factory = DetectorFactory()
        self._factory.seed = 0
        self._load_langdetect_profiles()
        self._lock = threading.Lock()

    def _load_langdetect_profiles(self) -> None:
        import json
        from importlib import resources

        profiles = resources.files("langdetect") / "profiles"
        wanted = [code for lang in self.languages for code in _LANGDETECT_CODES.get(lang, (lang,))]
        docs = [json.loads((profiles / code).read_text(encoding="utf-8")) for code in wanted]
        from langdetect.utils.lang_profile import LangProfile

        for index, doc in enumerate(docs):
            profile = LangProfile(**doc)
            self._factory.add_profile(profile, index, len(docs))

    def detect(
        self,
        text: str,
        *,
        current: str | None = None,
        hint: str | None = None,
        scan: Scan | None = None,
    ) -> Detection:
        """Detect the language of one message in the context of its conversation;
        ``scan``: the message's protected spans, when the turn has found them already."""
        current = current if current in self.languages else None
        hint = hint if hint in self.languages else None
        fallback = current or hint or self.default
        if scan is None or scan.text != text:
            scan = self._masker.scan(text)
        cleaned = scan.stripped()
        letters = sum(ch.isalpha() for ch in cleaned)
        if letters == 0:
            method = "context" if current else ("hint" if hint else "default")
            return Detection(fallback, 0.0, method)

        phrase = normalize_phrase(cleaned)
        if phrase in self._lexicon:
            langs = self._lexicon[phrase]
            for preferred in (current, hint):
                if preferred in langs:
                    return Detection(preferred, 0.9, "lexicon", tuple((x, 0.9) for x in langs))
            return Detection(langs[0], 0.9 if len(langs) == 1 else 0.6, "lexicon")

        scores = self._scores(cleaned, letters)
        ranked = sorted(scores.items(), key=lambda kv: kv[1], reverse=True)
        top_lang, top_score = ranked[0]
        short = letters <= self.config.short_text_letters
        method = "lingua" if short or top_score >= 0.5 else "lingua+langdetect"
        if current and top_lang != current:
            margin = self.config.switch_margin * (1.5 if short else 1.0)
            if (
                top_score < self.config.min_confidence
                or top_score - scores.get(current, 0.0) < margin
            ):
                return Detection(current, scores.get(current, 0.0), "context", tuple(ranked))
        elif not current and hint and top_lang != hint:
            # The page's language is evidence too: a short message that is a close call
            # between neighbours ("pon música": pt 0.51, es 0.49) goes to it.
            given = scores.get(hint, 0.0)
            if (top_score < self.config.min_confidence and given >= top_score / 2) or (
                short and top_score - given < self.config.switch_margin
            ):
                return Detection(hint, given, "hint", tuple(ranked))
        return Detection(top_lang, top_score, method, tuple(ranked))

    def _scores(self, text: str, letters: int) -> dict[str, float]:
        scores = {lang: 0.0 for lang in self.languages}
        for value in self._lingua.compute_language_confidence_values(text):
            code = value.language.iso_code_639_1.name.lower()
            if code in scores:
                scores[code] = value.value
        # langdetect is weaker than lingua on chat-length text: only a tie-breaker.
        if letters > self.config.short_text_letters and max(scores.values()) < 0.5:
            second = self._langdetect(text)
            if second:
                scores = {lang: 0.7 * scores[lang] + 0.3 * second.get(lang, 0.0) for lang in scores}
        # langdetect's sampling leaves noise in the last bits: round it away (determinism).
        return {lang: round(score, 6) for lang, score in scores.items()}

    def _langdetect(self, text: str) -> dict[str, float]:
        with self._lock:  # a langdetect Detector is cheap but its factory is shared
            try:
                detector = self._factory.create()
                detector.append(text)
                probabilities = detector.get_probabilities()
            except LangDetectException:
                return {}
        out: dict[str, float] = {}
        for p in probabilities:
            lang = "zh" if p.lang.startswith("zh") else p.lang
            out[lang] = out.get(lang, 0.0) + p.prob
        return out
