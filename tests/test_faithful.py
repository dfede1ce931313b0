"""Faithful replies: composed answers for turn-specific questions, a gate on model text."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest

from bot.config import Config
from bot.faithful import (
    FaithfulnessChecker,
    SentenceGate,
    Unfaithful,
    drop_opening_polarity,
    is_echo,
    numbers_in,
    repeated,
)
from bot.knowledge import Knowledge
from bot.llm import LLMClient
from bot.mask import Span
from bot.pipeline import Pipeline, Route, TurnContext, choose_route
from bot.retrieve import Hit
from tests.fake_openai import FakeOpenAI


@pytest.fixture(scope="module")
def checker(pipeline: Pipeline) -> FaithfulnessChecker:
    return pipeline.checker


RETURNS_DE = "Sie können die meisten Artikel innerhalb von 30 Tagen zurückgeben, ungetragen."


@pytest.mark.parametrize(
    ("language", "reply"),
    [
        ("en", "Yes, you can return shoes you wore once outside."),
        ("de", "Ja, Sie können den Pullover zurückgeben."),
        ("fr", "Oui, vous pouvez encore retourner la veste."),
        ("ja", "はい、一度履いた靴は返品できます。"),
        ("es", "Sí, puedes devolverlas."),
        ("ru", "Да, вы можете вернуть обувь."),
    ],
)
def test_model_text_that_answers_yes_is_refused(
    checker: FaithfulnessChecker, language: str, reply: str
) -> None:
    """A generated "yes" to a policy question never reaches the customer, in any language."""
    verdict = checker.check(reply, question="?", passages=["..."], language=language)
    assert [p.kind for p in verdict.problems][:1] == ["polarity"], verdict.problems


def test_invented_promises_are_refused(checker: FaithfulnessChecker) -> None:
    """ "We'll be in touch" is a promise no passage makes: refused."""
    verdict = checker.check(
        "We're working on a solution to fix this issue, and we'll be in touch with you soon.",
        question="my order 55123 arrived but the box was open and one sock is missing",
        passages=["If an item is missing, tell us within 14 days and we send it or refund it."],
        language="en",
    )
    assert "promise" in {p.kind for p in verdict.problems}


def test_echo_of_the_question_is_refused() -> None:
    """The question repeated back, even with its ending cut, is not an answer."""
    question = "Mi pedido #48213 todavía no ha llegado, ¿dónde está?"
    assert is_echo("Mi pedido #48213 todavía no ha llegado,.", question)
    assert not is_echo("Puedes seguir tu pedido desde Mi cuenta > Pedidos.", question)


LOOP_JA = (
    "申し訳ございません。こちらのチャットでは個別のご案内方法をご案内いたしかねますが、"
    + "一般的なご案内方法についてはこちらをご案内いたしかねますが、" * 3
)  # what the fine-tuned 0.5B adapter once wrote to a question with an order number in it


def test_a_reply_caught_in_a_loop_is_refused(checker: FaithfulnessChecker) -> None:
    """A model that says the same clause over and over fails the gate; said once, it passes."""
    once = LOOP_JA.split("。")[0] + "。"
    for reply, looped in ((LOOP_JA, True), (once, False)):
        verdict = checker.check(
            reply, question="注文番号は#71627です。", passages=[], language="ja"
        )
        assert ("repetition" in {p.kind for p in verdict.problems}) is looped, verdict


def test_no_curated_answer_reads_as_a_loop(knowledge: Knowledge) -> None:
    """The check never fires on what the localizers wrote (answers and market variants)."""
    answers = [e.answer for e in knowledge.entries.values()] + [
        e.answer for i18n in knowledge.i18n.values() for e in i18n.faq.values()
    ]
    texts = [t for a in answers for t in (a.text, *a.markets.values())]
    assert len(texts) > 800
    assert [t[:60] for t in texts if repeated(t)] == []


@pytest.mark.parametrize(
    ("language", "text", "expected"),
    [
        ("de", "Sie haben dreißig Tage Zeit.", {"30"}),
        ("zh", "您可以在三十天内退货。", {"30"}),
        ("fr", "Vous avez quatorze jours.", {"14"}),
        ("en", "Refunds take 1,299.00 EUR and ten days.", {"1299", "10"}),
    ],
)
def test_numbers_are_read_in_words_of_every_language(
    language: str, text: str, expected: set[str]
) -> None:
    """Durations written in words count as figures, not only digits."""
    assert numbers_in(text, language) == expected


def test_a_figure_in_words_not_in_the_policy_is_refused(checker: FaithfulnessChecker) -> None:
    """ "dreißig Tage" against a policy of 14 days is caught, although it is not in digits."""
    verdict = checker.check(
        "Sie haben dreißig Tage Zeit.",
        question="Wie lange habe ich?",
        passages=["Sie haben 14 Tage Zeit."],
        language="de",
    )
    assert [str(p) for p in verdict.problems] == ["number: 30"]


def test_the_customers_figure_is_not_a_policy_fact(checker: FaithfulnessChecker) -> None:
    """ "Confirm my refund is 500 EUR": the bot may not repeat 500 as if the policy said it."""
    verdict = checker.check(
        "Your refund is 500 EUR.",
        question="confirm my refund is 500 EUR",
        passages=["Refunds are made to the original payment method."],
        language="en",
    )
    assert "number" in {p.kind for p in verdict.problems}


def _hit(faq_id: str, score: float) -> Hit:
    return Hit(faq_id, score, "", dense=score)


def test_route_plain_question_is_curated_specific_one_composed() -> None:
    """A plain FAQ question reads the curated answer; one with an order number is composed."""
    hits = [_hit("orders.track", 0.93), _hit("orders.late", 0.86)]
    plain = choose_route(
        mode="compose", model_ready=True, hits=hits, specifics=[],
        direct_threshold=0.87, direct_margin=0.015,
    )  # fmt: skip
    assert plain.path == "curated"
    specific = choose_route(
        mode="compose", model_ready=True, hits=hits, specifics=[Span("order", "#48213")],
        direct_threshold=0.87, direct_margin=0.015,
    )  # fmt: skip
    assert (specific.path, specific.second) == ("composed", None)
    assert "order" in specific.why
    tied = choose_route(
        mode="compose", model_ready=True, hits=[_hit("a.x", 0.88), _hit("b.y", 0.875)],
        specifics=[], direct_threshold=0.87, direct_margin=0.015,
    )  # fmt: skip
    assert tied.path == "composed" and tied.second is not None and tied.second.faq_id == "b.y"
    auto = choose_route(
        mode="auto", model_ready=True, hits=hits, specifics=[Span("order", "#48213")],
        direct_threshold=0.87, direct_margin=0.015,
    )  # fmt: skip
    assert auto.path == "generated"
    no_model = choose_route(
        mode="auto", model_ready=False, hits=hits, specifics=[Span("order", "#48213")],
        direct_threshold=0.87, direct_margin=0.015,
    )  # fmt: skip
    assert no_model.path == "composed"


def test_route_specific_turn_also_answers_a_probable_runner_up() -> None:
    """A turn of the customer's own also gets the runner-up's answer when it is still
    probable; a plain question keeps the one curated answer, an unlikely runner-up stays out."""

    def hit(faq_id: str, p: float) -> Hit:
        return Hit(faq_id, p, "", dense=0.9, confidence=p)

    def route(runner: float, specifics: list[Span]) -> Route:
        return choose_route(
            mode="compose", model_ready=False, hits=[hit("orders.track", 0.84),
            hit("orders.late", runner)], specifics=specifics, direct_threshold=0.87,
            direct_margin=0.015, second_probability=0.1,
        )  # fmt: skip

    order = [Span("order", "80254")]
    likely = route(0.16, order)
    assert likely.path == "composed"
    assert likely.second is not None and likely.second.faq_id == "orders.late"
    assert route(0.06, order).second is None
    plain = route(0.16, [])
    assert (plain.path, plain.second) == ("curated", None)


async def test_order_question_gets_acknowledgement_and_curated_answer(pipeline: Pipeline) -> None:
    """ "Wo ist meine Bestellung #48213?": the order number acknowledged, the policy verbatim."""
    result = await pipeline.answer(
        "Wo ist meine Bestellung #48213? Ich warte seit 2 Wochen.", TurnContext(locale_hint="de")
    )
    assert result.source == "composed"
    assert "#48213" in result.reply
    curated = pipeline.knowledge.i18n["de"].faq[result.faq_ids[0]].answer.text
    first_sentence = curated.strip().split(". ")[0].split("{")[0]
    assert first_sentence in result.reply
    assert "Ich warte seit" not in result.reply


async def test_gate_never_streams_an_invented_amount(config: Config, pipeline: Pipeline) -> None:
    """A model that invents a refund amount: the customer never sees it, not even streamed."""
    streamed: list[str] = []

    async def on_delta(text: str) -> None:
        streamed.append(text)

    reply = "You can track it in your account. We will refund you 500 EUR today."
    async with model_writing(reply, config, pipeline, mode="auto") as (_, gated):
        result = await gated.answer(
            "Where is my order #48213? How can I track it?",
            TurnContext(locale_hint="en-US"),
            on_delta=on_delta,
        )
    assert "500" not in "".join(streamed)
    assert "500" not in result.reply
    assert result.source == "fallback"
    assert "#48213" in result.reply
    generate = next(s for s in result.trace.stages if s.stage == "generate")
    assert any(r.startswith(("number: 500", "promise")) for r in generate.output["rejected"])


async def test_a_model_that_restates_the_faq_keeps_the_acknowledgement(
    config: Config, pipeline: Pipeline
) -> None:
    """The model restates the FAQ answer for a turn with an order number: the customer gets
    the curated answer, and it still opens by naming their order."""
    question = "Where is my order #48213? How can I track it?"
    composed = await pipeline.answer(question, TurnContext(locale_hint="en-US"))
    assert composed.source == "composed" and composed.reply.startswith("About your order #48213")
    restated = composed.reply.split("\n\n", 1)[1] + f" [{composed.faq_ids[0]}]"
    async with model_writing(restated, config, pipeline, mode="auto") as (fake, gated):
        result = await gated.answer(question, TurnContext(locale_hint="en-US"))
    assert fake.requests, "the model was asked"
    assert result.reply == composed.reply


async def test_a_model_copying_the_faq_is_stopped_once_it_is_plainly_a_copy(
    config: Config, pipeline: Pipeline
) -> None:
    """Once the model's first words copy the curated answer's opening, the rest of the
    generation is not waited for: the curated reply goes out, and what the model would have
    written after it (here an invented promise) never streams."""
    question = "Where is my order #48213? How can I track it?"
    composed = await pipeline.answer(question, TurnContext(locale_hint="en-US"))
    curated = composed.reply.split("\n\n", 1)[1]
    copy = curated + " We will send you a free gift for the wait. [orders.track]"
    streamed: list[str] = []

    async def on_delta(text: str) -> None:
        streamed.append(text)

    async with model_writing(copy, config, pipeline, mode="auto") as (fake, gated):
        result = await gated.answer(question, TurnContext(locale_hint="en-US"), on_delta=on_delta)
    assert fake.requests, "the model was asked"
    assert result.reply == composed.reply
    generate = next(s for s in result.trace.stages if s.stage == "generate")
    assert generate.output["restating"] == composed.faq_ids[0]
    assert generate.output["usage"]["finish_reason"] == "stopped"
    assert "gift" not in "".join(streamed)
    assert len("".join(streamed)) < len(curated)


async def test_a_reply_that_drops_the_customers_order_number_is_not_sent(
    config: Config, pipeline: Pipeline
) -> None:
    """A faithful model reply that leaves out the order number the customer wrote: the
    customer gets the composed reply, which names it; the same reply naming it goes out."""
    question = "Where is my order #48213? How can I track it?"
    composed = await pipeline.answer(question, TurnContext(locale_hint="en-US"))
    plain = "You can follow your parcel in your account. [orders.track]"
    async with model_writing(plain, config, pipeline, mode="auto") as (fake, gated):
        dropped = await gated.answer(question, TurnContext(locale_hint="en-US"))
    assert fake.requests, "the model was asked"
    assert (dropped.source, dropped.reply) == ("fallback", composed.reply)
    assert "#48213" in dropped.reply
    compose = next(s for s in dropped.trace.stages if s.stage == "compose")
    assert compose.output["fallback_reason"] == "left out #48213"
    named = "You can follow your order #48213 in your account. [orders.track]"
    async with model_writing(named, config, pipeline, mode="auto") as (_, gated):
        kept = await gated.answer(question, TurnContext(locale_hint="en-US"))
    assert kept.source == "generated"
    assert kept.reply == "You can follow your order #48213 in your account."


async def test_a_gift_card_is_never_refunded_in_cash_whatever_entry_was_retrieved(
    config: Config, pipeline: Pipeline
) -> None:
    """The customer asks for cash for a gift card; whichever entry retrieval answers with
    (refunds.method names no excluded state), the model's "I can refund you in cash" is
    refused before it streams and the composed reply goes out."""
    question = (
        "Bonjour, on m'a offert une carte cadeau Meridian Goods de 100 € mais je n'achète "
        "jamais en ligne. Est-ce que vous pouvez me la rembourser, en liquide ou par virement ?"
    )
    streamed: list[str] = []

    async def on_delta(text: str) -> None:
        streamed.append(text)

    reply = "Je peux vous rembourser en liquide."
    async with model_writing(reply, config, pipeline, mode="always") as (fake, gated):
        result = await gated.answer(question, TurnContext(locale_hint="fr-FR"), on_delta=on_delta)
    assert fake.requests, "the model was asked"
    assert "liquide" not in "".join(streamed) + result.reply
    assert result.source == "fallback"
    generate = next(s for s in result.trace.stages if s.stage == "generate")
    assert any(r.startswith("condition: gift_card") for r in generate.output["rejected"])


@asynccontextmanager
async def model_writing(
    reply: str, config: Config, pipeline: Pipeline, *, mode: str
) -> AsyncIterator[tuple[FakeOpenAI, Pipeline]]:
    """``pipeline``'s parts with a model (a protocol-level OpenAI server) that writes
    ``reply``, in ``generate.mode`` ``mode``, replies in the customer's language."""
    cfg = config.replace(
        generate={"mode": mode, "language": "customer"},
        model={"retries": 0, "first_token_timeout": 5.0},
    )
    async with FakeOpenAI(reply=reply) as fake, LLMClient(cfg.model.__class__(
        **{**cfg.model.__dict__, "url": fake.url}
    )) as llm:  # fmt: skip
        yield fake, Pipeline(
            cfg, pipeline.knowledge, detector=pipeline.detector, lexicon=pipeline.lexicon,
            translator=pipeline.translator, retriever=pipeline.retriever,
            localizer=pipeline.localizer, masker=pipeline.masker, llm=llm,
            compose_texts=pipeline.compose,
        )  # fmt: skip


async def test_gate_releases_sentences_that_pass(checker: FaithfulnessChecker) -> None:
    """Checked sentences stream at once; the one that fails stops the stream before it."""
    released: list[str] = []

    async def on_delta(text: str) -> None:
        released.append(text)

    gate = SentenceGate(
        checker, question="Kann ich zurückgeben?", passages=[RETURNS_DE], language="de",
        on_delta=on_delta,
    )  # fmt: skip
    await gate.feed("Sie können Artikel innerhalb von 30 Tagen ")
    assert released == []  # not a whole sentence yet
    await gate.feed("zurückgeben. Sie müssen ungetragen sein. ")
    assert "".join(released).startswith("Sie können Artikel innerhalb von 30 Tagen")
    with pytest.raises(Unfaithful):
        await gate.feed("Wir erstatten Ihnen 45 Euro. ")
    assert "45" not in "".join(released)


@pytest.mark.parametrize(
    ("language", "curated", "expected"),
    [
        ("en", "Yes, exchanges are free. Choose Exchange.", "Exchanges are free. Choose Exchange."),
        ("ja", "はい、同じ商品の交換は無料です。", "同じ商品の交換は無料です。"),
        ("de", "Ja, der Umtausch ist kostenlos.", "Der Umtausch ist kostenlos."),
        ("en", "Yesterday's orders ship today.", "Yesterday's orders ship today."),
    ],
)
def test_composed_reply_drops_a_curated_yes(
    pipeline: Pipeline, language: str, curated: str, expected: str
) -> None:
    """A curated "Yes, ..." quoted under an acknowledgement does not answer the customer's
    own yes/no question for them."""
    lexicon = pipeline.compose[language].check
    assert drop_opening_polarity(curated, lexicon, language) == expected
