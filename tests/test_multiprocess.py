"""Two real `bot serve` processes sharing one PostgreSQL database and one Redis: a customer
on one and an agent on the other talk normally, a message is answered once, and killing a
process loses nothing stored."""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from bot.auth import hash_password
from bot.config import DatabaseConfig
from bot.frames import STORED_EVENTS
from bot.store import Store
from bot.translate import normalize
from tests.test_console import PASSWORD, QUESTION_ES, REPLY_EN, REPLY_ES, Agent, login
from tests.test_multiprocess_bus import redis_url
from tests.test_server import TIMEOUT, Client
from tests.test_store import PG_ADMIN_URL, _run_sql, postgres

__all__ = ["postgres", "redis_url"]  # fixtures used here

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [pytest.mark.slow, pytest.mark.postgres]  # two server start-ups


@dataclass
class Server:
    """One `bot serve` process: what the console helpers need (``url``) and its log."""

    proc: subprocess.Popen[bytes]
    url: str
    log: Path

    @property
    def chat_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/ws/chat"

    @property
    def agent_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + "/ws/agent"


def serve(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "bot.cli", "serve", "--no-engine", "--port", "0"]
    with log.open("wb") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=out, stdout=subprocess.DEVNULL)


def ready(proc: subprocess.Popen[bytes], log: Path) -> Server:
    deadline = time.monotonic() + 12 * TIMEOUT
    while time.monotonic() < deadline and proc.poll() is None:
        match = re.search(r"serving (http://\S+)/ ", log.read_text("utf-8", "replace"))
        if match:
            return Server(proc, match.group(1), log)
        time.sleep(0.2)
    proc.kill()
    pytest.fail("bot serve did not start:\n" + log.read_text("utf-8", "replace")[-3000:])


def empty_database(postgres: str) -> str:
    """The session's PostgreSQL database, emptied: its URL."""
    _run_sql(postgres, "DROP SCHEMA public CASCADE", "CREATE SCHEMA public")
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + postgres


@dataclass
class Cluster:
    a: Server
    b: Server
    db_url: str


@pytest.fixture(scope="module")
def cluster(
    postgres: str, redis_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Processes A and B on one freshly migrated PostgreSQL database and one Redis, with
    agents marta and pablo, and an approved translation of the agents' reply."""
    url = empty_database(postgres)

    async def prepare() -> None:
        async with Store(DatabaseConfig(url=url)) as store:
            await store.upgrade()
            for name in ("marta", "pablo"):
                await store.add_agent(name, hash_password(PASSWORD))
            await store.add_translation(
                "en", "es", REPLY_EN, REPLY_ES, key=normalize(REPLY_EN), origin="agent",
                approved_by="marta",
            )  # fmt: skip

    asyncio.run(prepare())
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    env |= {
        "BOT_DATABASE__URL": url,
        "BOT_BUS__REDIS_URL": redis_url,
        "BOT_BUS__PREFIX": f"bot-test-{secrets.token_hex(4)}",
    }
    logs = tmp_path_factory.mktemp("serve")
    procs = [serve(env, logs / f"{name}.log") for name in ("a", "b")]
    try:
        a, b = (ready(proc, logs / f"{name}.log") for proc, name in zip(procs, "ab", strict=True))
        yield Cluster(a, b, url)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@asynccontextmanager
async def customer(server: Server) -> AsyncIterator[Client]:
    async with connect(server.chat_url, open_timeout=TIMEOUT) as ws:
        yield Client(ws)


@asynccontextmanager
async def agent_on(server: Server, name: str) -> AsyncIterator[Agent]:
    """Agent ``name`` logged in to ``server``'s console, past ``ready`` and the first queue."""
    status, cookie, body = await login(server, name)  # type: ignore[arg-type]
    assert status == 200, body
    async with connect(
        server.agent_url,
        origin=server.url,  # type: ignore[arg-type]
        additional_headers={"Cookie": cookie},
        open_timeout=TIMEOUT,
    ) as ws:
        agent = Agent(ws)
        await agent.send(type="hello", v=1, csrf=body["csrf"])
        assert (await agent.recv())["type"] == "ready"
        await agent.expect("queue")
        yield agent


async def handed_off(client: Client) -> tuple[str, str]:
    """A Spanish customer asks a question, then for a human: (conversation id, token)."""
    await client.send(type="hello", v=1, locale="es-ES")
    welcome = await client.recv()
    await client.ask("m1", QUESTION_ES)
    await client.send(type="handoff.request")
    await client.until("system")
    return str(welcome["conversation"]), str(welcome["resume"])


async def queued(agent: Agent, cid: str) -> dict[str, Any]:
    """The queue entry of ``cid`` once the agent's queue shows it."""
    while True:
        queue = await agent.expect("queue")
        for entry in queue["conversations"]:
            if entry["conversation"] == cid:
                return dict(entry)


def stored(frames: list[dict[str, Any]]) -> list[tuple[str, int]]:
    return [(f["type"], f["seq"]) for f in frames if f["type"] in STORED_EVENTS]


def increasing(frames: list[dict[str, Any]]) -> bool:
    seqs = [f["seq"] for f in frames if "seq" in f and f["type"] != "welcome"]
    return all(x < y for x, y in itertools.pairwise(seqs))


async def test_two_desks_tell_a_customer_waiting_too_long_once(postgres: str) -> None:
    """Both processes' desks find the same handoff waiting too long at the same moment:
    the customer is told "nobody is free yet" once, not twice."""
    url = empty_database(postgres)
    async with Store(DatabaseConfig(url=url)) as one, Store(DatabaseConfig(url=url)) as two:
        await one.upgrade()
        waiting, told = [], []
        for _ in range(5):  # both desks look at once, again and again
            conv, _ = await one.create_conversation(language="es", locale="es-ES")
            await one.request_handoff(conv.id, "customer_request")
            waiting.append(conv.id)
            found = await asyncio.gather(*(s.overdue_handoffs(timedelta(0)) for s in (one, two)))
            told += found[0] + found[1]
    assert sorted(told) == sorted(waiting)


async def test_two_agents_on_two_processes_claiming_at_once_only_one_wins(
    cluster: Cluster,
) -> None:
    """Marta on A and Pablo on B click "claim" together: one owns the conversation, the
    other is told it is taken; both saw it arrive in their queue."""
    a, b = cluster.a, cluster.b
    async with customer(a) as client, agent_on(a, "marta") as marta, agent_on(b, "pablo") as pablo:
        cid, _ = await handed_off(client)
        for agent in (marta, pablo):
            assert (await queued(agent, cid))["reason"] == "customer_request"
        await asyncio.gather(
            *(agent.send(type="claim", conversation=cid) for agent in (marta, pablo))
        )

        async def outcome(agent: Agent) -> str:
            while True:
                frame = await agent.recv()
                if frame["type"] == "transcript" and frame["conversation"] == cid:
                    return "owner" if frame["owner"] else "reader"
                if frame["type"] == "error":
                    return str(frame["code"])

        results = await asyncio.gather(outcome(marta), outcome(pablo))
        await client.until("agent.joined")
        await client.until("system")
        await client.quiet(1.0)
    assert sorted(results) == ["already_claimed", "owner"]
    assert sum(f["type"] == "agent.joined" for f in client.frames) == 1


async def test_a_customer_on_a_and_an_agent_on_b_then_a_is_killed(cluster: Cluster) -> None:
    """A Spanish customer on process A hands off; Marta, on process B, claims and replies in
    English and the customer reads it in Spanish; typing shows both ways; while both
    processes write at once every socket gets its events in seq order. A message both
    processes hold is answered once. Then A is killed (-9): the customer resumes on B with
    the full history, and the next question gets exactly one answer."""
    a, b = cluster.a, cluster.b
    async with customer(a) as client, agent_on(b, "marta") as marta:
        cid, token = await handed_off(client)
        await queued(marta, cid)
        await marta.send(type="claim", conversation=cid)
        assert (await marta.expect("transcript", conversation=cid))["owner"] is True
        await client.until("system")  # "Marta has joined"

        await client.send(type="typing")
        await marta.expect("customer.typing", conversation=cid)
        await marta.send(type="typing", conversation=cid)
        typing = await client.recv()
        assert (typing["type"], typing["who"]) == ("typing", "agent")

        await marta.send(type="message", conversation=cid, text=REPLY_EN, id="r1")
        sent = await marta.expect("sent", id="r1")
        assert await client.recv() == {
            "type": "agent.message", "seq": sent["seq"], "text": REPLY_ES,
            "agent": "marta", "lang": "es",
        }  # fmt: skip

        # Both processes number the conversation's events at the same moment.
        async def customer_writes() -> None:
            for n in range(4):
                await client.send(type="message", id=f"c{n}", text=f"Gracias, ¿y el pedido {n}?")

        async def marta_writes() -> None:
            for n in range(4):
                await marta.send(type="typing", conversation=cid)
                await marta.send(type="message", conversation=cid, text=REPLY_EN, id=f"r{n + 2}")

        await asyncio.gather(customer_writes(), marta_writes())
        await receive_until(
            client,
            lambda: count(client.frames, "agent.message") >= 5 and count(client.frames, "ack") >= 5,
            "5 agent messages and 5 acks",
        )
        # Marta's console follows it all: the customer's messages (annotated in A) too.
        await receive_until(
            marta,
            lambda: (
                count(marta.frames, "sent") >= 5 and count(marta.frames, "transcript.changed") >= 4
            ),
            "5 sent and 4 transcript.changed",
        )
        events = [f["event"] for f in marta.frames if f["type"] == "conversation.event"]
        assert increasing(events), [e["seq"] for e in events]
        # Marta types after the customer wrote on A: her typing still shows.
        await client.send(type="message", id="c9", text="¿Hola?")
        await client.until("ack")
        await marta.send(type="typing", conversation=cid)
        typing = await client.recv()
        assert (typing["type"], typing["who"]) == ("typing", "agent")
        await marta.send(type="release", conversation=cid)
        await marta.expect("released", conversation=cid)
        await client.until("agent.left")
        await client.until("system")

        token = await answered_once_by_two_processes(cluster, client, cid, token)
        a.proc.kill()  # -9: no goodbye, no drain
        a.proc.wait()
        assert isinstance(await client.closed(), ConnectionClosed)
    assert increasing(client.frames), [f.get("seq") for f in client.frames]

    async with customer(b) as again:
        await again.send(type="hello", v=1, locale="es-ES", resume=token, last_seq=0)
        welcome = await again.recv()
        history = [await again.recv() for _ in stored(client.frames)]
        await again.quiet(0.5)
        replies = await again.ask("m9", QUESTION_ES)
        await again.quiet(1.0)
    b.proc.send_signal(signal.SIGTERM)
    assert b.proc.wait(timeout=TIMEOUT) == 0  # B stops cleanly, Redis connection included
    assert welcome["conversation"] == cid
    assert stored(history) == stored(client.frames)  # all that A's socket saw, in order
    assert count(replies, "reply") == 1
    assert replies[-1]["faq_ids"][0] == "returns.start"


async def answered_once_by_two_processes(
    cluster: Cluster, client: Client, cid: str, token: str
) -> str:
    """The customer (on A) asks; A is paused (SIGSTOP) the moment the message is stored;
    a second tab resumes on B, which finds it unanswered and takes it up too. A goes on:
    one reply, the same in both tabs. Returns the latest resume token."""
    a, b = cluster.a, cluster.b
    for attempt in range(3):
        mid = f"dup{attempt}"
        await client.send(type="message", id=mid, text=QUESTION_ES)
        await client.until("ack")
        a.proc.send_signal(signal.SIGSTOP)
        try:
            async with Store(DatabaseConfig(url=cluster.db_url)) as store:
                found = await store.message(cid, mid)
            raced = found is not None and not found.replied
            async with customer(b) as tab:
                await tab.send(type="hello", v=1, locale="es-ES", resume=token, last_seq=0)
                token = str((await tab.recv())["resume"])
                await asyncio.sleep(0.5)  # B's turn for the message starts, and waits for A's
                a.proc.send_signal(signal.SIGCONT)
                await receive_until(tab, answered(tab, mid), "a reply")
                await tab.quiet(1.0)
        finally:
            a.proc.send_signal(signal.SIGCONT)
        await receive_until(client, answered(client, mid), "a reply")
        await client.quiet(1.0)
        if raced:
            assert replies_to(tab.frames, mid) == replies_to(client.frames, mid)
            assert len(replies_to(client.frames, mid)) == 1
            return token
    pytest.fail("A answered three times before B could see the message: no race to check")


async def receive_until(peer: Client, done: Callable[[], bool], what: str) -> None:
    """Read ``peer``'s frames until ``done()``, under one deadline for them all: frames that
    keep coming must not stretch a per-frame timeout forever."""
    try:
        async with asyncio.timeout(3 * TIMEOUT):
            while not done():
                await peer.recv()
    except TimeoutError:
        pytest.fail(f"no {what} within {3 * TIMEOUT} s: {[f['type'] for f in peer.frames]}")


def answered(peer: Client, mid: str) -> Callable[[], bool]:
    return lambda: bool(replies_to(peer.frames, mid))


def replies_to(frames: list[dict[str, Any]], mid: str) -> list[int]:
    return [f["seq"] for f in frames if f["type"] == "reply" and f.get("reply_to") == mid]


def count(frames: list[dict[str, Any]], kind: str) -> int:
    return sum(f["type"] == kind for f in frames)
