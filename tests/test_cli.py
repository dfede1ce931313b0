"""The `bot` command as a user runs it: JSON lines on stdout, errors on stderr."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bot.cli import main
from bot.detect import LanguageDetector
from bot.knowledge import Knowledge
from bot.retrieve import META_FILE, index_is_current

ROOT = Path(__file__).resolve().parent.parent


def run_bot(*args: str, stdin: str = "", check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    proc = subprocess.run(
        [sys.executable, "-m", "bot.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
        check=False,
    )
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def lines(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stdout.splitlines() if line.strip()]


def test_detect_reads_lines_and_prints_json(index_dir: Path) -> None:
    """`bot detect` prints {text, language, confidence} for each input line."""
    out = lines(run_bot("detect", stdin="hola\n谢谢\nWo ist meine Bestellung?\nmerci\n"))
    assert [o["language"] for o in out] == ["es", "zh", "de", "fr"]
    assert all(set(o) >= {"text", "language", "confidence"} for o in out)


ASK = [
    ("¿Cuánto tarda en llegar un pedido a España?", "es", "shipping.delivery_times"),
    ("Wie kann ich meine Bestellung zurückschicken?", "de", "returns.start"),
    ("Comment puis-je suivre mon colis ?", "fr", "orders.track"),
    ("我想取消订单", "zh", "orders.cancel"),
    ("パスワードを忘れました", "ja", "account.password"),
    ("Ik wil mijn wachtwoord opnieuw instellen", "nl", "account.password"),
]


def test_ask_answers_in_the_customers_language(
    index_dir: Path, detector: LanguageDetector, knowledge: Knowledge
) -> None:
    """Each question gets its FAQ's curated answer, in the asker's language, with a trace."""
    out = lines(run_bot("ask", "--engine", "none", stdin="".join(q + "\n" for q, _, _ in ASK)))
    assert len(out) == len(ASK)
    for result, (question, language, faq_id) in zip(out, ASK, strict=True):
        assert result["text"] == question
        assert result["language"] == language
        assert result["faq_ids"][:1] == [faq_id], (question, result["faq_ids"])
        assert detector.detect(result["reply"]).language == language, result["reply"]
        assert result["handoff"] is False
        stages = [s["stage"] for s in result["trace"]]
        assert stages[:3] == ["detect", "translate_in", "retrieve"]
        assert all(s["ms"] >= 0 for s in result["trace"])


def test_ask_formats_amounts_for_the_locale(index_dir: Path) -> None:
    """Shipping costs read 4,95 € for a German shopper and $ for an American one."""
    de = lines(run_bot("ask", "--engine", "none", "--lang", "de-DE", "Was kostet der Versand?"))[0]
    us = lines(run_bot("ask", "--engine", "none", "--lang", "en-US", "How much is shipping?"))[0]
    assert de["faq_ids"][:1] == ["shipping.costs"] and us["faq_ids"][:1] == ["shipping.costs"]
    assert "€" in de["reply"] and "," in de["reply"].split("€")[0][-6:]
    assert "$" in us["reply"] and "€" not in us["reply"]


def test_off_topic_question_gets_no_faq_and_an_offer_of_help(
    index_dir: Path, knowledge: Knowledge
) -> None:
    """'What is the weather in Paris' is not answered with an FAQ."""
    result = lines(run_bot("ask", "--engine", "none", "What is the weather in Paris tomorrow?"))[0]
    assert result["faq_ids"] == []
    assert result["reply"] == knowledge.message("no_answer", "en")


def test_asking_for_a_human_hands_off(index_dir: Path) -> None:
    """'Ich möchte mit einem Mitarbeiter sprechen' hands the conversation to a person."""
    result = lines(run_bot("ask", "--engine", "none", "Ich möchte mit einem Mitarbeiter sprechen"))[
        0
    ]
    assert result["handoff"] is True
    assert result["language"] == "de"


def test_market_flag_changes_the_policy_variant(index_dir: Path) -> None:
    """EU shoppers read about their 14-day withdrawal right; US shoppers do not."""
    q = "What is your return policy?"
    eu = lines(run_bot("ask", "--engine", "none", "--market", "EU", q))[0]
    us = lines(run_bot("ask", "--engine", "none", "--market", "US", q))[0]
    assert "14" in eu["reply"] and "14-day" not in us["reply"]


def test_bad_usage_exits_non_zero_with_a_message_on_stderr() -> None:
    """An unsupported target language is an error, not an empty result."""
    proc = run_bot("translate", "--to", "xx", "--engine", "none", "hello", check=False)
    assert proc.returncode != 0
    assert "unsupported" in proc.stderr
    assert proc.stdout == ""


@pytest.fixture(scope="module")
def detector(config: Any) -> LanguageDetector:
    return LanguageDetector(config.shop.languages, config.detect)


def test_index_is_rebuilt_only_when_knowledge_changed(
    index_dir: Path, knowledge: Knowledge, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second `bot index` (every `make run`) takes a second, not a minute of embedding;
    an index of other knowledge, or none, is not taken for current."""
    assert main(["index", "--quiet"]) == 0
    assert "is current" in capsys.readouterr().err
    copy = tmp_path / "index"
    shutil.copytree(index_dir, copy)
    assert index_is_current(copy, knowledge)
    meta = json.loads((copy / META_FILE).read_text("utf-8"))
    (copy / META_FILE).write_text(json.dumps({**meta, "fingerprint": "other"}), "utf-8")
    assert not index_is_current(copy, knowledge)
    assert not index_is_current(tmp_path / "missing", knowledge)


def test_data_erase_and_purge_from_the_command_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`bot data erase --email` and `bot data purge` report what they deleted."""
    import asyncio

    from bot.config import DatabaseConfig
    from bot.store import Store

    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"

    async def seed() -> None:
        async with Store(DatabaseConfig(url=url)) as store:
            await store.upgrade()
            conv, _ = await store.create_conversation(language="en")
            await store.accept_message(conv.id, "m1", "mail me at ann@example.com")

    asyncio.run(seed())
    assert main(["data", "erase", "--email", "ann@example.com", "--db", url]) == 0
    assert "erased 1 conversation(s)" in capsys.readouterr().err
    assert main(["data", "purge", "--older-than-days", "30", "--db", url]) == 0
    assert "purged 0 conversation(s)" in capsys.readouterr().err
    assert main(["data", "purge", "--db", url]) == 2  # no retention configured: refused
