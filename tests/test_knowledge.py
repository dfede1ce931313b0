"""The knowledge base is complete: every FAQ curated in every launch language."""

from __future__ import annotations

from collections import Counter

from bot.knowledge import TEMPLATE, TOPICS, Knowledge
from tests.conftest import LANGUAGES


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


def test_localized_answers_keep_the_same_facts(knowledge: Knowledge) -> None:
    """Amount and measurement templates are the same in the English and localized answers."""

    def facts(text: str) -> set[tuple[str, str]]:
        return {(k, v) for k, v in TEMPLATE.findall(text) if k != "shop" or "hours" not in v}

    for loc in knowledge.i18n.values():
        for faq_id, localized in loc.faq.items():
            english = knowledge.entries[faq_id].answer
            assert facts(localized.answer.text) == facts(english.text), (loc.language, faq_id)


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
