"""The conditions check of the faithfulness gate, in every launch language: a sentence that
grants a return, exchange, refund, cancellation or change for an item or order in a state the
policy excludes fails; the same fact negated or made conditional passes, and so does every
sentence of the shop's own curated answers."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from bot.compose import load_compose
from bot.faithful import FaithfulnessChecker, granted_state, split_sentences
from bot.knowledge import STATES, load_knowledge

ROOT = Path(__file__).resolve().parent.parent
KNOWLEDGE = ROOT / "knowledge"
CASES = ROOT / "tests" / "data" / "conditions"
LANGUAGES = ("en", "zh", "es", "fr", "de", "ja", "ko", "pt", "it", "ru", "ar", "nl")
COMPOSE = load_compose(KNOWLEDGE, LANGUAGES)


def cases(language: str) -> list[dict[str, object]]:
    data = tomllib.loads((CASES / f"{language}.toml").read_text("utf-8"))
    assert data["language"] == language
    return list(data["case"])


@pytest.mark.parametrize("language", LANGUAGES)
def test_every_language_has_the_lexicon_and_cases(language: str) -> None:
    lexicon = COMPOSE[language].check
    assert lexicon.grant and lexicon.negation
    assert set(lexicon.states) == set(STATES), language
    found = cases(language)
    assert sum(bool(c["flag"]) for c in found) >= 8
    assert sum(not c["flag"] for c in found) >= 8


@pytest.mark.parametrize("language", LANGUAGES)
def test_granting_an_excluded_state_fails_and_its_negation_passes(language: str) -> None:
    lexicon = COMPOSE[language].check
    wrong = []
    for case in cases(language):
        excluded = [str(s) for s in case["excluded"]]  # type: ignore[attr-defined]
        assert set(excluded) <= set(STATES)
        question = str(case.get("question", ""))
        flagged = granted_state(str(case["text"]), lexicon, excluded, question)
        if bool(flagged) != bool(case["flag"]):
            wrong.append((case["text"], flagged))
    assert not wrong


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_curated_answers_pass_their_own_conditions(language: str) -> None:
    """The policy's own sentences ("you can return items as long as they are unworn") must
    never trip the check of their entry."""
    knowledge = load_knowledge(KNOWLEDGE)
    lexicon = COMPOSE[language].check
    tripped = []
    for entry in knowledge.entries.values():
        if not entry.excludes:
            continue
        answer = entry.answer if language == "en" else knowledge.i18n[language].faq[entry.id].answer
        for text in (answer.text, *answer.markets.values()):
            for sentence in split_sentences(text):
                if found := granted_state(sentence, lexicon, entry.excludes):
                    tripped.append((entry.id, found, sentence))
    assert not tripped


def test_the_gate_reports_a_condition_problem() -> None:
    """Through the checker the gate uses: the worn-shoes reply fails as a condition."""
    checker = FaithfulnessChecker({k: v.check for k, v in COMPOSE.items()})
    passage = "You can return most items within 30 days, as long as they're unworn."
    verdict = checker.check(
        "Those shoes you wore once can be returned within 30 days.",
        question="Can I return shoes I wore once outside?",
        passages=[passage],
        language="en",
        excluded=("worn",),
    )
    assert [p.kind for p in verdict.problems] == ["condition"]
    elliptical = checker.check(
        "You can send them back within 30 days.",
        question="Can I return shoes I wore once outside?",
        passages=[passage],
        language="en",
        excluded=("worn",),
    )
    assert [p.kind for p in elliptical.problems] == ["condition"]
    assert checker.check(
        "Worn shoes can't be returned.",
        question="Can I return shoes I wore once outside?",
        passages=[passage],
        language="en",
        excluded=("worn",),
    ).ok
