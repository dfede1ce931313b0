"""The knowledge base is complete: every FAQ curated in every launch language."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

from bot.knowledge import TEMPLATE, TOPICS, Knowledge
from tests.conftest import LANGUAGES

# A time of day written by hand (8:00, 20.00, 8 h, 14 Uhr, 2 p.m., 14時, 下午2点, 오후 2시,
# 8:00 صباحًا ...): opening hours come from {hours:KEY}, other times from {time:KEY}.
HAND_TYPED_TIME = re.compile(
    r"\d{1,2}[:.：]\d{2}(?!\d)"
    r"|\b\d{1,2}\s?(?:h|Uhr|[ap]\.?\s?m\.?)(?![\w/])"
    r"|\d{1,2}\s?(?:時|点|시)(?![間间간])"
    r"|(?:午前|午後|上午|下午|中午|晚上|오전|오후)\s?\d"
    r"|\d{1,2}\s?(?:صباحًا|صباحا|مساءً|مساء|ظهرًا|ظهرا)"
    r"|الساعة\s?\d",
    re.IGNORECASE,
)


def curated_texts(knowledge: Knowledge) -> Iterator[tuple[str, str]]:
    """(where, text) for every text the bot shows verbatim, market variants included."""
    for entry in knowledge.entries.values():
        yield f"faq {entry.id}", entry.answer.text
        for market, text in entry.answer.markets.items():
            yield f"faq {entry.id} [{market}]", text
    for loc in knowledge.i18n.values():
        for key, text in {**loc.messages, **loc.ui}.items():
            yield f"i18n/{loc.language} {key}", text
        for faq_id, localized in loc.faq.items():
            yield f"i18n/{loc.language} {faq_id}", localized.answer.text
            for market, text in localized.answer.markets.items():
                yield f"i18n/{loc.language} {faq_id} [{market}]", text


def test_faq_covers_every_topic_with_enough_entries(knowledge: Knowledge) -> None:
    """At least 60 entries, spread over all ten topics."""
    assert len(knowledge.entries) >= 60
    per_topic = Counter(e.topic for e in knowledge.entries.values())
    assert set(per_topic) == set(TOPICS)
    assert min(per_topic.values()) >= 5


def test_every_language_has_every_curated_answer(knowledge: Knowledge) -> None:
    """A customer in any launch language reads a curated answer, never a machine one."""
    for lang in LANGUAGES:
        if lang == "en":
            continue
        loc = knowledge.i18n[lang]
        assert set(loc.faq) == set(knowledge.entries), lang
        for faq_id, entry in knowledge.entries.items():
            localized = loc.faq[faq_id]
            assert set(localized.answer.markets) == set(entry.answer.markets), (lang, faq_id)
            assert len(localized.questions) >= 3, (lang, faq_id)


def templates(text: str) -> set[tuple[str, str]]:
    return set(TEMPLATE.findall(text))


def test_localized_answers_keep_the_same_facts(knowledge: Knowledge) -> None:
    """Every template (amounts, measures, times, contact facts, opening hours) of the English
    answer is in each localized answer, and each market variant matches its English variant."""
    for loc in knowledge.i18n.values():
        for faq_id, localized in loc.faq.items():
            english = knowledge.entries[faq_id].answer
            where = (loc.language, faq_id)
            assert templates(localized.answer.text) == templates(english.text), where
            for market, text in english.markets.items():
                assert templates(localized.answer.markets[market]) == templates(text), (
                    *where,
                    market,
                )


def test_localized_messages_keep_the_same_templates(knowledge: Knowledge) -> None:
    """The bot's sentences carry the same facts and placeholders as English (handoff: e-mail,
    phone numbers and opening hours)."""
    english = knowledge.i18n["en"]
    placeholder = re.compile(r"\{[a-z_]+\}")
    for loc in knowledge.i18n.values():
        for key, text in english.messages.items():
            where = (loc.language, key)
            assert templates(loc.messages[key]) == templates(text), where
            assert set(placeholder.findall(loc.messages[key])) == set(placeholder.findall(text))
        for key, text in english.ui.items():
            assert set(placeholder.findall(loc.ui[key])) == set(placeholder.findall(text))


def test_opening_hours_come_from_the_shop_facts(knowledge: Knowledge) -> None:
    """Hours are data in shop.toml, used through {hours:KEY} wherever they are stated."""
    assert {"support", "phone_us"} <= set(knowledge.hours)
    assert not any("hours" in key for key in knowledge.contact), "hours as a raw contact string"
    for faq_id in ("contact.hours", "contact.phone"):
        assert {("hours", "support"), ("hours", "phone_us")} <= templates(
            knowledge.entries[faq_id].answer.text
        ), faq_id
    assert ("hours", "support") in templates(knowledge.message("handoff_started", "en"))


def test_no_curated_text_types_a_time_by_hand(knowledge: Knowledge) -> None:
    """No "8:00", "20.00 uur", "8 h", "14時" outside a template: a change in shop.toml must
    reach every language."""
    for where, text in curated_texts(knowledge):
        match = HAND_TYPED_TIME.search(TEMPLATE.sub("", text))
        assert match is None, (where, match and match.group())


def test_handoff_promises_a_reply_in_this_chat(knowledge: Knowledge) -> None:
    """Agents answer in the chat (the console): the handoff says so, with the support hours,
    and gives the e-mail address for when nobody is free."""
    for loc in knowledge.i18n.values():
        text = loc.messages["handoff_started"]
        assert {("hours", "support"), ("shop", "support_email")} <= templates(text), loc.language
    english = knowledge.message("handoff_started", "en")
    assert "reply right here" in english and "can't reply in this chat" not in english


def test_messages_and_ui_strings_exist_in_every_language(knowledge: Knowledge) -> None:
    """The bot's own sentences and the widget's labels are localized everywhere."""
    english = knowledge.i18n["en"]
    for lang in LANGUAGES:
        loc = knowledge.i18n[lang]
        assert set(loc.messages) >= set(english.messages), lang
        assert set(loc.ui) >= set(english.ui), lang


def test_glossary_terms_survive_in_localized_answers(knowledge: Knowledge) -> None:
    """Brand names are never translated."""
    for faq_id, entry in knowledge.entries.items():
        for term in ("MeriPoints", "MeriPass", "SwiftBox", "TrailFlex", "CloudKnit", "HomeNest"):
            if term in entry.answer.text:
                for loc in knowledge.i18n.values():
                    if loc.language != "en":
                        assert term in loc.faq[faq_id].answer.text, (loc.language, faq_id, term)


def test_locales_declare_register_market_and_direction(knowledge: Knowledge) -> None:
    """Each language says how to address the customer and where it sells by default."""
    assert set(knowledge.languages) == set(LANGUAGES)
    for settings in knowledge.languages.values():
        assert settings.register in {"formal", "informal"}
        assert settings.market in knowledge.markets
    assert knowledge.languages["ar"].direction == "rtl"
    assert knowledge.languages["de"].pronoun == "Sie"
    assert knowledge.languages["ko"].style == "합니다체"
    assert knowledge.languages["ja"].style == "です・ます体"
