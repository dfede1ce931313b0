"""Card numbers, IBANs, e-mail addresses and phone numbers never reach a model or a trace."""

from __future__ import annotations

import json

import pytest

from bot.config import Config
from bot.llm import LLMClient
from bot.pipeline import Pipeline, TurnContext
from bot.redact import iban_ok, luhn_ok, redact
from tests.fake_openai import FakeOpenAI


@pytest.mark.parametrize(
    ("text", "kinds", "gone"),
    [
        ("Meine Karte 4242 4242 4242 4242 wurde doppelt belastet", ("card",), "4242 4242"),
        ("Mi IBAN es ES91 2100 0418 4502 0005 1332, devolvedme ahí", ("iban",), "2100 0418"),
        ("écrivez-moi à marie.dupont@gmail.com ou au 06 12 34 56 78", ("email", "phone"), "@"),
        ("電話は090-1234-5678です", ("phone",), "1234-5678"),
        ("010-1234-5678로 연락 주세요", ("phone",), "1234-5678"),
        ("мой номер +7 912 345-67-89, карта 5555555555554444", ("card", "phone"), "345-67"),
        ("رقمي 0501234567 والبريد ahmed@example.ae", ("email", "phone"), "0501234567"),
        ("我的手机 138 0013 8000", ("phone",), "0013"),
    ],
)
def test_personal_data_is_marked_out_in_every_language(
    text: str, kinds: tuple[str, ...], gone: str
) -> None:
    """What a customer pastes by mistake is replaced by a mark before anything reads it."""
    result = redact(text)
    assert sorted(result.kinds) == sorted(kinds)
    assert gone not in result.text


@pytest.mark.parametrize(
    "text",
    [
        "Wo ist meine Bestellung #48213? Ich habe 1.299,00 € bezahlt.",
        "order ORD-2024-88123, SKU 4471-XL, tracking 1Z999AA10123456784",
        "tracking 123456789012 shipped on 2024-05-01",
        "Does this shirt fit a person who is 1.90 m?",
        "price 1 299 000 KRW, card ending 4242",
        "4242 4242 4242 4241",  # not Luhn-valid: not a card
    ],
)
def test_shop_data_is_left_alone(text: str) -> None:
    """Order, tracking and SKU numbers, amounts and dates are not personal data."""
    assert redact(text).text == text


def test_checksums() -> None:
    """Only real card numbers and IBANs count."""
    assert luhn_ok("4242424242424242") and not luhn_ok("4242424242424241")
    assert iban_ok("DE89 3704 0044 0532 0130 00") and not iban_ok("DE89 3704 0044 0532 0130 01")


async def test_the_model_and_the_trace_never_see_a_card_number(
    config: Config, pipeline: Pipeline
) -> None:
    """A customer's card number reaches neither the model's requests nor the stored trace."""
    cfg = config.replace(generate={"mode": "auto"}, model={"retries": 0})
    text = "I was charged twice on my card 4242 4242 4242 4242 for order #48213, why?"
    async with FakeOpenAI(reply="Refunds go back to the original payment method.") as fake:
        async with LLMClient(cfg.replace(model={"url": fake.url}).model) as llm:
            gated = Pipeline(
                cfg, pipeline.knowledge, detector=pipeline.detector, lexicon=pipeline.lexicon,
                translator=pipeline.translator, retriever=pipeline.retriever,
                localizer=pipeline.localizer, masker=pipeline.masker, llm=llm,
                compose_texts=pipeline.compose,
            )  # fmt: skip
            result = await gated.answer(text, TurnContext(locale_hint="en-US"))
        assert fake.requests, "the model was asked"
        assert "4242 4242" not in json.dumps(fake.requests)
    assert result.text == text
    assert result.redacted is not None and "[card ••4242]" in result.redacted
    assert "4242 4242" not in json.dumps(result.as_json()["trace"])
    assert "#48213" in json.dumps(fake.requests)
