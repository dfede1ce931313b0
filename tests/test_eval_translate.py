"""`bot eval translate` and the console's translation path for agents' replies."""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bot.agent_translate import (
    AgentTranslator,
    ExamplePicker,
    agreement,
    join_sentences,
    mask_pair,
    split_sentences,
)
from bot.config import Config
from bot.evals import translate
from bot.knowledge import Knowledge
from bot.llm import LLMClient
from bot.localize import Localizer, locality_for
from bot.mask import Masker
from bot.translate import TranslationMemory, Translator, normalize
from tests.conftest import DATA, LANGUAGES
from tests.engine_plugin import ENGINE_MODEL

CASES = DATA / "translate"
TARGETS = [lang for lang in LANGUAGES if lang != "en"]


@pytest.fixture(scope="module")
def masker(knowledge: Knowledge) -> Masker:
    return Masker(knowledge.glossary)


@pytest.mark.parametrize("split", ["dev", "test"])
def test_every_launch_language_has_a_reference_for_every_sentence(split: str) -> None:
    """Both splits hold the same English sentences and one reference per launch language."""
    data = translate.load_split(CASES / split)
    assert sorted(data) == sorted(LANGUAGES)
    assert len(data["en"]) >= (15 if split == "test" else 20)
    cases = translate.load_cases(CASES / split)
    assert len(cases) == len(TARGETS) * len(data["en"])
    assert all(c.reference.strip() and c.reference != c.text for c in cases)


@pytest.mark.parametrize("split", ["dev", "test"])
def test_references_keep_every_protected_span(split: str, masker: Masker) -> None:
    """Order numbers, links, e-mails and brand names stand verbatim in every reference;
    amounts keep their digits (written the locale's way)."""
    for case in translate.load_cases(CASES / split):
        for span in masker.find(case.text):
            if span.kind == "price":
                digits = re.sub(r"\D", "", span.text)
                assert digits in re.sub(r"\D", "", case.reference), (case.id, case.language)
            else:
                assert span.text in case.reference, (case.id, case.language, span.text)


def test_test_sentences_are_not_in_the_dev_memory() -> None:
    """No test sentence is close enough to a dev one for the memory to answer it: the agent
    path's figures come from translating, not from looking up."""
    dev = [normalize(t) for t in translate.load_split(CASES / "dev")["en"].values()]
    for text in translate.load_split(CASES / "test")["en"].values():
        key = normalize(text)
        best = max(difflib.SequenceMatcher(None, key, d).ratio() for d in dev)
        assert best < 0.8, text


def test_the_test_split_carries_placeholders_of_every_kind(masker: Masker) -> None:
    """Agent-style sentences: order numbers, amounts, links, e-mails and brand names."""
    kinds = {
        s.kind for t in translate.load_split(CASES / "test")["en"].values() for s in masker.find(t)
    }
    assert {"order", "price", "url", "email", "term"} <= kinds


def test_sentences_split_at_sentence_ends_only() -> None:
    """Dots inside links and amounts do not end a sentence; each line is split on its own."""
    text = "I've refunded €24.90 via https://meridiangoods.com/returns. It takes 3 days!\nThanks"
    assert split_sentences(text) == [
        "I've refunded €24.90 via https://meridiangoods.com/returns.",
        "It takes 3 days!",
        "Thanks",
    ]
    assert split_sentences("no end") == ["no end"]
    assert join_sentences(["一。", "二。"], "ja") == "一。二。"
    assert join_sentences(["Eins.", "Zwei."], "de") == "Eins. Zwei."


def test_example_pairs_are_masked_with_matching_tokens(masker: Masker) -> None:
    """The same span gets the same token on both sides, amounts in either locale format."""
    pair = mask_pair(
        masker,
        "Your refund of €49.95 for order #60517 is done.",
        "Die Erstattung über 49,95 € für Bestellung #60517 ist erledigt.",
    )
    assert pair == (
        "Your refund of {1} for order {2} is done.",
        "Die Erstattung über {1} für Bestellung {2} ist erledigt.",
    )
    assert mask_pair(masker, "Order #1234 shipped.", "Die Bestellung wurde versandt.") is None


def test_the_closest_example_stands_next_to_the_sentence() -> None:
    """Examples are the most similar approved pairs, least similar first, never the sentence
    itself, never one that shares only common words."""
    pairs = [
        ("Your refund was processed on Monday.", "A"),
        ("Thank you for contacting us!", "B"),
        ("Your parcel is at the pickup point.", "C"),
        ("Your refund will reach your PayPal account.", "D"),
    ]
    query = "Your refund of {1} was processed today."
    chosen = ExamplePicker(shots=2, min_score=0.1).pick(pairs, ("en", "de"), query)
    assert [t for _, t in chosen] == ["D", "A"]
    # By default a pair sharing little more than "your" is left out.
    assert [t for _, t in ExamplePicker(shots=2).pick(pairs, ("en", "de"), query)] == ["A"]
    picker = ExamplePicker(shots=2)
    assert picker.pick(pairs, ("en", "de"), "Thank you for contacting us!") == []


def test_back_translation_agreement_separates_a_right_reading_from_a_wrong_one() -> None:
    """chrF++ of the back-translation: high for the same meaning, low for another one."""
    original = "Your order #48213 left our warehouse yesterday."
    assert agreement("Your order #48213 left our warehouse yesterday.", original) > 90
    assert agreement("Please pack the shoes in the original box.", original) < 30


def test_scores_report_and_files(tmp_path: Path) -> None:
    """Perfect outputs score 100, empty ones 0; the report, JSON, Markdown and PNG are written."""
    cases = (
        translate.load_cases(CASES / "test", ["de", "ja"])[:4]
        + translate.load_cases(CASES / "test", ["ja"])[:2]
    )
    outputs = []
    for case in cases:
        outputs.append(translate.Output(case, "raw", None, 10.0, 1, 0))
        outputs.append(translate.Output(case, "agent", case.reference, 20.0, 1, 1, "llm"))
    table = translate.rows(outputs)
    de = next(r for r in table if r.language == "de")
    assert de.chrf["agent"] == pytest.approx(100.0) and de.chrf["raw"] == 0.0
    assert de.kept == {"raw": 0.0, "agent": 1.0} and de.failed["raw"] == 4
    assert not translate.passed(table)  # the ratio is undefined against a raw score of 0
    text = translate.report(table)
    assert "\nde " in text and "\nja " in text and "\nmean " in text
    paths = translate.write(outputs, table, tmp_path, {"split": "test"})
    data = json.loads(paths[0].read_text("utf-8"))
    assert len(data["outputs"]) == len(outputs)
    assert "| de |" in paths[1].read_text("utf-8")
    assert paths[2].read_bytes().startswith(b"\x89PNG\r\n\x1a\n")


def test_lost_placeholder_is_a_warning(knowledge: Knowledge, masker: Masker) -> None:
    """A translation missing the order number warns the agent; the amount written the
    customer's way does not."""
    translator = Translator(knowledge, masker, TranslationMemory(), None)
    agent = AgentTranslator(translator)
    where = locality_for(knowledge, "de")
    localizer = Localizer(knowledge)

    def render(kind: str, span: str) -> str:
        return localizer.reformat_amount(span, where) if kind == "price" else span

    text = "Your refund of €24.90 for order #48213 is done."
    amount = render("price", "€24.90")
    assert amount != "€24.90"
    spans = masker.find(text)
    ok = agent.lost(
        spans, f"Ihre Erstattung über {amount} für Bestellung #48213 ist erledigt.", render
    )
    assert ok == []
    lost = agent.lost(spans, f"Ihre Erstattung über {amount} ist erledigt.", render)
    assert [(n.code, n.message) for n in lost] == [("placeholder_lost", "#48213")]


def test_an_agent_model_the_bot_cannot_serve_stops_the_run(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`--agent-model` naming no known model and no URL ends the run at once, saying why,
    before any engine starts."""
    from bot.cli import main

    assert main(["eval", "translate", "--agent-model", "gpt-4o", "--lang", "de", "--quiet"]) == 2
    assert "console.translate_model 'gpt-4o' is neither a URL" in capsys.readouterr().err


# -- with the real model (the session's llama.cpp engine) ------------------------------------


@pytest.fixture(scope="module")
async def agent(
    config: Config, knowledge: Knowledge, llm_engine: str
) -> AsyncIterator[AgentTranslator]:
    cfg = config.replace(
        model={"url": llm_engine, "served_name": ENGINE_MODEL, "adapter": "",
               "read_timeout": 120.0, "first_token_timeout": 60.0},
    )  # fmt: skip
    masker = Masker(knowledge.glossary)
    memory = TranslationMemory.from_knowledge(knowledge)
    for language, text, reference in translate.pairs(CASES / "dev"):
        memory.add("en", language, text, reference)
    async with LLMClient(cfg.model) as llm:
        yield AgentTranslator(Translator(knowledge, masker, memory, llm))


@pytest.mark.slow
async def test_agent_reply_reaches_the_customer_in_german_with_its_placeholders(
    agent: AgentTranslator,
) -> None:
    """Two sentences with an order number and a link come out in German, spans intact,
    with the examples the memory offered."""
    text = (
        "Sorry for the delay with your order #51234. "
        "You can follow your parcel at https://meridiangoods.com/track."
    )
    out = await agent.translate(text, "en", "de", check=True)
    assert out.engine == "llm" and out.sentences == 2 and out.shots > 0
    assert "#51234" in out.text and "https://meridiangoods.com/track" in out.text
    assert "Bestellung" in out.text or "Paket" in out.text
    assert out.back is not None and out.agreement is not None
    assert not [w for w in out.warnings if w.code == "placeholder_lost"]
    again = await agent.translate(text, "en", "de")
    assert again.text == out.text and again.back == out.back
    assert again.ms < 50  # sending after the preview costs no second translation


@pytest.mark.slow
async def test_a_wrong_translation_reads_back_as_disagreeing(agent: AgentTranslator) -> None:
    """Back-translating a German text that says something else scores under the warning
    threshold; the right one scores above it."""
    original = "Please pack the shoes in their original box and include the return slip."
    _, wrong = await agent.back_translate(
        "Ihre Bestellung wurde gestern an DHL übergeben.", "de", "en", original
    )
    _, right = await agent.back_translate(
        "Bitte verpacken Sie die Schuhe im Originalkarton und legen Sie den Rücksendeschein bei.",
        "de", "en", original,
    )  # fmt: skip
    assert wrong < agent.min_agreement <= right
