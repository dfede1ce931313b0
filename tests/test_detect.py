"""Language detection: every turn, short messages included, deterministic."""

from __future__ import annotations

import pytest

from bot.config import Config
from bot.detect import LanguageDetector, load_lexicon
from tests.conftest import LANGUAGES, questions


@pytest.fixture(scope="module")
def detector(config: Config) -> LanguageDetector:
    return LanguageDetector(
        config.shop.languages,
        config.detect,
        lexicon=load_lexicon(config.shop.knowledge_dir / "lexicon.toml"),
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [("hola", "es"), ("谢谢", "zh"), ("merci", "fr"), ("thx", "en"), ("danke", "de"),
     ("ありがとう", "ja"), ("감사합니다", "ko"), ("obrigado", "pt"), ("grazie", "it"),
     ("спасибо", "ru"), ("شكرا", "ar"), ("bedankt", "nl")],
)  # fmt: skip
def test_short_messages_without_context(
    detector: LanguageDetector, text: str, expected: str
) -> None:
    """A one-word greeting or thanks is placed in its language."""
    assert detector.detect(text).language == expected


def test_ambiguous_short_message_keeps_the_conversation_language(
    detector: LanguageDetector,
) -> None:
    """ "ok" in a French conversation stays French; with only a German page hint, German."""
    assert detector.detect("ok", current="fr").language == "fr"
    assert detector.detect("ok", hint="de").language == "de"
    assert detector.detect("hallo", current="nl").language == "nl"
    assert detector.detect("#48213").language == "en"
    assert detector.detect("#48213", current="ja").language == "ja"


def test_page_language_decides_a_close_short_call(detector: LanguageDetector) -> None:
    """ "pon música" on a Spanish page is Spanish (lingua: pt 0.51, es 0.49); on a Portuguese
    page the same words stay Portuguese; a clear short message ignores the page."""
    assert detector.detect("pon música", hint="es").language == "es"
    assert detector.detect("toca música", hint="es").language == "es"
    assert detector.detect("pon música", hint="pt").language == "pt"
    assert detector.detect("quiero devolver", hint="pt").language == "es"


def test_a_full_sentence_switches_language(detector: LanguageDetector) -> None:
    """A customer who switches to another language mid-conversation is followed."""
    d = detector.detect("Where is my order #48213? It has been two weeks.", current="es")
    assert d.language == "en"


def test_detection_is_deterministic(config: Config) -> None:
    """The same text gives the same answer every time, in every process and instance: the
    langdetect tie-breaker is seeded, not random."""
    texts = [
        "Eu quero cancelar o meu pedido, por favor",
        "Pedido 48213 ainda não chegou",  # pt/es: the tie-breaker decides
        "ok merci",
        "Bestelling 48213 is nog niet aangekomen",
        "grazie mille ciao",
    ]
    runs = []
    for _ in range(3):
        fresh = LanguageDetector(
            config.shop.languages,
            config.detect,
            lexicon=load_lexicon(config.shop.knowledge_dir / "lexicon.toml"),
        )
        runs.append([(d.language, round(d.confidence, 6)) for d in map(fresh.detect, texts)])
    assert runs[0] == runs[1] == runs[2]


@pytest.mark.parametrize("language", LANGUAGES)
def test_detection_accuracy_on_held_out_messages(detector: LanguageDetector, language: str) -> None:
    """Held-out messages (short ones and sentences) written by native speakers."""
    data = questions(language)
    samples = [d["text"] for d in data.get("detect", [])] + [c["text"] for c in data["case"]]
    wrong = [
        (t, detector.detect(t).language) for t in samples if detector.detect(t).language != language
    ]
    accuracy = 1 - len(wrong) / len(samples)
    assert accuracy >= 0.9, wrong
