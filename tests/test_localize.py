"""Localization: CLDR formats, the market's currency, the locale's units."""

from __future__ import annotations

import pytest

from bot.knowledge import Knowledge
from bot.localize import Localizer, locality_for


def test_amount_formatted_per_locale() -> None:
    """1299.5 EUR reads 1.299,50 € in Germany and €1,299.50 in the US."""
    assert Localizer.money(1299.5, "EUR", "de_DE") == "1.299,50\xa0€"
    assert Localizer.money(1299.5, "EUR", "en_US") == "€1,299.50"
    assert Localizer.money(1299.5, "EUR", "fr_FR") == "1\u202f299,50\xa0€"
    assert Localizer.money(7000, "JPY", "ja_JP") == "￥7,000"


@pytest.mark.parametrize(
    ("language", "hint", "market", "currency_sign"),
    [
        ("de", None, "EU", "€"),
        ("en", "en-GB", "UK", "£"),
        ("en", None, "US", "$"),
        ("ja", None, "JP", "￥"),
        ("pt", "pt-BR", "BR", "R$"),
        ("ko", None, "KR", "₩"),
    ],
)
def test_templates_render_in_the_markets_currency(
    knowledge: Knowledge, language: str, hint: str | None, market: str, currency_sign: str
) -> None:
    """Curated answers show the customer's market's amounts, never a template."""
    where = locality_for(knowledge, language, locale_hint=hint)
    assert where.market == market
    text = Localizer(knowledge).curated("shipping.costs", where)
    assert text is not None and "{money:" not in text
    assert currency_sign in text


def test_explicit_market_wins_over_language(knowledge: Knowledge) -> None:
    """A Spanish speaker shopping in the US market sees dollars."""
    where = locality_for(knowledge, "es", market="US")
    text = Localizer(knowledge).curated("shipping.costs", where) or ""
    assert "US$" in text or "$" in text
    assert "€" not in text


def test_units_follow_the_locale(knowledge: Knowledge) -> None:
    """US English gets inches; German gets centimetres."""
    loc = Localizer(knowledge)
    us = loc.render("{length:locker_max_length}", locality_for(knowledge, "en"))
    de = loc.render("{length:locker_max_length}", locality_for(knowledge, "de"))
    assert us.endswith("in") and de.endswith("cm")


@pytest.mark.parametrize(
    ("written", "language", "expected"),
    [
        ("€49.90", "de", "49,90\xa0€"),
        ("$1,299.00", "fr", "1\u202f299,00\xa0$US"),
        ("1.299,50 €", "en", "€1,299.50"),
        ("¥7,000", "ja", "￥7,000"),
    ],
)
def test_amounts_written_in_text_are_reformatted(
    knowledge: Knowledge, written: str, language: str, expected: str
) -> None:
    """An amount the model or customer wrote is shown the locale's way."""
    where = locality_for(knowledge, language)
    assert Localizer(knowledge).reformat_amount(written, where) == expected


def test_register_is_respected_in_curated_answers(knowledge: Knowledge) -> None:
    """German answers address the customer with Sie, never du."""
    import re

    for faq_id, entry in knowledge.i18n["de"].faq.items():
        assert not re.search(r"\b(du|dein|deine|dich|dir)\b", entry.answer.text), faq_id
    for faq_id, entry in knowledge.i18n["fr"].faq.items():
        assert not re.search(r"\b(tu|ton|ta|tes|toi)\b", entry.answer.text), faq_id
