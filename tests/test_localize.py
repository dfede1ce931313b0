"""Localization: CLDR formats, the market's currency, the locale's units."""

from __future__ import annotations

import dataclasses
import re
from datetime import time

import pytest

from bot.knowledge import TEMPLATE, Hours, Knowledge, Opening
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
    for faq_id, entry in knowledge.i18n["de"].faq.items():
        assert not re.search(r"\b(du|dein|deine|dich|dir)\b", entry.answer.text), faq_id
    for faq_id, entry in knowledge.i18n["fr"].faq.items():
        assert not re.search(r"\b(tu|ton|ta|tes|toi)\b", entry.answer.text), faq_id


def _bot_texts(knowledge: Knowledge, language: str) -> dict[str, str]:
    """Everything the bot itself says in a language: messages, widget labels, answers."""
    loc = knowledge.i18n[language]
    texts = {**loc.messages, **loc.ui}
    for faq_id, entry in loc.faq.items():
        texts[faq_id] = entry.answer.text
        texts.update({f"{faq_id} [{m}]": t for m, t in entry.answer.markets.items()})
    return texts


def test_korean_uses_one_style_throughout(knowledge: Knowledge) -> None:
    """Korean is 합니다체 everywhere (locales.toml `style`): no 해요체 sentence endings mixed in;
    requests keep the polite -(으)세요 / -아/어 주세요."""
    assert knowledge.languages["ko"].style == "합니다체"
    haeyo = re.compile(r"(?<!세)(?:[아어여워와봐돼해에예게까네나가데래대걸]요|죠)(?=[.!?…)\s]|$)")
    # the site's own labels, quoted as it shows them (‘비밀번호를 잊으셨나요?’), are not checked
    quoted = re.compile(r"‘[^’]*’")
    for where, text in _bot_texts(knowledge, "ko").items():
        match = haeyo.search(quoted.sub("", text))
        assert match is None, (where, match and match.group())


def test_japanese_addresses_the_customer_as_okyakusama(knowledge: Knowledge) -> None:
    """Never あなた (blunt in customer service), including the label of the customer's messages."""
    assert knowledge.ui("ja")["you"] == "お客様"
    for where, text in _bot_texts(knowledge, "ja").items():
        assert "あなた" not in text, where


@pytest.mark.parametrize(
    ("language", "hint", "key", "expected"),
    [
        ("de", None, "support", "Montag–Freitag 8:00–20:00 und Samstag 9:00–17:00 "
                                "(Mitteleuropäische Zeit)"),
        ("en", None, "phone_us", "Monday–Friday 8:00\u202fAM–6:00\u202fPM (Pacific Time)"),
        ("en", "en-GB", "phone_us", "Monday–Friday 8:00–18:00 (Pacific Time)"),
        ("ja", None, "support", "月曜日～金曜日 8:00～20:00、土曜日 9:00～17:00"
                                "（中央ヨーロッパ時間）"),
        ("fr", None, "phone_us", "lundi–vendredi 8:00–18:00 (heure du Pacifique nord-américain)"),
        ("ko", None, "phone_us", "월요일~금요일 오전 8:00~오후 6:00(미 태평양 시간)"),
    ],
)  # fmt: skip
def test_opening_hours_render_per_locale(
    knowledge: Knowledge, language: str, hint: str | None, key: str, expected: str
) -> None:
    """{hours:KEY}: CLDR weekday names, time format, range mark and time-zone name."""
    where = locality_for(knowledge, language, locale_hint=hint)
    assert Localizer(knowledge).render(f"{{hours:{key}}}", where) == expected


def test_opening_hours_follow_shop_toml(knowledge: Knowledge) -> None:
    """Change the hours in one place and every language's curated text follows."""
    weekdays_only = Hours(
        key="support",
        timezone="Europe/Amsterdam",
        openings=(Opening(first_day=0, last_day=4, opens=time(9), closes=time(17, 30)),),
    )
    changed = dataclasses.replace(knowledge, hours={**knowledge.hours, "support": weekdays_only})
    loc = Localizer(changed)
    de = loc.curated("contact.hours", locality_for(changed, "de")) or ""
    assert "Montag–Freitag 9:00–17:30 (Mitteleuropäische Zeit)" in de and "Samstag" not in de
    ja = loc.message("handoff_started", locality_for(changed, "ja"))
    assert "月曜日～金曜日 9:00～17:30（中央ヨーロッパ時間）" in ja and "土曜日" not in ja


def test_times_of_day_follow_the_locale(knowledge: Knowledge) -> None:
    """{time:KEY}: 2:00 PM in the US, 14:00 in Germany, 오후 2:00 in Korea."""
    loc = Localizer(knowledge)
    rendered = {
        lang: loc.render("{time:dispatch_cutoff}", locality_for(knowledge, lang))
        for lang in ("en", "de", "ko")
    }
    assert rendered == {"en": "2:00\u202fPM", "de": "14:00", "ko": "오후 2:00"}


def test_every_curated_text_renders_in_every_market(knowledge: Knowledge) -> None:
    """No template is left unfilled in any language and market (market variants included)."""
    loc = Localizer(knowledge)
    for language, localization in knowledge.i18n.items():
        for market in knowledge.markets:
            where = locality_for(knowledge, language, market=market)
            texts = [loc.message(key, where) for key in localization.messages]
            texts += [loc.curated(faq_id, where) or "" for faq_id in knowledge.entries]
            for text in texts:
                assert not TEMPLATE.search(text), (language, market, text)
                assert "{hours:" not in text and "{time:" not in text
