"""`bot eval retrieval`: figures per language, a JSON report and a curve PNG."""

from __future__ import annotations

import json
from pathlib import Path

from bot.evals import retrieval
from bot.pipeline import Pipeline
from tests.conftest import DATA, LANGUAGES


def test_development_sets_hold_20_cases_per_language_with_unanswerable_ones() -> None:
    """Every launch language has >= 20 dev questions, some of which no FAQ answers."""
    cases = retrieval.load_cases([DATA / "retrieval_dev"])
    for language in LANGUAGES:
        mine = [c for c in cases if c.language == language]
        assert len(mine) >= 20, language
        assert any(not c.faq for c in mine), language


def test_dev_ids_exist(pipeline: Pipeline) -> None:
    """Every FAQ id named by a development case is a real entry."""
    cases = retrieval.load_cases(retrieval.DEFAULT_SETS)
    known = set(pipeline.knowledge.entries)
    assert {i for c in cases for i in c.faq} <= known


def test_eval_reports_figures_and_writes_json_and_png(pipeline: Pipeline, tmp_path: Path) -> None:
    """A run over a few languages prints a row per language and writes both files."""
    cases = retrieval.load_cases([DATA / "retrieval_dev"], ["en", "ja"])
    outcomes = retrieval.run(pipeline.retriever, cases, progress=False)
    text = retrieval.report(outcomes)
    assert "\nen " in text and "\nja " in text and "[retrieval_dev]" in text
    json_path, png = retrieval.write(outcomes, tmp_path)
    data = json.loads(json_path.read_text("utf-8"))
    assert data["rows"][0]["name"] == "all" and data["curve"]
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    points = retrieval.curve(outcomes)
    assert all(0 <= cov <= 1 and 0 <= p <= 1 for _, cov, p in points)
