"""The chat server end to end: a real server on port 0 with the real pipeline, a fresh
SQLite database with the migrations applied, and a real websockets client."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bot.config import Config, DatabaseConfig
from bot.errors import SchemaOutOfDate
from bot.localize import locality_for
from bot.pipeline import Pipeline
from bot.server.admission import client_address
from bot.server.app import App
from bot.store import Store
from tests import test_store
from tests.test_store import PG_ADMIN_URL, _run_sql

ROOT = Path(__file__).resolve().parent.parent
FACTOR = float(os.environ.get("BOT_TEST_TIMEOUT_FACTOR", "1"))
TIMEOUT = 20 * FACTOR  # one frame; the first turn warms the embedder
RETURN_ES = "¿Cómo puedo devolver un artículo?"
postgres = test_store.postgres  # fixture: the session's PostgreSQL database


# -- fixtures and helpers ------------------------------------------------------------------


@pytest.fixture
async def app(start: Any) -> AsyncIterator[App]:
    async with start() as app:
        yield app


class Client:
    """A chat client that records every frame it receives."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.frames: list[dict[str, Any]] = []

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame, ensure_ascii=False))

    async def recv(self, wait: float = TIMEOUT) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), wait))
        self.frames.append(frame)
        return frame

    async def until(self, kind: str, wait: float = TIMEOUT) -> list[dict[str, Any]]:
        """Frames up to and including the first of type ``kind``."""
        got = []
        while True:
            frame = await self.recv(wait)
            got.append(frame)
            if frame["type"] == kind:
                return got

    async def quiet(self, seconds: float = 0.5) -> None:
        """Nothing arrives for ``seconds``."""
        try:
            frame = await self.recv(seconds)
        except TimeoutError:
            return
        pytest.fail(f"unexpected frame {frame}")

    async def closed(self) -> ConnectionClosed:
        """Receive until the server closes the socket."""
        try:
            while True:
                await self.recv()
        except ConnectionClosed as exc:
            return exc

    async def hello(self, locale: str = "es-ES", **fields: Any) -> dict[str, Any]:
        await self.send(type="hello", v=1, locale=locale, **fields)
        welcome = await self.recv()
        assert welcome["type"] == "welcome", welcome
        return welcome

    async def ask(self, message_id: str, text: str) -> list[dict[str, Any]]:
        await self.send(type="message", id=message_id, text=text)
        return await self.until("reply")


@asynccontextmanager
async def chat(app: App, **kwargs: Any) -> AsyncIterator[Client]:
    async with connect(app.chat_url, open_timeout=TIMEOUT, **kwargs) as ws:
        yield Client(ws)


async def http_get(app: App, path: str) -> tuple[int, dict[str, str], bytes]:
    def get() -> tuple[int, dict[str, str], bytes]:
        try:
            with urllib.request.urlopen(app.url + path, timeout=TIMEOUT) as r:
                return r.status, dict(r.headers), r.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    return await asyncio.to_thread(get)


def seqs_of(frames: list[dict[str, Any]]) -> list[int]:
    return [f["seq"] for f in frames if "seq" in f and f["type"] != "welcome"]


# -- conversation --------------------------------------------------------------------------


async def test_hello_starts_a_conversation(app: App) -> None:
    """The first hello gets a welcome with a new conversation, a resume token and seq 0."""
    async with chat(app) as client:
        welcome = await client.hello("es-MX")
    assert welcome["v"] == 1
    assert welcome["seq"] == 0
    assert welcome["lang"] == "es"
    assert welcome["conversation"].startswith("c_")
    assert welcome["resume"]


async def test_message_is_acked_then_answered_in_the_customers_language(
    app: App, pipeline: Pipeline
) -> None:
    """A Spanish question gets an ack, typing, and the curated Spanish returns answer."""
    async with chat(app) as client:
        await client.hello("es-ES")
        frames = await client.ask("m1", f"  {RETURN_ES} ")
    ack, typing, reply = frames
    assert ack == {"type": "ack", "seq": 1, "id": "m1", "text": RETURN_ES}
    assert typing == {"type": "typing", "seq": 2, "who": "bot"}
    assert reply["seq"] == 3
    assert reply["lang"] == "es"
    assert reply["faq_ids"] == ["returns.start"]
    title = pipeline.knowledge.i18n["es"].faq["returns.start"].questions[0]
    assert reply["sources"] == [{"id": "returns.start", "title": title}]  # shown, not the id
    assert reply["reply_to"] == "m1"
    where = locality_for(pipeline.knowledge, "es", locale_hint="es-ES")
    assert reply["text"] == pipeline.localizer.curated("returns.start", where)


async def test_two_languages_in_one_conversation(app: App) -> None:
    """A customer who switches to German is answered in German."""
    async with chat(app) as client:
        await client.hello("es-ES")
        es = (await client.ask("m1", RETURN_ES))[-1]
        de = (await client.ask("m2", "Wie kann ich einen Artikel zurückgeben?"))[-1]
    assert (es["lang"], es["faq_ids"]) == ("es", ["returns.start"])
    assert (de["lang"], de["faq_ids"]) == ("de", ["returns.start"])


async def test_a_resent_message_is_acked_again_and_answered_once(app: App) -> None:
    """The same id sent twice: the same ack seq twice, one stored message, one reply."""
    async with chat(app) as client:
        welcome = await client.hello()
        await client.send(type="message", id="m1", text=RETURN_ES)
        await client.send(type="message", id="m1", text=RETURN_ES)
        frames = await client.until("reply")
        while [f["type"] for f in frames].count("ack") < 2:
            frames.append(await client.recv())
        await client.quiet()
    acks = [f for f in frames if f["type"] == "ack"]
    assert [a["seq"] for a in acks] == [1, 1]
    assert [f["type"] for f in client.frames].count("reply") == 1
    messages = await app.store.messages(welcome["conversation"])
    assert [m["role"] for m in messages] == ["customer", "bot"]


async def test_resume_replays_exactly_the_missed_events(app: App) -> None:
    """Gone after the ack, back later: the welcome is followed by the reply, once."""
    async with chat(app) as client:
        welcome = await client.hello()
        await client.send(type="message", id="m1", text=RETURN_ES)
        ack = await client.recv()
    assert ack["type"] == "ack"
    conv = welcome["conversation"]
    for _ in range(int(100 * FACTOR)):  # the turn goes on without the customer
        if not await app.store.unreplied(conv):
            break
        await asyncio.sleep(0.1)
    async with chat(app) as client:
        again = await client.hello(resume=welcome["resume"], last_seq=ack["seq"])
        reply = await client.recv()
        await client.quiet()
    assert again["conversation"] == conv
    assert again["seq"] == reply["seq"] == 3  # 2 was the typing event: sent, never replayed
    assert reply["type"] == "reply"
    assert reply["reply_to"] == "m1"

    async with chat(app) as client:  # a page reload: last_seq 0 rebuilds the whole log
        await client.hello(resume=welcome["resume"], last_seq=0)
        replay = [await client.recv(), await client.recv()]
        await client.quiet()
    assert [(f["type"], f["seq"]) for f in replay] == [("ack", 1), ("reply", 3)]
    assert replay[0]["text"] == RETURN_ES


async def test_two_tabs_of_one_conversation_both_see_its_events(app: App) -> None:
    """A second socket resuming the same conversation receives the live events too."""
    async with chat(app) as first, chat(app) as second:
        welcome = await first.hello()
        await second.hello(resume=welcome["resume"], last_seq=0)
        await first.ask("m1", RETURN_ES)
        seen = await second.until("reply")
    assert [f["type"] for f in seen] == ["ack", "typing", "reply"]


async def test_restart_mid_conversation_loses_and_duplicates_nothing(start: Any) -> None:
    """Server stopped right after an ack; a new server on the same database answers the
    message on resume, and no seq the client saw is ever used again."""
    async with start(grace=0) as first:
        ws = await connect(first.chat_url, open_timeout=TIMEOUT)
        client = Client(ws)
        welcome = await client.hello()
        await client.ask("m1", RETURN_ES)
        await client.send(type="message", id="m2", text="¿Cuánto tarda el envío a España?")
        await client.until("ack")
    closed = await client.closed()  # whatever was sent before the 1001 is recorded
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1001
    seen = client.frames[1:]
    async with start() as second:
        async with chat(second) as client:
            last_seq = max(seqs_of(seen))
            again = await client.hello(resume=welcome["resume"], last_seq=last_seq)
            if not any(f["type"] == "reply" and f["reply_to"] == "m2" for f in seen):
                await client.until("reply")
            await client.quiet()
        messages = await second.store.messages(welcome["conversation"])
    after = client.frames[1:]
    everything = [f for f in seen + after if f["type"] != "welcome"]
    seqs = seqs_of(everything)
    assert len(seqs) == len(set(seqs)), f"a seq was used twice: {everything}"
    assert seqs == sorted(seqs)
    assert again["seq"] >= last_seq
    replies = [f["reply_to"] for f in everything if f["type"] == "reply"]
    assert replies == ["m1", "m2"]
    assert [(m["role"], m["replied"]) for m in messages] == [
        ("customer", True),
        ("bot", True),
        ("customer", True),
        ("bot", True),
    ]


async def test_a_message_stored_before_a_crash_is_answered_on_resume(app: App) -> None:
    """A message stored and acked but never answered gets its reply when the customer is back."""
    async with chat(app) as client:
        welcome = await client.hello()
    conv = welcome["conversation"]
    await app.store.accept_message(conv, "m1", RETURN_ES)  # as if the server died here
    async with chat(app) as client:
        await client.hello(resume=welcome["resume"], last_seq=0)
        frames = await client.until("reply")
    assert [f["type"] for f in frames] == ["ack", "typing", "reply"]
    assert frames[-1]["faq_ids"] == ["returns.start"]


async def test_a_customer_can_ask_for_a_human(app: App) -> None:
    """handoff.request queues the conversation; while it waits the bot still answers FAQ
    questions and the conversation stays queued."""
    async with chat(app) as client:
        welcome = await client.hello()
        await client.send(type="handoff.request")
        handoff, note = await client.recv(), await client.recv()
        await client.send(type="handoff.request")  # harmless
        await client.send(type="message", id="m1", text=RETURN_ES)
        ack, reply = await client.recv(), await client.recv()
        await client.quiet()
    assert reply["type"] == "reply" and reply["faq_ids"] == ["returns.start"]
    assert handoff == {"type": "handoff", "seq": 1, "reason": "customer_request"}
    assert note["type"] == "system"
    assert "support@meridiangoods.com" in note["text"]  # how to reach the team, in Spanish
    assert "te responderá aquí mismo" in note["text"]  # an agent answers in the chat
    assert ack["type"] == "ack"
    assert (await app.store.conversation(welcome["conversation"])).status == "queued"


async def test_the_pipeline_can_hand_over(app: App) -> None:
    """'Quiero hablar con una persona' is answered, then a handoff event follows."""
    async with chat(app) as client:
        await client.hello()
        await client.ask("m1", "Quiero hablar con una persona")
        handoff = await client.recv()
    assert handoff["type"] == "handoff"
    assert handoff["reason"] == "customer_request"


async def test_a_language_change_on_resume_is_followed(app: App) -> None:
    """The customer picks Arabic in the widget: the next welcome says ar."""
    async with chat(app) as client:
        welcome = await client.hello("es-ES")
    async with chat(app) as client:
        again = await client.hello("ar", resume=welcome["resume"], last_seq=0)
    assert again["lang"] == "ar"


@pytest.mark.postgres
async def test_a_conversation_on_postgresql(
    config: Config, pipeline: Pipeline, postgres: str
) -> None:
    """The same conversation, resume and replay on PostgreSQL."""
    _run_sql(postgres, "DROP SCHEMA public CASCADE", "CREATE SCHEMA public")
    url = PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + postgres
    async with Store(DatabaseConfig(url=url)) as store:
        await store.upgrade()
    cfg = config.replace(database={"url": url}, server={"host": "127.0.0.1", "port": 0})
    async with App(cfg, pipeline=pipeline) as app:
        async with chat(app) as client:
            welcome = await client.hello()
            reply = (await client.ask("m1", RETURN_ES))[-1]
        async with chat(app) as client:
            await client.hello(resume=welcome["resume"], last_seq=0)
            replay = [await client.recv(), await client.recv()]
    assert reply["faq_ids"] == ["returns.start"]
    assert [(f["type"], f["seq"]) for f in replay] == [("ack", 1), ("reply", 3)]


# -- refusals ------------------------------------------------------------------------------


async def test_the_server_refuses_an_out_of_date_schema(
    config: Config, pipeline: Pipeline, tmp_path: Path
) -> None:
    """On a database without the migrations the server does not start, and says why."""
    cfg = config.replace(
        database={"url": f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"}, server={"port": 0}
    )
    with pytest.raises(SchemaOutOfDate, match="run `bot db upgrade`"):
        async with App(cfg, pipeline=pipeline):
            pass


async def test_an_idle_socket_is_closed_with_1000(start: Any) -> None:
    """A customer who sends nothing for idle_timeout seconds is disconnected normally."""
    async with start(idle_timeout=0.3) as app, chat(app) as client:
        await client.hello()
        closed = await client.closed()
    assert closed.rcvd is not None
    assert closed.rcvd.code == 1000


async def test_bad_frames_get_errors_and_the_connection_stays_open(start: Any) -> None:
    """Each broken frame gets its own error code; a good message still works after."""
    async with start(max_message_chars=50) as app, chat(app) as client:
        await client.send(type="message", id="m0", text="hola")
        assert (await client.recv())["code"] == "not_ready"
        await client.send(type="hello", v=2, locale="es-ES")
        assert (await client.recv())["code"] == "unsupported_version"
        await client.send(type="hello", v=1, locale="es-ES", resume="r_nope", last_seq=0)
        assert (await client.recv())["code"] == "bad_resume"
        await client.hello("es-ES")
        for raw in ["not json", "[1, 2]", '{"no": "type"}', '{"type": "message", "id": 5}']:
            await client.ws.send(raw)
            error = await client.recv()
            assert error["code"] == "bad_frame", raw
        await client.ws.send(b"\x00\x01")
        assert (await client.recv())["code"] == "bad_frame"
        await client.send(type="sticker", id="x")
        assert (await client.recv())["code"] == "unknown_type"
        await client.send(type="message", id="m1", text="x" * 51)
        too_long = await client.recv()
        assert (too_long["code"], too_long["id"]) == ("too_long", "m1")
        assert too_long["message"].startswith("Tu mensaje es demasiado largo")
        assert "50" in too_long["message"]
        assert all("seq" not in f for f in client.frames if f["type"] == "error")
        reply = (await client.ask("m2", RETURN_ES))[-1]
    assert reply["faq_ids"] == ["returns.start"]


async def test_an_oversized_frame_closes_the_socket_with_1009(start: Any) -> None:
    """A frame over max_frame_bytes is refused by closing with 1009."""
    async with start(max_frame_bytes=1024) as app, chat(app) as client:
        await client.hello()
        await client.send(type="message", id="m1", text="x" * 2000)
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1009


async def test_too_many_messages_are_rate_limited(start: Any) -> None:
    """Past the bucket, messages get rate_limited with their id; the socket stays open."""
    async with start(rate_limit_messages=2, rate_limit_window=600.0) as app, chat(app) as client:
        await client.hello()
        await client.ask("m1", "hola")
        await client.ask("m2", "gracias")
        await client.send(type="message", id="m3", text="adiós")
        limited = await client.recv()
        assert (limited["type"], limited["code"], limited["id"]) == ("error", "rate_limited", "m3")
        assert "demasiado rápido" in limited["message"]
        await client.send(type="handoff.request")
        assert (await client.recv())["code"] == "rate_limited"


async def test_a_socket_from_another_origin_is_refused(start: Any) -> None:
    """With allowed_origins set, other pages get HTTP 403 at the handshake."""
    async with start(allowed_origins=("https://shop.example",)) as app:
        with pytest.raises(InvalidStatus) as refused:
            async with chat(app, origin="https://evil.example"):
                pass
        assert refused.value.response.status_code == 403
        async with chat(app, origin="https://shop.example") as client:
            await client.hello()


async def test_a_failing_turn_is_answered_with_internal_and_the_socket_survives(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash inside a turn: error `internal` (localized, with the id), nothing else dies."""
    real_answer = app.pipeline.answer

    async def flaky(text: str, *args: Any, **kwargs: Any) -> Any:
        if text == "boom":
            raise RuntimeError("simulated fault")
        return await real_answer(text, *args, **kwargs)

    monkeypatch.setattr(app.pipeline, "answer", flaky)
    async with chat(app) as client:
        await client.hello()
        await client.send(type="message", id="m1", text="boom")
        frames = await client.until("error")
        reply = (await client.ask("m2", RETURN_ES))[-1]
    error = frames[-1]
    assert (error["code"], error["id"]) == ("internal", "m1")
    assert error["message"].startswith("Lo siento")
    assert "simulated" not in error["message"]
    assert reply["faq_ids"] == ["returns.start"]


# -- limits --------------------------------------------------------------------------------


async def refused(app: App, **kwargs: Any) -> int | None:
    """Connect, and return the close code the server ends the socket with."""
    async with chat(app, **kwargs) as client:
        closed = await client.closed()
    return closed.rcvd.code if closed.rcvd else None


async def wait_for(condition: Any, what: str) -> None:
    for _ in range(int(100 * FACTOR)):
        if condition():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


async def refusals(app: App) -> dict[str, float]:
    _, _, body = await http_get(app, "/metrics")
    found = re.findall(r'^bot_refusals_total\{reason="(\w+)"\} (\S+)$', body.decode(), re.M)
    return {reason: float(count) for reason, count in found}


async def test_reconnecting_does_not_refill_the_rate_limit(start: Any) -> None:
    """The conversation's budget follows it across reconnects and tabs: the third message
    of a 2-per-window conversation is refused, whichever socket sends it."""
    async with start(rate_limit_messages=2, rate_limit_window=600.0) as app:
        async with chat(app) as client:
            welcome = await client.hello()
            await client.send(type="message", id="m1", text="hola")
            await client.until("ack")
        async with chat(app) as client, chat(app) as tab:
            await client.hello(resume=welcome["resume"], last_seq=99)
            await tab.hello(resume=welcome["resume"], last_seq=99)
            await client.send(type="message", id="m2", text="gracias")
            await client.until("ack")
            await tab.send(type="message", id="m3", text="adiós")
            limited = await tab.until("error")
            await client.send(type="handoff.request")
            again = await client.until("error")
        assert (limited[-1]["code"], limited[-1]["id"]) == ("rate_limited", "m3")
        assert again[-1]["code"] == "rate_limited"
        assert (await refusals(app))["conversation"] == 2


async def test_one_address_shares_one_budget_across_conversations(start: Any) -> None:
    """New conversations and their messages from one address spend one bucket: past it,
    messages and new conversations are refused with rate_limited."""
    settings = {"rate_limit_messages": 100, "ip_rate_limit_messages": 3, "rate_limit_window": 600.0}
    async with start(**settings) as app, chat(app) as first, chat(app) as second:
        await first.hello()  # 1
        await second.hello()  # 2
        await first.send(type="message", id="a1", text="hola")  # 3
        await first.until("ack")
        await second.send(type="message", id="b1", text="hola")
        limited = await second.until("error")
        assert (limited[-1]["code"], limited[-1]["id"]) == ("rate_limited", "b1")
        async with chat(app) as third:
            await third.send(type="hello", v=1, locale="es-ES")
            assert (await third.recv())["code"] == "rate_limited"
        assert (await refusals(app))["address"] == 2


async def test_too_many_sockets_from_one_address_are_closed_with_1013(start: Any) -> None:
    """Past max_connections_per_ip a new socket is closed with 1013 (try again later);
    once one of them goes, a new one is welcome."""
    async with start(max_connections_per_ip=2) as app:
        async with chat(app) as first, chat(app) as second:
            await first.hello()
            await second.hello()
            assert await refused(app) == 1013
        await wait_for(lambda: app.metrics.open_connections == 0, "the sockets to close")
        async with chat(app) as client:
            await client.hello()
        assert (await refusals(app))["connections"] == 1


async def test_behind_a_trusted_proxy_the_forwarded_address_counts(start: Any) -> None:
    """With the proxy trusted, each forwarded client has its own connection limit, and
    addresses a client prepends to the header change nothing."""
    async with start(max_connections_per_ip=1, trusted_proxies=("127.0.0.1",)) as app:
        one = {"additional_headers": {"X-Forwarded-For": "203.0.113.5"}}
        spoofed = {"additional_headers": {"X-Forwarded-For": "198.51.100.7, 203.0.113.5"}}
        other = {"additional_headers": {"X-Forwarded-For": "203.0.113.6"}}
        async with chat(app, **one) as client, chat(app, **other) as neighbour:
            await client.hello()
            await neighbour.hello()
            assert await refused(app, **spoofed) == 1013


async def test_an_untrusted_peer_cannot_choose_its_address(start: Any) -> None:
    """Without trusted proxies the header is ignored: every socket here is 127.0.0.1."""
    async with start(max_connections_per_ip=1) as app:
        headers = {"X-Forwarded-For": "203.0.113.5"}
        async with chat(app, additional_headers=headers) as client:
            await client.hello()
            other = {"X-Forwarded-For": "203.0.113.6"}
            assert await refused(app, additional_headers=other) == 1013


@pytest.mark.parametrize(
    ("peer", "header", "expected"),
    [
        ("203.0.113.5", None, "203.0.113.5"),
        ("203.0.113.5", "198.51.100.7", "203.0.113.5"),  # not a trusted proxy: ignored
        ("10.0.0.2", "198.51.100.7", "198.51.100.7"),
        ("10.0.0.2", "1.1.1.1, 198.51.100.7, 10.0.0.9", "198.51.100.7"),
        ("10.0.0.2", "[2001:db8::1]:443", "2001:db8::/64"),
        ("10.0.0.2", "junk, 198.51.100.7", "198.51.100.7"),
        ("10.0.0.2", "198.51.100.7, junk", "10.0.0.2"),
        ("::ffff:203.0.113.5", None, "203.0.113.5"),
    ],
)
def test_the_client_address(peer: str, header: str | None, expected: str) -> None:
    """Limits count the rightmost address a trusted proxy vouches for (IPv6 per /64)."""
    trusted = (ipaddress.ip_network("10.0.0.0/8"),)
    assert client_address(peer, header, trusted) == expected


async def test_handshakes_in_flight_are_capped(start: Any) -> None:
    """Connections that never finish their handshake hold at most max_handshakes slots:
    past them a new one gets HTTP 503; the silent ones are dropped after handshake_timeout."""
    async with start(max_handshakes=2, handshake_timeout=1.0 * FACTOR) as app:
        silent = [await asyncio.open_connection("127.0.0.1", app.port) for _ in range(2)]
        await wait_for(lambda: app.admission.handshakes == 2, "two handshakes in flight")
        with pytest.raises(InvalidStatus) as busy:
            async with chat(app):
                pass
        assert busy.value.response.status_code == 503
        for reader, writer in silent:  # the server gives up on them
            assert await asyncio.wait_for(reader.read(), TIMEOUT) == b""
            writer.close()
        async with chat(app) as client:
            await client.hello()
        assert (await refusals(app))["handshakes"] == 1


# -- malformed frames ----------------------------------------------------------------------

MALFORMED = {
    "lone surrogate id": '{"type":"message","id":"\\ud800","text":"hola"}',
    "lone surrogate text": '{"type":"message","id":"m1","text":"ho\\udc00la"}',
    "control character id": '{"type":"message","id":"m\\u0000","text":"hola"}',
    "nested arrays": "[" * 60000,
    "nested objects": '{"a":' * 12000,
    "huge number": '{"type":"message","id":"m1","text":' + "9" * 5000 + "}",
}


async def test_malformed_frames_get_bad_frame_and_the_socket_stays_open(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """Lone surrogates, control characters in ids, absurd nesting or numbers: each gets
    error bad_frame, nothing reaches the log as an error, and the chat goes on."""
    async with chat(app) as client:
        await client.ws.send('{"type":"hello","v":1,"locale":"es-ES","resume":"r_\\ud800"}')
        assert (await client.recv())["code"] == "bad_resume"
        await client.hello(last_seq=0)
        for name, raw in MALFORMED.items():
            await client.ws.send(raw)
            error = await client.recv()
            assert (error["type"], error["code"]) == ("error", "bad_frame"), name
        await client.send(type="message", id="m1", text="hola")
        ack = await client.recv()
    assert (ack["type"], ack["id"]) == ("ack", "m1")
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_a_resume_past_any_seq_is_refused(app: App) -> None:
    """A last_seq beyond what a database can hold gets bad_frame, not a server error."""
    async with chat(app) as client:
        welcome = await client.hello()
    async with chat(app) as client:
        await client.send(type="hello", v=1, locale="es", resume=welcome["resume"], last_seq=2**64)
        assert (await client.recv())["code"] == "bad_frame"
        await client.hello(resume=welcome["resume"], last_seq=0)


async def test_repeated_bad_frames_are_logged_a_few_times(
    app: App, caplog: pytest.LogCaptureFixture
) -> None:
    """Forty broken frames: forty errors to the client, forty in /metrics, three log lines."""
    caplog.set_level(logging.DEBUG, logger="bot.server.chat")
    async with chat(app) as client:
        await client.hello()
        for _ in range(40):
            await client.ws.send("[" * 1000)
        codes = [(await client.recv())["code"] for _ in range(40)]
    assert codes == ["bad_frame"] * 40
    logged = [r for r in caplog.records if r.name == "bot.server.chat"]
    assert len(logged) == 3
    _, _, body = await http_get(app, "/metrics")
    assert 'bot_errors_total{code="bad_frame"} 40.0' in body.decode()


async def test_control_and_bidi_characters_are_not_stored(app: App) -> None:
    """NUL, other control characters and bidi overrides are removed; newlines and tabs stay."""
    text = "ho\x00la\x07 \u202eadiós\u202c\r\n\tgracias \u2066ok\u2069\x1b[31m"
    async with chat(app) as client:
        welcome = await client.hello()
        await client.send(type="message", id="m1", text=text)
        ack = await client.recv()
    assert ack["text"] == "hola adiós\n\tgracias ok[31m"
    messages = await app.store.messages(welcome["conversation"])
    assert messages[0]["original_text"] == "hola adiós\n\tgracias ok[31m"


async def test_a_message_of_only_control_characters_is_refused(app: App) -> None:
    """Text that is empty once cleaned gets bad_frame with its id, like an empty message."""
    async with chat(app) as client:
        await client.hello()
        await client.send(type="message", id="m1", text="\x00\u202e\x07")
        error = await client.recv()
    assert (error["code"], error["id"]) == ("bad_frame", "m1")


# -- HTTP ----------------------------------------------------------------------------------


async def test_healthz_reports_database_engine_and_index(app: App, pipeline: Pipeline) -> None:
    """/healthz: database ok, no engine in tests, the FAQ index fingerprint."""
    status, headers, body = await http_get(app, "/healthz")
    assert status == 200
    assert headers["Content-Type"].startswith("application/json")
    report = json.loads(body)
    assert report["db"] == "ok"
    assert report["engine"] == "unavailable"
    assert report["index"] == pipeline.retriever.fingerprint != ""


async def test_metrics_count_turns_stages_and_messages(app: App) -> None:
    """/metrics after a turn: turns by language and source, stage latencies, messages."""
    async with chat(app) as client:
        await client.hello()
        await client.ask("m1", RETURN_ES)
        _, _, body = await http_get(app, "/metrics")
        text = body.decode()
    assert 'bot_turns_total{language="es",source="curated"} 1.0' in text
    assert re.search(r'bot_stage_seconds_count\{stage="retrieve"\} 1\.0', text)
    assert 'bot_messages_stored_total{role="customer"} 1.0' in text
    assert 'bot_messages_stored_total{role="bot"} 1.0' in text
    assert "bot_open_connections 1.0" in text


async def test_static_routes(app: App) -> None:
    """The demo page, the widget with CORS, UI strings per language, 404 for the rest."""
    status, headers, body = await http_get(app, "/")
    assert status == 200
    assert headers["Content-Type"].startswith("text/html")
    assert b"/widget.js" in body
    status, headers, _ = await http_get(app, "/widget.js")
    assert (status, headers["Access-Control-Allow-Origin"]) == (200, "*")
    assert headers["Content-Type"].startswith("text/javascript")
    status, headers, _ = await http_get(app, "/widget.css")
    assert (status, headers["Access-Control-Allow-Origin"]) == (200, "*")
    status, headers, body = await http_get(app, "/widget/i18n/ar.json")
    assert (status, headers["Access-Control-Allow-Origin"]) == (200, "*")
    strings = json.loads(body)
    assert (strings["lang"], strings["dir"]) == ("ar", "rtl")
    assert strings["ui"]["send"]
    assert (await http_get(app, "/widget/i18n/xx.json"))[0] == 404
    assert (await http_get(app, "/admin"))[0] == 404


# -- shutdown ------------------------------------------------------------------------------


async def test_shutdown_closes_sockets_with_1001(start: Any) -> None:
    """Stopping the server closes every open chat socket with 1001 (going away)."""
    async with start() as app, chat(app) as client:
        await client.hello()
        await app.__aexit__(None, None, None)
        with pytest.raises(ConnectionClosed) as closed:
            await client.recv()
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001


def test_bot_serve_exits_0_on_sigterm(db_url: str) -> None:
    """`bot serve` answers a socket, and on SIGTERM closes it with 1001 and exits 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    cmd = [sys.executable, "-m", "bot.cli", "serve", "--no-engine", "--port", "0", "--db", db_url]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            match = re.search(r"chat socket (ws://\S+)\)", line)
            if match:
                break
        else:
            pytest.fail("bot serve did not start")

        async def session() -> int | None:
            async with connect(match.group(1)) as ws:
                await ws.send(json.dumps({"type": "hello", "v": 1, "locale": "en"}))
                await asyncio.wait_for(ws.recv(), TIMEOUT)
                proc.send_signal(signal.SIGTERM)
                with pytest.raises(ConnectionClosed) as closed:
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
                return closed.value.rcvd.code if closed.value.rcvd else None

        assert asyncio.run(session()) == 1001
        assert proc.wait(timeout=TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


async def test_customer_text_can_be_stored_redacted(
    config: Config, pipeline: Pipeline, db_url: str
) -> None:
    """privacy.keep_original = false: the stored message holds "[card ••4242]", never the
    card number, and the customer still gets an answer."""
    cfg = config.replace(
        database={"url": db_url},
        server={"host": "127.0.0.1", "port": 0},
        privacy={"keep_original": False},
    )
    async with App(cfg, pipeline=pipeline) as app, chat(app) as client:
        welcome = await client.hello()
        await client.send(
            type="message", id="m1", text="Meine Karte 4242 4242 4242 4242 wurde doppelt belastet"
        )
        await client.until("reply")
    stored = await app.store.messages(welcome["conversation"])
    assert "[card ••4242]" in stored[0]["original_text"]
    assert all("4242 4242" not in str(m) for m in stored)


async def test_server_purges_conversations_past_retention(
    config: Config, pipeline: Pipeline, db_url: str
) -> None:
    """With privacy.retention_days set, a conversation idle for longer is gone once the
    server has started; a recent one stays."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from bot.store.models import Conversation

    async with Store(DatabaseConfig(url=db_url)) as store:
        old, _ = await store.create_conversation(language="en")
        recent, _ = await store.create_conversation(language="en")
        async with store._write() as session:
            await session.execute(
                update(Conversation)
                .where(Conversation.id == old.id)
                .values(updated_at=datetime.now(UTC) - timedelta(days=400))
            )
    cfg = config.replace(
        database={"url": db_url},
        server={"host": "127.0.0.1", "port": 0},
        privacy={"retention_days": 365},
    )
    async with App(cfg, pipeline=pipeline) as app:
        for _ in range(100):  # the purge runs in the background right after start-up
            ids = [c["id"] for c in await app.store.recent_conversations(limit=10)]
            if len(ids) == 1:
                break
            await asyncio.sleep(0.05)
    assert ids == [recent.id]


async def test_metrics_can_be_restricted_and_pages_carry_security_headers(start: Any) -> None:
    """With server.metrics_allow set, /metrics answers 403 to other peers (and the refusal
    is counted); every response carries a Referrer-Policy, the demo page may not be framed
    by other sites."""
    async with start(metrics_allow=("10.0.0.0/8",)) as app:
        status, headers, _ = await http_get(app, "/metrics")
        assert status == 403
        assert headers["Referrer-Policy"] == "strict-origin-when-cross-origin"
        assert 'bot_refusals_total{reason="metrics"} 1.0' in app.metrics.render().decode()
    async with start(metrics_allow=("127.0.0.0/8", "::1")) as app:
        status, _, _ = await http_get(app, "/metrics")
        assert status == 200
        status, headers, _ = await http_get(app, "/")
        assert status == 200
        assert headers["Content-Security-Policy"] == "frame-ancestors 'self'"
