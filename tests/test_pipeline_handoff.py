"""Handoff in a conversation: the offer of a person is answered, not searched in the FAQ."""

from __future__ import annotations

import pytest

from bot.handoff import Asked
from bot.pipeline import Pipeline, TurnContext, TurnResult


async def _conversation(pipeline: Pipeline, texts: list[str], hint: str) -> list[TurnResult]:
    context = TurnContext(locale_hint=hint)
    results = []
    for text in texts:
        result = await pipeline.answer(text, context)
        results.append(result)
        context.language = result.language
        context.no_answer_streak = 0 if result.answered else context.no_answer_streak + 1
        context.offer_pending = pipeline.offers_human(result.reply)
        context.earlier.append(Asked(text, result.faq_ids[0] if result.faq_ids else None))
    return results


OFF_TOPIC = {
    "de": "Wie wird das Wetter morgen in Berlin?",
    "en": "Can you tell me a joke about penguins?",
    "fr": "Quelle est la capitale de l'Australie ?",
    "ja": "明日の東京の天気はどうですか？",
    "ko": "내일 서울 날씨 어때요?",
    "ar": "ما هي عاصمة أستراليا؟",
    "es": "¿Cuál es la capital de Australia?",
}


@pytest.mark.parametrize(
    ("language", "answer"),
    [("de", "Nein"), ("en", "no thanks"), ("fr", "non merci"), ("ja", "いいえ、結構です"),
     ("ko", "아니요 괜찮아요"), ("ar", "لا شكرا")],
)  # fmt: skip
async def test_declining_the_offer_of_a_person_is_understood(
    pipeline: Pipeline, language: str, answer: str
) -> None:
    """ "Nein" after "shall I connect you?" gets "no problem", not an FAQ or a handoff."""
    first, second = await _conversation(pipeline, [OFF_TOPIC[language], answer], language)
    assert not first.answered and pipeline.offers_human(first.reply)
    assert not second.handoff
    assert second.faq_ids == []
    assert second.reply == pipeline.knowledge.message("offer_declined", language)


async def test_accepting_the_offer_hands_off(pipeline: Pipeline) -> None:
    """ "sí, por favor" after the offer hands the conversation to the team, with the reason."""
    _, second = await _conversation(pipeline, [OFF_TOPIC["es"], "sí, por favor"], "es")
    assert second.handoff and second.handoff_reason == "customer_request"


async def test_question_marks_are_not_frustration(pipeline: Pipeline) -> None:
    """ "where is my order???" then "hi": both answered, no handoff."""
    first, second = await _conversation(pipeline, ["where is my order???", "hi"], "en")
    assert not first.handoff and not second.handoff
    assert first.faq_ids and first.faq_ids[0].startswith("orders.")
    assert second.source == "message"
