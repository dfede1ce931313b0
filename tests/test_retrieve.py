"""Retrieval over the real index and classifier head: the right FAQ, calibrated confidence,
and no FAQ for off-topic questions."""

from __future__ import annotations

import asyncio
import json
import shutil
import tomllib
from pathlib import Path

import numpy as np
import pytest

from bot.config import Config
from bot.knowledge import OUT_OF_SCOPE, Knowledge, load_knowledge
from bot.pipeline import Pipeline, TurnContext
from bot.retrieve import (
    ABSTAIN,
    ANSWER,
    CLARIFY,
    Embedder,
    Hit,
    Miss,
    Retriever,
    build_index,
    fit_head,
    variants,
)
from tests.conftest import LANGUAGES, questions


@pytest.mark.parametrize("language", LANGUAGES)
async def test_held_out_questions_find_their_faq(pipeline: Pipeline, language: str) -> None:
    """Questions worded by native speakers (not the FAQ's own variants) find their entry."""
    cases = [c for c in questions(language)["case"] if c["faq"]]
    top1 = top3 = wrong = 0
    misses = []
    for case in cases:
        hits = pipeline.retriever.search([case["text"]], k=3)
        ids = [h.faq_id for h in hits]
        decision = pipeline.retriever.decide(hits, language)
        top1 += ids[:1] == [case["faq"]]
        top3 += case["faq"] in ids
        wrong += decision.action == ANSWER and decision.faq_ids != (case["faq"],)
        if ids[:1] != [case["faq"]]:
            misses.append((case["text"], case["faq"], ids[:1]))
    # Measured (bot eval retrieval, held-out set): top-1 76-93 % by language, top-3 86-98 %,
    # answered with a wrong FAQ 0-6 %.
    assert top1 / len(cases) >= 0.7, misses
    assert top3 / len(cases) >= 0.85, misses
    assert wrong / len(cases) <= 0.08, misses


@pytest.mark.parametrize("language", LANGUAGES)
async def test_off_topic_questions_are_not_answered_with_an_faq(
    pipeline: Pipeline, language: str
) -> None:
    """'What is the weather in Paris' gets no FAQ answer, in any language."""
    cases = [c for c in questions(language)["case"] if not c["faq"]]
    answered = []
    for case in cases:
        result = await pipeline.answer(case["text"], TurnContext(locale_hint=language))
        hits = pipeline.retriever.search([case["text"]])
        if result.faq_ids or pipeline.retriever.decide(hits, language).answered:
            answered.append((case["text"], result.faq_ids))
    assert len(answered) <= len(cases) // 5, answered


def test_hits_carry_a_probability_and_rank_by_it(pipeline: Pipeline) -> None:
    """A plain question gets its FAQ with a high probability; probabilities sum to at most 1."""
    hits = pipeline.retriever.search(["How long does delivery take?"], k=5)
    assert hits[0].faq_id == "shipping.delivery_times"
    assert hits[0].confidence > 0.5
    assert [h.confidence for h in hits] == sorted((h.confidence for h in hits), reverse=True)
    assert sum(h.confidence for h in hits) <= 1.0 + 1e-5
    assert all(h.score == h.confidence for h in hits)
    decision = pipeline.retriever.decide(hits, "en")
    assert decision.action == ANSWER and decision.faq_ids == ("shipping.delivery_times",)


async def test_turns_searched_together_get_what_each_gets_alone(pipeline: Pipeline) -> None:
    """Messages of concurrent turns go through the index in fewer passes than messages, and
    each gets the hits it gets searched alone, up to float32 rounding (a matrix product
    sums in another order than a vector product); a repeated message is searched once."""
    retriever = pipeline.retriever
    texts = [
        "How long does delivery take?",
        "¿Puedo devolver unas zapatillas usadas?",
        "wo ist meine bestellung #48213",
        "How long does delivery take?",
        "配送にはどのくらいかかりますか",
        "can you book me a taxi",
    ]
    vectors = await retriever.embed_async(texts)
    calls = retriever.searcher.calls
    together = await asyncio.gather(
        *(retriever.search_async(v, t, k=3) for v, t in zip(vectors, texts, strict=True))
    )
    assert retriever.searcher.calls - calls < len(texts)
    for vector, text, hits in zip(vectors, texts, together, strict=True):
        alone = retriever.search_vectors(vector[None], [text], k=3)
        assert [h.faq_id for h in hits] == [h.faq_id for h in alone]
        assert [h.matched for h in hits] == [h.matched for h in alone]
        assert np.allclose(
            [h.confidence for h in hits], [h.confidence for h in alone], rtol=0, atol=1e-5
        )


def test_order_numbers_do_not_change_the_vector(pipeline: Pipeline) -> None:
    """Two customers asking about different order numbers ask the same question."""
    a, b = pipeline.retriever.embed(["where is order #48213", "where is order #77120"])
    assert np.allclose(a, b)


def test_decide_clarifies_between_two_close_entries_and_abstains_when_off_topic(
    pipeline: Pipeline,
) -> None:
    """A close call between two entries asks which one; an off-topic top hit says no answer."""
    retriever = pipeline.retriever
    t = retriever.threshold("en")
    close = [Hit("returns.cost", 0.45, "", 0.9, 0.45), Hit("refunds.shipping", 0.44, "", 0.9, 0.44)]
    decision = retriever.decide(close, "en")
    assert decision.action == (CLARIFY if t <= 0.89 else ABSTAIN)
    assert decision.faq_ids == (("returns.cost", "refunds.shipping") if t <= 0.89 else ())
    off = [Hit(OUT_OF_SCOPE, 0.9, "", 0.9, 0.9), Hit("returns.cost", 0.05, "", 0.8, 0.05)]
    assert retriever.decide(off, "en").off_topic
    assert retriever.decide([], "en").action == ABSTAIN
    assert all(0.5 <= retriever.threshold(lang) <= 0.95 for lang in LANGUAGES)


def test_head_training_is_deterministic(knowledge: Knowledge) -> None:
    """Training the head twice on the same vectors gives the same weights and thresholds."""
    rng = np.random.default_rng(0)
    items = sorted(variants(knowledge), key=lambda item: item[0])
    vectors = rng.normal(size=(len(items), 16)).astype(np.float32)
    texts = [text for _, text, _ in items]
    labels = [i for i, _, _ in items]
    langs = [lang for _, _, lang in items]
    a, b = fit_head(vectors, texts, labels, langs), fit_head(vectors, texts, labels, langs)
    assert np.array_equal(a.weights, b.weights) and a.thresholds == b.thresholds
    weights = [(h.temperature, h.knn_weight, h.lex_weight) for h in (a, b)]
    assert weights[0] == weights[1]


def test_variants_that_rank_under_another_entry_are_reported() -> None:
    """A variant filed under one entry but written like another's is listed for the
    localizers with the entry it was taken for; the well-filed ones are not."""
    rng = np.random.default_rng(0)
    centres = {c: rng.normal(size=16) for c in ("orders.track", "returns.policy", OUT_OF_SCOPE)}
    words = {"orders.track": "where is my parcel", "returns.policy": "can i send it back",
             OUT_OF_SCOPE: "tell me a joke"}  # fmt: skip
    labels = [c for c in centres for _ in range(12)]
    texts = [f"{words[c]} {i}" for i, c in enumerate(labels)]
    vectors = np.stack([centres[c] + 0.1 * rng.normal(size=16) for c in labels])
    vectors[3] = centres["returns.policy"]  # filed under orders.track, reads like a return
    texts[3] = "can i send it back 99"
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    misses: list[Miss] = []
    fit_head(vectors.astype(np.float32), texts, labels, ["en"] * len(labels), misses)
    assert [(m.text, m.faq_id, m.ranked_first) for m in misses] == [
        ("can i send it back 99", "orders.track", "returns.policy")
    ]
    assert misses[0].row().split("\t")[:3] == ["en", "orders.track", "returns.policy"]


def test_index_reload_picks_up_a_rebuilt_index(config: Config, tmp_path: Path) -> None:
    """After `bot index` rebuilds the index with a new FAQ entry, a retriever that reloads
    answers questions about it; before, it could not."""
    knowledge_dir = tmp_path / "knowledge"
    shutil.copytree(config.shop.knowledge_dir, knowledge_dir)
    # A small knowledge base (one topic, English only) keeps the two builds to seconds.
    for path in (knowledge_dir / "faq").glob("*.toml"):
        if path.name != "contact.toml":
            path.unlink()
    shutil.rmtree(knowledge_dir / "i18n")
    off_topic = tomllib.loads((knowledge_dir / "out_of_scope.toml").read_text("utf-8"))
    english = json.dumps(off_topic["examples"]["en"], ensure_ascii=False)
    (knowledge_dir / "out_of_scope.toml").write_text(f"[examples]\nen = {english}\n", "utf-8")
    index_dir = tmp_path / "index"
    embedder = Embedder(config.model.cache_dir)
    build_index(load_knowledge(knowledge_dir), index_dir, embedder, progress=False)
    retriever = Retriever(index_dir, embedder)
    question = "I avoid anything made from animals: are your hiking boots vegan?"
    before = retriever.search([question], k=3)
    assert "materials.vegan" not in [h.faq_id for h in before]
    assert retriever.reload() is False  # nothing changed on disk

    (knowledge_dir / "faq" / "materials.toml").write_text(VEGAN, "utf-8")
    knowledge = load_knowledge(knowledge_dir)
    build_index(knowledge, index_dir, embedder, progress=False)
    assert retriever.reload() is True
    assert retriever.fingerprint == knowledge.fingerprint
    hits = retriever.search([question], k=3)
    assert hits[0].faq_id == "materials.vegan", hits
    assert retriever.decide(hits, "en").faq_ids == ("materials.vegan",)
    assert retriever.reload() is False


VEGAN = """topic = "materials"

[[entry]]
id = "materials.vegan"
questions = [
  "Are your products vegan?",
  "Which of your shoes are vegan?",
  "vegan boots",
  "do you use animal leather",
  "is this jacket made without animal products",
  "cruelty free materials",
  "are the sneakers vegan friendly",
  "no wool or leather please, what can I buy",
]
answer = "Items marked Vegan on the product page contain no animal materials, glues included."
"""
