"""Resume tokens rotate on every welcome, expire after an idle time and can be revoked:
a real server on port 0, real websockets clients, a migrated SQLite database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import update

from bot.config import DatabaseConfig, load_config
from bot.errors import ConfigError
from bot.store import Store, retention
from bot.store.models import Conversation, utcnow
from tests.test_server import FACTOR, Client, chat

ROOT = Path(__file__).resolve().parent.parent
GRACE = 1.0 * FACTOR


async def refused(client: Client, token: str) -> dict[str, Any]:
    """Resume with ``token`` and expect ``bad_resume``: the error frame."""
    await client.send(type="hello", v=1, locale="en", resume=token, last_seq=0)
    frame = await client.recv()
    assert (frame["type"], frame["code"]) == ("error", "bad_resume"), frame
    return frame


async def age(url: str, conversation: str, seconds: float) -> None:
    """The conversation's last activity ``seconds`` ago (as if nobody came back since)."""
    async with Store(DatabaseConfig(url=url)) as store, store._write() as session:
        await session.execute(
            update(Conversation)
            .where(Conversation.id == conversation)
            .values(updated_at=utcnow() - timedelta(seconds=seconds))
        )


async def test_every_welcome_hands_out_a_new_token_and_retires_the_old(start: Any) -> None:
    """Each resume gets a new token; the replaced one still works for the grace (a lost
    welcome), retrying with it does not extend that, and after it it is refused."""
    async with start(resume_token_grace=GRACE) as app:
        async with chat(app) as c:
            first = await c.hello("en")
            await c.ask("m1", "How do I return an item?")
        async with chat(app) as c:
            second = await c.hello("en", resume=first["resume"], last_seq=0)
        assert second["conversation"] == first["conversation"]
        assert second["resume"] != first["resume"]
        async with chat(app) as c:  # that welcome was lost: the client still has the first
            third = await c.hello("en", resume=first["resume"], last_seq=0)
        assert third["conversation"] == first["conversation"]
        assert len({first["resume"], second["resume"], third["resume"]}) == 3
        await asyncio.sleep(GRACE + 0.2)
        async with chat(app) as c:
            assert (await refused(c, first["resume"]))["reason"] == "replaced"
            assert (await refused(c, second["resume"]))["reason"] == "unknown"  # superseded
            fourth = await c.hello("en", resume=third["resume"], last_seq=0)
            replayed = await c.until("reply")  # the whole conversation
        assert fourth["conversation"] == first["conversation"]
        assert [f["type"] for f in replayed] == ["ack", "reply"]


async def test_a_token_expires_after_the_idle_time(start: Any, db_url: str) -> None:
    """A conversation idle past resume_token_ttl cannot be resumed: bad_resume, reason
    expired, and the client can start a new conversation on the same socket."""
    async with start(resume_token_ttl=3600.0) as app:
        async with chat(app) as c:
            welcome = await c.hello("en")
        await age(db_url, welcome["conversation"], 3599)
        async with chat(app) as c:  # still within the idle time: resumes (and rotates)
            welcome = await c.hello("en", resume=welcome["resume"], last_seq=0)
        await age(db_url, welcome["conversation"], 3601)
        async with chat(app) as c:
            frame = await refused(c, welcome["resume"])
            assert frame["reason"] == "expired"
            assert frame["message"]
            fresh = await c.hello("en")  # the socket stays: a new conversation
        assert fresh["conversation"] != welcome["conversation"]


async def test_revoked_and_erased_conversations_cannot_be_resumed(start: Any, db_url: str) -> None:
    """`bot data revoke --conversation ID` ends every token of that conversation (the
    current one and the one in its grace); an erased conversation's token is unknown."""
    async with start() as app:
        async with chat(app) as c:
            first = await c.hello("en")
        async with chat(app) as c:
            second = await c.hello("en", resume=first["resume"], last_seq=0)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "bot.cli", "data", "revoke", "--db", db_url,
             "--conversation", first["conversation"]],
            cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert "revoked the resume tokens of 1 conversation" in done.stderr
        async with chat(app) as c:
            assert (await refused(c, second["resume"]))["reason"] == "revoked"
            assert (await refused(c, first["resume"]))["reason"] == "unknown"
            other = await c.hello("en")
        await retention.erase(app.store, [other["conversation"]])
        async with chat(app) as c:
            assert (await refused(c, other["resume"]))["reason"] == "unknown"


async def test_the_store_rotates_atomically_and_keeps_only_hashes(db_url: str) -> None:
    """Two hellos with the same token at once both resume (one as the grace token) and
    get different tokens; no token is stored in clear."""
    async with Store(DatabaseConfig(url=db_url)) as store:
        conv, token = await store.create_conversation(language="en")
        a, b = await asyncio.gather(
            store.resume(token, idle_ttl=60, grace=60), store.resume(token, idle_ttl=60, grace=60)
        )
        assert a.conversation is not None and b.conversation is not None
        assert a.token != b.token
        assert await store.find_by_resume(token) is None  # no longer the current one
        async with store._session() as session:
            row = await session.get(Conversation, conv.id)
        assert row is not None
        assert {row.resume_hash, row.resume_prev_hash}.isdisjoint({token, a.token, b.token})
        assert (await store.resume("r_" + "x" * 200, idle_ttl=60, grace=60)).refused == "unknown"


def test_the_resume_token_settings_shipped_in_config_toml() -> None:
    """Out of the box a token expires after 7 idle days and a replaced one works 60 s."""
    server = load_config(ROOT / "config.toml", environ={}).server
    assert (server.resume_token_ttl, server.resume_token_grace) == (604800.0, 60.0)
    environ = {"BOT_SERVER__RESUME_TOKEN_TTL": "0", "BOT_SERVER__RESUME_TOKEN_GRACE": "5"}
    server = load_config(ROOT / "config.toml", environ=environ).server
    assert (server.resume_token_ttl, server.resume_token_grace) == (0.0, 5.0)


@pytest.mark.parametrize("key", ["RESUME_TOKEN_TTL", "RESUME_TOKEN_GRACE"])
def test_a_negative_token_time_stops_start_up(key: str) -> None:
    """A negative idle time or grace is refused at start-up, naming the setting."""
    with pytest.raises(ConfigError, match=key.lower()):
        load_config(ROOT / "config.toml", environ={f"BOT_SERVER__{key}": "-1"})
