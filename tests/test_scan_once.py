"""A customer's message is scanned for placeholders (order numbers, amounts, brand names)
once per turn, and every stage (detection, lexicon, translation, route) reads that scan."""

from __future__ import annotations

import pytest

from bot.mask import Scan
from bot.pipeline import Pipeline, TurnContext


@pytest.fixture
def scanned(pipeline: Pipeline, monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every text the pipeline's real masker scans during the test, in order."""
    seen: list[str] = []
    real = pipeline.masker.scan

    def counting(text: str) -> Scan:
        seen.append(text)
        return real(text)

    # The detector and the translator share the pipeline's masker (Pipeline.build).
    assert pipeline.detector._masker is pipeline.masker is pipeline.translator.masker
    monkeypatch.setattr(pipeline.masker, "scan", counting)
    return seen


@pytest.mark.parametrize(
    ("locale", "text", "source"),
    [
        ("es-ES", "¿Dónde está mi pedido #48213? Pagué 59,90 € con Meridian Goods", "composed"),
        ("en-US", "How do I return an item?", "curated"),
        ("de-DE", "Danke!", "message"),
        ("fr-FR", "Je veux parler à un humain, commande 48213", "message"),
    ],
)
async def test_a_turn_scans_the_message_once(
    pipeline: Pipeline, scanned: list[str], locale: str, text: str, source: str
) -> None:
    """However the turn goes, the bot looks for the customer's order number once."""
    result = await pipeline.answer(text, TurnContext(locale_hint=locale))
    assert result.source == source
    assert scanned == [text]


async def test_the_order_number_found_once_reaches_the_reply(
    pipeline: Pipeline, scanned: list[str]
) -> None:
    """The one scan still feeds every stage: the composed reply names the order."""
    text = "Mi pedido #48213 no ha llegado"
    result = await pipeline.answer(text, TurnContext(locale_hint="es-ES"))
    assert result.source == "composed" and "#48213" in result.reply
    assert scanned == [text]


async def test_a_message_for_an_agent_is_scanned_once(
    pipeline: Pipeline, scanned: list[str]
) -> None:
    """A message read for an agent (language and English) is scanned once too."""
    text = "¿Dónde está mi pedido #48213?"
    read = await pipeline.annotate(text, current="es", locale="es-ES")
    assert read.language == "es"
    assert scanned == [text]


async def test_an_agent_reply_is_scanned_once(pipeline: Pipeline, scanned: list[str]) -> None:
    """Translating an agent's reply finds its protected spans once (detection included)."""
    text = "How can I track my order?"
    out = await pipeline.translate_for_customer(text, None, "es", locale="es-ES")
    assert out.source == "en"
    assert scanned == [text]
