"""Whole turns through the real model: the embedded llama.cpp engine with the 0.5B model.

The engine is started once per session (tests/engine_plugin.py). These tests check what a
customer sees: the language of the reply, the FAQ it rests on, streamed text without
citation markers, placeholders kept, and a curated answer when the engine is gone.
"""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import pytest

from bot.config import Config
from bot.detect import LanguageDetector
from bot.llm import LLMClient
from bot.pipeline import Pipeline, TurnContext
from tests.engine_plugin import ENGINE_MODEL

pytestmark = pytest.mark.slow


def engine_config(config: Config, url: str, **generate: Any) -> Config:
    return config.replace(
        model={"url": url, "served_name": ENGINE_MODEL, "adapter": "", "read_timeout": 120.0,
               "first_token_timeout": 60.0},
        generate={"mode": "always", **generate},
    )  # fmt: skip


@pytest.fixture(scope="module")
async def engine_pipeline(
    config: Config, index_dir: object, llm_engine: str
) -> AsyncIterator[Pipeline]:
    cfg = engine_config(config, llm_engine)
    async with LLMClient(cfg.model) as llm:
        yield Pipeline.build(cfg, llm)


@pytest.fixture(scope="module")
def detector(engine_pipeline: Pipeline) -> LanguageDetector:
    return engine_pipeline.detector


async def test_generated_reply_streams_in_the_customers_language(
    engine_pipeline: Pipeline, detector: LanguageDetector
) -> None:
    """A Spanish shopper gets a Spanish reply that streams, grounded on the right FAQ."""
    pieces: list[str] = []

    async def on_delta(text: str) -> None:
        pieces.append(text)

    question = "¿Puedo cambiar mis zapatillas por una talla más grande?"
    result = await engine_pipeline.answer(
        question, TurnContext(locale_hint="es-ES"), on_delta=on_delta
    )
    assert result.language == "es"
    assert result.faq_ids[0] in {"returns.exchange", "products.trailflex_sizing", "orders.change"}
    assert detector.detect(result.reply, hint="es").language == "es", result.reply
    generate = next(s for s in result.trace.stages if s.stage == "generate")
    assert "error" not in generate.output, generate.output  # the engine answered
    assert not any("[" in p and "." in p and "]" in p for p in pieces), pieces
    if "rejected" in generate.output:  # the gate stopped it: only what had passed streamed
        assert result.source == "fallback"
        assert "".join(pieces) == generate.output["streamed"]
    else:  # every sentence passed the gate as it streamed
        assert generate.output["usage"]["completion_tokens"] > 0
        assert pieces, "the model's reply was not streamed"
    assert result.pivot, "the English pivot is recorded after the reply"


async def test_english_reply_is_gated_and_cites_faq_ids(engine_pipeline: Pipeline) -> None:
    """An English question with an order number: a checked model reply, or the composed one
    with the gate's reasons; never the engine's absence passing for either."""
    question = "It's been 12 days and my order #48213 still hasn't arrived, what can I do?"
    result = await engine_pipeline.answer(question, TurnContext(locale_hint="en-US"))
    assert result.language == "en"
    assert result.faq_ids[0].startswith("orders.")
    generate = next(s for s in result.trace.stages if s.stage == "generate")
    assert "error" not in generate.output, generate.output  # the engine answered
    if result.source == "generated":
        assert generate.output["usage"]["completion_tokens"] > 0
        assert "[" not in result.reply
        assert "12" not in result.reply  # the customer's figure is not a policy fact
    else:  # the gate refused the model's reply, said why, and the composed reply stands in
        assert result.source == "fallback"
        assert generate.output["rejected"]
        assert "#48213" in result.reply


async def test_model_translation_keeps_placeholders(engine_pipeline: Pipeline) -> None:
    """Order numbers and amounts survive a model translation; amounts take the target format."""
    translation = await engine_pipeline.translator.translate(
        "Wo ist meine Bestellung #48213? Ich habe 49,90 € bezahlt.", "de", "en",
        render=lambda kind, span: span,
    )  # fmt: skip
    assert translation.engine == "llm"
    assert "#48213" in translation.text
    assert "49,90 €" in translation.text


async def test_pivot_mode_translates_the_reply_back(
    config: Config, index_dir: object, llm_engine: str, detector: LanguageDetector
) -> None:
    """In pivot mode the model answers in English and the reply is translated to German."""
    cfg = engine_config(config, llm_engine, language="pivot")
    async with LLMClient(cfg.model) as llm:
        pipeline = Pipeline.build(cfg, llm)
        result = await pipeline.answer(
            "Kann ich meine Bestellung #48213 noch ändern?", TurnContext(locale_hint="de-DE")
        )
    stages = [s.stage for s in result.trace.stages]
    generate = next(s for s in result.trace.stages if s.stage == "generate")
    assert "error" not in generate.output, generate.output  # the engine answered
    assert result.language == "de"
    assert detector.detect(result.reply, hint="de").language == "de", result.reply
    if result.source == "generated":
        assert "translate_out" in stages
    else:
        assert generate.output.get("rejected") or "translate_out" in stages


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_dead_engine_answers_from_the_curated_faq_and_offers_a_person(
    config: Config, index_dir: object
) -> None:
    """With the engine down the customer still gets the curated answer, and a person."""
    cfg = engine_config(config, f"http://127.0.0.1:{_closed_port()}/v1")
    cfg = cfg.replace(model={"retries": 0, "breaker_failures": 1})
    async with LLMClient(cfg.model) as llm:
        pipeline = Pipeline.build(cfg, llm)
        first = await pipeline.answer("¿Cuánto cuesta el envío?", TurnContext(locale_hint="es-ES"))
        second = await pipeline.answer("¿Cuánto cuesta el envío?", TurnContext(locale_hint="es-ES"))
    offer = pipeline.knowledge.message("handoff_offer", "es")
    for result in (first, second):
        assert result.source == "fallback"
        assert result.faq_ids == ["shipping.costs"]
        assert offer in result.reply
        assert "€" in result.reply
    assert llm.breaker.state == "open"
