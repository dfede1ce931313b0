"""`bot eval replies` on a pinned subset: replies to turn-specific questions stay faithful."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bot.cli import main
from bot.evals import replies
from bot.pipeline import Pipeline
from tests.conftest import LANGUAGES

CASES = Path(__file__).parent / "data" / "replies"


@pytest.fixture(scope="module")
def cases() -> list[replies.Case]:
    return replies.load_cases(CASES)


def test_development_set_covers_every_language_and_kind(cases: list[replies.Case]) -> None:
    """12 cases a language, with "no" and "yes" policy questions and order numbers in each."""
    for language in LANGUAGES:
        mine = [c for c in cases if c.language == language]
        assert len(mine) >= 12, language
        kinds = {c.kind for c in mine}
        assert {"yes_no_no", "yes_no_yes", "damaged"} <= kinds, (language, kinds)
    assert len({c.id for c in cases}) == len(cases)


async def test_composed_replies_never_contradict_the_entry_they_quote(
    pipeline: Pipeline, cases: list[replies.Case]
) -> None:
    """On a pinned subset (3 a language): no echo, no invented promise, no free generation;
    whenever the bot found the right entry its reply states the deciding fact and contradicts
    nothing; where it was unsure it said so (no answer, the offer of a person)."""
    scores = await replies.run(pipeline, replies.subset(cases, 3), progress=False)
    assert {s.source for s in scores} <= {"composed", "curated", "message"}
    assert all(s.abstained for s in scores if s.source == "message")
    assert not [s.case for s in scores if s.echo or s.promise]
    found = [s for s in scores if s.right_faq]
    assert found  # how often retrieval finds it is measured by `bot eval retrieval`
    assert not [(s.case, s.contradiction, s.missing_fact) for s in found if not s.faithful]
    assert not [s.case for s in scores if s.specifics_missing]


def test_cli_prints_the_table_and_writes_the_scores(tmp_path: Path, capsys: object) -> None:
    """`bot eval replies --engine none` prints rates per language and source, and a JSON file."""
    out = tmp_path / "replies.json"
    code = main(
        ["eval", "replies", "--engine", "none", "--lang", "de", "--subset", "2", "--quiet",
         "--out", str(out)]
    )  # fmt: skip
    assert code in (0, 1)
    printed = capsys.readouterr().out  # type: ignore[attr-defined]
    assert "by language" in printed and "by source" in printed and "contradiction" in printed
    data = json.loads(out.read_text())
    assert data["summary"]["language"]["de"]["n"] == 2
    harmful = [
        c
        for c in data["cases"]
        if c["contradiction"] or c["echo"] or c["promise"]
        or (not c["abstained"] and c["missing_fact"])
    ]  # fmt: skip
    assert code == (1 if harmful else 0)
