"""No customer text, token or personal data in the log at any level: `bot -v serve` (DEBUG)
holds a conversation with a card number, an e-mail address and a distinctive sentence, and
a database error on one message, and its log file is read afterwards."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect

from tests.test_server import TIMEOUT

ROOT = Path(__file__).resolve().parent.parent
CARD = "4111 1111 1111 1111"  # Luhn-valid
EMAIL = "marie.dupont@example.org"
SENTENCE = "Quokka lantern seventeen umbrella"
REFUSED = "zebra-crossing-ledger"  # the database refuses messages holding this

pytestmark = pytest.mark.slow  # two server start-ups


def serve(db_url: str, log: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    """`bot -v serve` with its stderr in ``log``; the process and its chat socket URL."""
    cmd = [sys.executable, "-m", "bot.cli", "-v", "serve", "--no-engine", "--port", "0",
           "--db", db_url]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=out, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 12 * TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        match = re.search(r"chat socket (ws://\S+)\)", log.read_text("utf-8", "replace"))
        if match:
            return proc, match.group(1)
        time.sleep(0.2)
    proc.kill()
    pytest.fail("bot serve did not start:\n" + log.read_text("utf-8", "replace")[-3000:])


async def converse(url: str) -> list[str]:
    """A conversation with personal data in it, a resume, and a message the database
    refuses; the resume tokens handed out."""

    async def frames_until(ws: object, kind: str) -> dict[str, object]:
        while True:
            frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))  # type: ignore[attr-defined]
            if frame["type"] == kind:
                return frame  # type: ignore[no-any-return]

    async with connect(url) as ws:
        await ws.send(json.dumps({"type": "hello", "v": 1, "locale": "en"}))
        welcome = await frames_until(ws, "welcome")
        for n, short in enumerate((CARD, EMAIL)):  # whole frames fit websockets' debug line
            await ws.send(json.dumps({"type": "message", "id": f"s{n}", "text": short}))
            await frames_until(ws, "reply")
        text = f"{SENTENCE}: charge my card {CARD}, write to {EMAIL}"
        await ws.send(json.dumps({"type": "message", "id": "m1", "text": text}))
        await frames_until(ws, "reply")
    async with connect(url) as ws:
        hello = {"type": "hello", "v": 1, "locale": "en", "resume": welcome["resume"]}
        await ws.send(json.dumps(hello | {"last_seq": 0}))
        again = await frames_until(ws, "welcome")
        text = f"{REFUSED} {SENTENCE} {CARD} {EMAIL}"
        await ws.send(json.dumps({"type": "message", "id": "m2", "text": text}))
        failed = await frames_until(ws, "error")
        assert failed["code"] == "internal", failed
    return [str(welcome["resume"]), str(again["resume"])]


def run(db_url: str, db_file: Path, log: Path, **env_extra: str) -> tuple[str, list[str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")} | env_extra
    proc, url = serve(db_url, log, env)
    try:
        with sqlite3.connect(db_file) as db:  # the database refuses one kind of message
            db.execute(
                "CREATE TRIGGER IF NOT EXISTS refuse BEFORE INSERT ON messages "
                f"WHEN NEW.original_text LIKE '%{REFUSED}%' "
                "BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
            )
        tokens = asyncio.run(converse(url))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    return log.read_text("utf-8", "replace"), tokens


def test_the_debug_log_holds_no_message_text_token_or_personal_data(
    db_url: str, tmp_path: Path
) -> None:
    """After a conversation with a card number and an e-mail address, at DEBUG, with a
    database error on a message, the log has none of them, nor the text or a token; the
    one switch, privacy.log_content, lets them in."""
    db_file = Path(db_url.split("///", 1)[1])
    text, tokens = run(db_url, db_file, tmp_path / "bot.log")
    assert " DEBUG " in text  # the log really is at DEBUG
    assert "refused by the test" in text  # the database error was logged
    secrets = [CARD, CARD.replace(" ", ""), EMAIL, SENTENCE, REFUSED, *tokens]
    leaked = [s for s in secrets if s in text]
    assert leaked == [], f"in the log: {leaked}"

    text, tokens = run(db_url, db_file, tmp_path / "content.log", BOT_PRIVACY__LOG_CONTENT="true")
    assert SENTENCE in text and CARD in text and EMAIL in text  # frames, SQL parameters
