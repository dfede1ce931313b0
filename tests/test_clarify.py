"""Clarify instead of guessing: when two FAQ entries fit a message about equally well, the
bot asks which one the customer means (in their language, both entries offered as
choices), answers the one picked with its curated answer, and keeps the pick as a labelled
example. The real pipeline and index; a real server on port 0 with a migrated database."""

from __future__ import annotations

import tomllib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from bot.evals.retrieval import load_cases, pick_cases, write_picks
from bot.localize import locality_for
from bot.pipeline import Pipeline, TurnContext
from bot.retrieve import CLARIFY
from bot.server.app import App
from bot.store import Pick
from tests.conftest import DATA
from tests.test_server import chat

LOCALE = {"es": "es-ES", "de": "de-DE", "en": "en-US"}


def clarifying(pipeline: Pipeline, language: str) -> str:
    """A development question of ``language`` that retrieval cannot settle between two
    entries (about one in seven is; which ones depends on the index)."""
    cases = [c for c in load_cases([DATA / "retrieval_dev", DATA / "questions"], [language])]
    for case in cases:
        hits = pipeline.retriever.search([case.text], k=3)
        if pipeline.retriever.decide(hits, language).action == CLARIFY:
            return case.text
    pytest.fail(f"no {language} development question gets a clarifying question")


async def test_a_close_call_asks_which_entry_in_the_customers_language(
    pipeline: Pipeline,
) -> None:
    """A Spanish customer whose question fits two entries is asked, in Spanish, which one
    they mean, with both entries as choices titled in Spanish (never the internal ids)."""
    text = clarifying(pipeline, "es")
    hits = pipeline.retriever.search([text], k=3)
    offered = pipeline.retriever.decide(hits, "es").faq_ids
    result = await pipeline.answer(text, TurnContext(language="es", locale_hint="es-ES"))
    assert result.reply == pipeline.knowledge.message("clarify_choices", "es")
    assert [c["id"] for c in result.choices] == list(offered)
    assert len(offered) == 2
    spanish = pipeline.knowledge.i18n["es"].faq
    for choice in result.choices:
        assert choice["title"] in spanish[choice["id"]].questions
        assert choice["id"] not in choice["title"]
    assert result.faq_ids == [] and result.source == "message" and result.answered
    clarify = next(s for s in result.trace.stages if s.stage == "clarify")
    assert clarify.output["offered"] == list(offered)


def test_every_language_has_the_clarifying_question(pipeline: Pipeline) -> None:
    """The question that introduces the choices is written in each launch language."""
    english = pipeline.knowledge.message("clarify_choices", "en")
    for language, loc in pipeline.knowledge.i18n.items():
        text = loc.messages.get("clarify_choices", "")
        assert text and text.rstrip().endswith(("?", "？", "؟")), language
        assert language == "en" or text != english, language


def test_a_pick_is_answered_with_that_entrys_curated_answer(pipeline: Pipeline) -> None:
    """Clicking "¿Cuánto cuesta devolver...?" gets that entry's Spanish curated answer."""
    faq_id = "returns.cost"
    title = pipeline.title(faq_id, "es")
    context = TurnContext(language="es", locale_hint="es-ES")
    result = pipeline.chosen(title, faq_id, context)
    where = locality_for(pipeline.knowledge, "es", locale_hint="es-ES")
    assert result.reply == pipeline.localizer.curated(faq_id, where)
    assert result.faq_ids == [faq_id] and result.source == "curated"
    assert result.language == "es" and result.choices == []
    assert [s.stage for s in result.trace.stages] == ["choice", "localize"]


@pytest.fixture
async def app(start: Any) -> AsyncIterator[App]:
    async with start() as app:
        yield app


async def test_choices_arrive_and_a_pick_gets_the_entry_and_is_stored(
    app: App, pipeline: Pipeline
) -> None:
    """Over the socket: the clarifying reply carries the choices; the customer clicks one,
    reads that entry's curated answer, and the pick is stored as a labelled example."""
    text = clarifying(pipeline, "es")
    async with chat(app) as client:
        await client.hello("es-ES")
        frames = await client.ask("q1", text)
        reply = frames[-1]
        assert reply["text"] == pipeline.knowledge.message("clarify_choices", "es")
        choices = reply["choices"]
        assert len(choices) == 2 and reply["faq_ids"] == [] and reply["sources"] == []
        assert all(c["title"] == pipeline.title(c["id"], "es") for c in choices)

        picked = choices[1]
        await client.send(type="message", id="q2", text=picked["title"], choice=picked["id"])
        frames = await client.until("reply")
        ack = next(f for f in frames if f["type"] == "ack")
        assert ack["id"] == "q2" and ack["text"] == picked["title"]
        answer = frames[-1]
        where = locality_for(pipeline.knowledge, "es", locale_hint="es-ES")
        assert answer["reply_to"] == "q2" and answer["faq_ids"] == [picked["id"]]
        assert answer["text"] == pipeline.localizer.curated(picked["id"], where)
        assert "choices" not in answer

        # The same click resent (a reconnect): acknowledged again, not refused nor re-run.
        await client.send(type="message", id="q2", text=picked["title"], choice=picked["id"])
        again = await client.recv()
        assert again["type"] == "ack" and again["seq"] == ack["seq"]

    picks = await app.store.clarify_picks()
    assert [(p.question, p.language, p.faq_id) for p in picks] == [(text, "es", picked["id"])]
    assert picks[0].offered == [c["id"] for c in choices]
    case = pick_cases(picks)[0]
    assert (case.set, case.language, case.text, case.faq) == ("picks", "es", text, (picked["id"],))


async def test_a_choice_that_was_not_offered_is_refused(app: App, pipeline: Pipeline) -> None:
    """A client that sends a choice the last reply did not offer gets `bad_frame` for that
    message, which is neither stored nor answered; typing on works as usual."""
    async with chat(app) as client:
        await client.hello("es-ES")
        await client.send(type="message", id="m1", text="Envío", choice="shipping.costs")
        error = await client.recv()
        assert (error["type"], error["code"], error["id"]) == ("error", "bad_frame", "m1")

        text = clarifying(pipeline, "es")
        choices = (await client.ask("m2", text))[-1]["choices"]
        offered = {c["id"] for c in choices}
        other = next(i for i in pipeline.knowledge.entries if i not in offered)
        await client.send(type="message", id="m3", text="otra cosa", choice=other)
        error = await client.recv()
        assert (error["type"], error["code"], error["id"]) == ("error", "bad_frame", "m3")
        await client.send(type="message", id="m4", text="x", choice=7)
        assert (await client.recv())["code"] == "bad_frame"
        await client.quiet(0.3)
    assert await app.store.clarify_picks() == []


def test_picks_export_as_development_cases(tmp_path: Path) -> None:
    """`bot eval picks --out DIR` writes the picks in the development-set format, which
    `bot eval retrieval --cases DIR` reads back as labelled cases."""
    at = datetime(2026, 12, 1, 18, 0, tzinfo=UTC)
    picks = [
        Pick("c1", 'Cuánto "cuesta" devolver?\nporfa', "es", ["returns.cost"], "returns.cost", at),
        Pick("c2", "Wo ist mein Paket", "de", ["orders.track", "orders.late"], "orders.late", at),
    ]
    paths = write_picks(picks, tmp_path)
    assert sorted(p.name for p in paths) == ["de.toml", "es.toml"]
    assert tomllib.loads((tmp_path / "es.toml").read_text("utf-8"))["language"] == "es"
    cases = load_cases([tmp_path])
    assert [(c.language, c.text, c.faq) for c in cases] == [
        ("de", "Wo ist mein Paket", ("orders.late",)),
        ("es", 'Cuánto "cuesta" devolver?\nporfa', ("returns.cost",)),
    ]
    assert {c.set for c in cases} == {tmp_path.name}
