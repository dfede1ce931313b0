"""The agent console end to end: a real server on port 0 with the real pipeline, migrated
SQLite, real agents logging in over HTTP and real customer and agent websockets."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bot.auth import hash_password, verify_password
from bot.config import DatabaseConfig
from bot.localize import locality_for
from bot.pipeline import Pipeline
from bot.server.app import App
from bot.store import Store
from tests.test_server import RETURN_ES, TIMEOUT, Client, app, chat

__all__ = ["app"]  # a fixture used here

ROOT = Path(__file__).resolve().parent.parent
PASSWORD = "correct horse battery"
# A curated Spanish FAQ question: its English pivot comes from the translation memory.
QUESTION_ES = "¿Cómo hago una devolución?"
# An approved pair in the translation memory: the agent's reply translates without a model.
REPLY_EN = "Your refund for order 12345 was sent today."
REPLY_ES = "Tu reembolso del pedido 12345 se ha enviado hoy."


# -- helpers -------------------------------------------------------------------------------


async def add_agent(app: App, name: str, role: str = "agent") -> None:
    await app.store.add_agent(name, await asyncio.to_thread(hash_password, PASSWORD), role=role)


async def post(
    app: App, path: str, headers: dict[str, str], *, origin: str | None = None
) -> tuple[int, dict[str, str], dict[str, Any]]:
    """A POST without a body from the console's origin (or ``origin``)."""

    def send() -> tuple[int, dict[str, str], dict[str, Any]]:
        address = urlsplit(app.url)
        conn = http.client.HTTPConnection(address.hostname or "", address.port, timeout=TIMEOUT)
        try:
            all_headers = {"Origin": origin or app.url, **headers}
            conn.request("POST", path, headers=all_headers)
            res = conn.getresponse()
            body = res.read()
            try:
                data = json.loads(body)
            except ValueError:
                data = {"text": body.decode()}
            return res.status, {k.lower(): v for k, v in res.getheaders()}, data
        finally:
            conn.close()

    return await asyncio.to_thread(send)


async def login(app: App, name: str, password: str = PASSWORD) -> tuple[int, str, dict[str, Any]]:
    """(status, cookie header to send back, JSON body)."""
    basic = base64.b64encode(f"{name}:{password}".encode()).decode()
    status, headers, body = await post(app, "/console/login", {"Authorization": f"Basic {basic}"})
    cookie = headers.get("set-cookie", "").split(";")[0]
    return status, cookie, body


class Agent(Client):
    async def expect(self, kind: str, **fields: Any) -> dict[str, Any]:
        """The next frame of type ``kind`` (with ``fields``), skipping the others."""
        while True:
            frame = await self.recv()
            if frame["type"] == kind and all(frame.get(k) == v for k, v in fields.items()):
                return frame


@asynccontextmanager
async def agent_socket(app: App, name: str, role: str = "agent") -> AsyncIterator[Agent]:
    """A logged-in agent's console socket, past ``hello`` / ``ready`` / first ``queue``."""
    await add_agent(app, name, role)
    status, cookie, body = await login(app, name)
    assert status == 200, body
    async with connect(
        app.agent_url, origin=app.url, additional_headers={"Cookie": cookie}, open_timeout=TIMEOUT
    ) as ws:  # type: ignore[arg-type]
        agent = Agent(ws)
        await agent.send(type="hello", v=1, csrf=body["csrf"])
        ready = await agent.recv()
        assert ready["type"] == "ready", ready
        await agent.expect("queue")
        yield agent


async def handed_off(client: Client) -> str:
    """A Spanish customer asks a question, then for a human; the conversation id."""
    welcome = await client.hello("es-ES")
    await client.ask("m1", QUESTION_ES)
    await client.send(type="handoff.request")
    await client.until("system")
    return str(welcome["conversation"])


# -- states --------------------------------------------------------------------------------


async def test_a_customer_can_cancel_a_pending_handoff(app: App) -> None:
    """ "Talk to a human", then "never mind": the bot answers again, in Spanish."""
    async with chat(app) as client:
        cid = await handed_off(client)
        await client.send(type="handoff.cancel")
        cancelled, note = await client.recv(), await client.recv()
        assert cancelled["type"] == "handoff.cancelled"
        assert note["type"] == "system" and "cancelado" in note["text"]
        assert (await app.store.conversation(cid)).status == "bot"
        reply = (await client.ask("m2", RETURN_ES))[-1]
        assert reply["type"] == "reply" and reply["lang"] == "es"


async def test_the_bot_answers_faq_questions_while_queued(app: App) -> None:
    """While waiting for an agent the customer still gets the FAQ answer, and stays queued."""
    async with chat(app) as client:
        cid = await handed_off(client)
        reply = (await client.ask("m2", "¿Cuánto tarda el envío?"))[-1]
        assert reply["type"] == "reply" and reply["faq_ids"]
    assert (await app.store.conversation(cid)).status == "queued"
    assert await app.store.handoffs(cid) == ["customer_request"]


async def test_the_bot_asks_nothing_back_while_queued(app: App) -> None:
    """While waiting for an agent, a message two entries fit ("devolución": how to return,
    or the policy) gets no "which of these do you mean?": the agent will read it."""
    async with chat(app) as client:
        cid = await handed_off(client)
        await client.send(type="message", id="m2", text="devolución")
        assert (await client.recv())["type"] == "ack"
        await client.quiet(1.0)
    assert (await app.store.conversation(cid)).status == "queued"
    messages = await app.store.messages(cid)
    assert messages[-1]["role"] == "customer" and messages[-1]["language"] == "es"


async def test_the_bot_is_silent_while_an_agent_owns_the_conversation(app: App) -> None:
    """After an agent joins, a customer message reaches the agent and the bot says nothing."""
    async with chat(app) as client, agent_socket(app, "marta") as agent:
        cid = await handed_off(client)
        await agent.send(type="claim", conversation=cid)
        await agent.expect("transcript", conversation=cid)
        joined = await client.recv()
        assert joined == {"type": "agent.joined", "seq": joined["seq"], "agent": "marta"}
        assert (await client.recv())["type"] == "system"
        await client.send(type="message", id="m9", text=QUESTION_ES)
        assert (await client.recv())["type"] == "ack"
        await client.quiet(1.0)
        event = await agent.expect("conversation.event", conversation=cid)
        assert event["event"]["type"] == "ack"
        await agent.expect("transcript.changed", conversation=cid)
    messages = await app.store.messages(cid)
    assert messages[-1]["role"] == "customer" and messages[-1]["language"] == "es"
    assert messages[-1]["pivot_text"]  # the FAQ question is in the translation memory


# -- agents and logins ---------------------------------------------------------------------


def test_passwords_are_hashed_with_scrypt_and_a_salt() -> None:
    """The same password stored twice gives two different hashes; both verify."""
    a, b = hash_password(PASSWORD), hash_password(PASSWORD)
    assert a != b and a.startswith("scrypt$")
    assert verify_password(PASSWORD, a) and verify_password(PASSWORD, b)
    assert not verify_password("wrong password", a) and not verify_password(PASSWORD, None)


async def test_login_sets_a_strict_http_only_cookie_and_logout_revokes_it(app: App) -> None:
    """An agent logs in, gets a session cookie scripts cannot read; after logout it is dead."""
    await add_agent(app, "marta")
    status, cookie, body = await login(app, "marta")
    assert status == 200 and body["agent"] == "marta" and body["csrf"]
    _, headers, _ = await post(app, "/console/login", {"Authorization": _basic("marta", PASSWORD)})
    flags = headers["set-cookie"]
    assert "HttpOnly" in flags and "SameSite=Strict" in flags and "Path=/" in flags
    assert "Secure" not in flags  # plain http here; behind https (X-Forwarded-Proto) it is
    # Logout needs the CSRF token: without it nothing happens.
    status, _, _ = await post(app, "/console/logout", {"Cookie": cookie})
    assert status == 403
    status, _, _ = await post(
        app, "/console/logout", {"Cookie": cookie, "X-CSRF-Token": body["csrf"]}
    )
    assert status == 200
    with pytest.raises(InvalidStatus) as refused:
        await connect(app.agent_url, origin=app.url, additional_headers={"Cookie": cookie})  # type: ignore[arg-type]
    assert refused.value.response.status_code == 401


async def test_secure_cookie_behind_https(app: App) -> None:
    """Behind an https proxy the session cookie is marked Secure."""
    await add_agent(app, "marta")
    _, headers, _ = await post(
        app,
        "/console/login",
        {"Authorization": _basic("marta", PASSWORD), "X-Forwarded-Proto": "https"},
    )
    assert "; Secure" in headers["set-cookie"]


async def test_wrong_passwords_are_rate_limited_per_name(start: Any) -> None:
    """Five wrong passwords for one name: even the right one is refused for a while."""
    async with start() as app:
        await add_agent(app, "marta")
        for _ in range(5):
            status, _, body = await login(app, "marta", "not the password")
            assert status == 401 and body == {"error": "bad_credentials"}
        status, _, body = await login(app, "marta")
        assert status == 429 and body == {"error": "rate_limited"}


async def test_a_login_from_another_origin_is_refused(app: App) -> None:
    """A page on another site cannot log an agent in (or out)."""
    await add_agent(app, "marta")
    status, headers, _ = await post(
        app, "/console/login", {"Authorization": _basic("marta", PASSWORD)},
        origin="https://evil.example",
    )  # fmt: skip
    assert status == 403 and "set-cookie" not in headers


async def test_the_agent_socket_needs_a_session_and_the_csrf_token(app: App) -> None:
    """No cookie: 401. A cookie but no CSRF token in the first frame: closed with 1008.
    Another origin with a valid cookie: 403."""
    with pytest.raises(InvalidStatus) as refused:
        await connect(app.agent_url, origin=app.url)  # type: ignore[arg-type]
    assert refused.value.response.status_code == 401
    await add_agent(app, "marta")
    _, cookie, _ = await login(app, "marta")
    with pytest.raises(InvalidStatus) as refused:
        await connect(
            app.agent_url, origin="https://evil.example", additional_headers={"Cookie": cookie}
        )  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    async with connect(app.agent_url, origin=app.url, additional_headers={"Cookie": cookie}) as ws:  # type: ignore[arg-type]
        await ws.send(json.dumps({"type": "hello", "v": 1, "csrf": "guess"}))
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_the_customer_socket_cannot_act_as_an_agent(app: App) -> None:
    """A customer sending console frames gets unknown_type; nothing changes."""
    async with chat(app) as client:
        cid = await handed_off(client)
        for kind in ("claim", "release", "close", "note"):
            await client.send(type=kind, conversation=cid, text="x")
            error = await client.recv()
            assert (error["type"], error["code"]) == ("error", "unknown_type")
    assert (await app.store.conversation(cid)).status == "queued"


async def test_a_disabled_agent_is_logged_out_at_once(app: App) -> None:
    """Disabling an agent ends the open console socket with 1008 at its next frame."""
    async with chat(app) as client, agent_socket(app, "marta") as agent:
        cid = await handed_off(client)
        await app.store.set_agent_active("marta", False)
        await agent.send(type="open", conversation=cid)
        exc = await agent.closed()
        assert exc.rcvd is not None and exc.rcvd.code == 1008


# -- the agent socket ----------------------------------------------------------------------


async def test_two_agents_claiming_at_once_only_one_wins(app: App) -> None:
    """Two agents click "claim" at the same moment: one owns it, the other is told."""
    async with (
        chat(app) as client,
        agent_socket(app, "marta") as marta,
        agent_socket(app, "jonas") as jonas,
    ):
        cid = await handed_off(client)
        await asyncio.gather(
            marta.send(type="claim", conversation=cid), jonas.send(type="claim", conversation=cid)
        )

        async def outcome(agent: Agent) -> str:
            while True:
                frame = await agent.recv()
                if frame["type"] == "transcript":
                    return "won"
                if frame["type"] == "error":
                    assert frame["code"] == "already_claimed"
                    return "lost"

        results = sorted(await asyncio.gather(outcome(marta), outcome(jonas)))
        assert results == ["lost", "won"]
        joined = [f for f in await client.until("system") if f["type"] == "agent.joined"]
        assert len(joined) == 1
    conv = await app.store.conversation(cid)
    assert conv.status == "agent" and conv.agent_id is not None


async def test_the_queue_shows_waiting_conversations_with_language_and_preview(app: App) -> None:
    """An agent sees a new Spanish conversation arrive in the queue with its last message."""
    async with agent_socket(app, "marta") as agent, chat(app) as client:
        cid = await handed_off(client)
        while True:
            queue = await agent.expect("queue")
            waiting = [c for c in queue["conversations"] if c["conversation"] == cid]
            if waiting:
                break
        (entry,) = waiting
        assert entry["lang"] == "es" and entry["reason"] == "customer_request"
        assert entry["preview"] == QUESTION_ES and entry["status"] == "queued"


async def test_transcript_shows_original_pivot_and_delivered_text(app: App) -> None:
    """For each message the agent sees what was written, its language, the English and
    what the customer read; the stage trace only when asked for."""
    async with chat(app) as client, agent_socket(app, "marta") as agent:
        cid = await handed_off(client)
        await agent.send(type="open", conversation=cid, trace=True)
        transcript = await agent.expect("transcript", conversation=cid)
    customer, bot = transcript["messages"][:2]
    assert (customer["role"], customer["original"], customer["lang"]) == (
        "customer", QUESTION_ES, "es",
    )  # fmt: skip
    assert customer["pivot"] == "How do I return an item?"
    assert bot["role"] == "bot" and bot["delivered"] and bot["faq_ids"][0] == "returns.start"
    assert isinstance(bot["trace"], list) and bot["trace"]
    assert transcript["status"] == "queued" and transcript["owner"] is False


async def test_an_agent_reply_reaches_the_customer_translated_and_notes_never_do(
    app: App,
) -> None:
    """Marta previews and sends an English reply; the customer reads it in Spanish. Her
    internal note never reaches the customer."""
    app.pipeline.translator.memory.add("en", "es", REPLY_EN, REPLY_ES)
    async with chat(app) as client, agent_socket(app, "marta") as agent:
        cid = await handed_off(client)
        await agent.send(type="claim", conversation=cid)
        await agent.expect("transcript", conversation=cid)
        await client.until("system")
        await agent.send(type="note", conversation=cid, text="VIP customer, refund approved")
        note = await agent.expect("note", conversation=cid)
        assert note["note"]["text"] == "VIP customer, refund approved"
        await agent.send(type="typing", conversation=cid)
        assert await client.recv() == {"type": "typing", "seq": 8, "who": "agent"}
        await agent.send(type="preview", conversation=cid, text=REPLY_EN, id="p1")
        preview = await agent.expect("preview", id="p1")
        assert (preview["delivered"], preview["lang"], preview["warnings"]) == (REPLY_ES, "es", [])
        await agent.send(type="message", conversation=cid, text=REPLY_EN, id="r1")
        sent = await agent.expect("sent", id="r1")
        message = await client.recv()
        assert message == {
            "type": "agent.message", "seq": sent["seq"], "text": REPLY_ES,
            "agent": "marta", "lang": "es",
        }  # fmt: skip
        await client.quiet()
    stored = (await app.store.messages(cid))[-1]
    assert (stored["role"], stored["original_text"], stored["delivered_text"]) == (
        "agent", REPLY_EN, REPLY_ES,
    )  # fmt: skip
    replay = [e.type for e in await app.store.events_after(cid, 0)]
    assert "note" not in replay and "VIP" not in json.dumps(
        [e.payload for e in await app.store.events_after(cid, 0)]
    )


async def test_the_agent_sees_the_customer_typing(app: App) -> None:
    """While Marta has the chat, the customer's typing shows in her console, nowhere else."""
    async with chat(app) as client, agent_socket(app, "marta") as agent:
        cid = await handed_off(client)
        await agent.send(type="claim", conversation=cid)
        await agent.expect("transcript", conversation=cid)
        await client.until("system")
        await client.send(type="typing")
        assert await agent.expect("customer.typing") == {
            "type": "customer.typing", "conversation": cid,
        }  # fmt: skip
        await client.quiet()


async def test_preview_warns_when_the_reply_cannot_be_translated(app: App) -> None:
    """Without a translation the preview says so, and sending is refused unless the agent
    chooses to send the text untranslated."""
    async with chat(app) as client, agent_socket(app, "marta") as agent:
        cid = await handed_off(client)
        await agent.send(type="claim", conversation=cid)
        await agent.expect("transcript", conversation=cid)
        text = "Sorry for the wait, I am checking with the warehouse."
        await agent.send(type="preview", conversation=cid, text=text, id="p1")
        preview = await agent.expect("preview", id="p1")
        assert preview["delivered"] is None
        assert preview["warnings"][0]["code"] == "translation_failed"
        await agent.send(type="message", conversation=cid, text=text, id="r1")
        error = await agent.expect("error", id="r1")
        assert error["code"] == "translation_failed"
        await agent.send(type="message", conversation=cid, text=text, id="r2", untranslated=True)
        await agent.expect("sent", id="r2")
        frames = await client.until("agent.message")
        assert frames[-1]["text"] == text


async def test_preview_warns_when_an_order_number_is_lost(app: App) -> None:
    """A translation that drops the order number is flagged before the agent sends it."""
    text = "Your order #55555 has shipped."
    app.pipeline.translator.memory.add("en", "es", text, "Tu pedido se ha enviado.")
    async with chat(app) as client, agent_socket(app, "marta") as agent:
        cid = await handed_off(client)
        await agent.send(type="preview", conversation=cid, text=text, id="p1")
        preview = await agent.expect("preview", id="p1")
    assert preview["delivered"] == "Tu pedido se ha enviado."
    assert preview["warnings"] == [{"code": "placeholder_lost", "message": "#55555"}]


async def test_an_approved_reply_is_stored_as_a_translation_pair(app: App) -> None:
    """A reply the agent marks as good joins the approved translation memory."""
    app.pipeline.translator.memory.add("en", "es", REPLY_EN, REPLY_ES)
    async with chat(app) as client, agent_socket(app, "marta") as agent:
        cid = await handed_off(client)
        await agent.send(type="claim", conversation=cid)
        await agent.expect("transcript", conversation=cid)
        await agent.send(type="message", conversation=cid, text=REPLY_EN, id="r1", approve=True)
        assert (await agent.expect("sent", id="r1"))["approved"] is True
    assert ("en", "es", REPLY_EN, REPLY_ES) in await app.store.approved_translations()


async def test_only_the_owner_can_reply_and_an_admin_can_reassign(app: App) -> None:
    """Jonas cannot write in Marta's conversation; the admin hands it to him, then he can."""
    app.pipeline.translator.memory.add("en", "es", REPLY_EN, REPLY_ES)
    async with (
        chat(app) as client,
        agent_socket(app, "marta") as marta,
        agent_socket(app, "jonas") as jonas,
        agent_socket(app, "ana", "admin") as admin,
    ):
        cid = await handed_off(client)
        await marta.send(type="claim", conversation=cid)
        await marta.expect("transcript", conversation=cid)
        await jonas.send(type="message", conversation=cid, text=REPLY_EN, id="r1")
        assert (await jonas.expect("error", id="r1"))["code"] == "not_owner"
        await jonas.send(type="reassign", conversation=cid, agent="jonas")
        assert (await jonas.expect("error"))["code"] == "forbidden"
        await admin.send(type="reassign", conversation=cid, agent="jonas")
        await admin.expect("reassigned", conversation=cid)
        await jonas.send(type="message", conversation=cid, text=REPLY_EN, id="r2")
        await jonas.expect("sent", id="r2")
        await marta.send(type="message", conversation=cid, text=REPLY_EN, id="r3")
        assert (await marta.expect("error", id="r3"))["code"] == "not_owner"


async def test_release_gives_the_conversation_back_to_the_bot(app: App) -> None:
    """The agent releases the chat: the customer is told and the bot answers again."""
    async with chat(app) as client, agent_socket(app, "marta") as agent:
        cid = await handed_off(client)
        await agent.send(type="claim", conversation=cid)
        await agent.expect("transcript", conversation=cid)
        await client.until("system")
        await agent.send(type="release", conversation=cid)
        await agent.expect("released", conversation=cid)
        left = await client.until("system")
        assert [f["type"] for f in left] == ["agent.left", "system"]
        reply = (await client.ask("m2", RETURN_ES))[-1]
        assert reply["type"] == "reply"


async def test_close_ends_the_conversation_and_a_new_message_restarts_the_bot(
    app: App,
) -> None:
    """The agent closes the chat; if the customer writes again the bot answers."""
    async with chat(app) as client, agent_socket(app, "marta") as agent:
        cid = await handed_off(client)
        await agent.send(type="claim", conversation=cid)
        await agent.expect("transcript", conversation=cid)
        await agent.send(type="close", conversation=cid)
        await agent.expect("released", conversation=cid, status="closed")
        frames = await client.until("agent.left")
        note = await client.recv()
        assert note["type"] == "system" and "marta" in note["text"]
        assert (await app.store.conversation(cid)).status == "closed"
        reply = (await client.ask("m2", RETURN_ES))[-1]
        assert reply["type"] == "reply"
        assert frames


async def test_canned_answers_come_localized_for_the_customer(app: App, pipeline: Pipeline) -> None:
    """The agent picks a FAQ answer; it arrives already in the customer's Spanish."""
    async with chat(app) as client, agent_socket(app, "marta") as agent:
        cid = await handed_off(client)
        await agent.send(type="canned", conversation=cid, faq="returns.start")
        canned = await agent.expect("canned", conversation=cid)
    where = locality_for(pipeline.knowledge, "es", locale_hint="es-ES")
    assert canned["text"] == pipeline.localizer.curated("returns.start", where)


async def test_a_conversation_is_saved_as_a_replay_test(app: App) -> None:
    """ "Save as replay test" gives a replay file that loads, holds the customer's Spanish
    question with the FAQ it got pinned, and the button press for a person."""
    from bot.replay.format import loads

    async with chat(app) as client, agent_socket(app, "marta") as agent:
        cid = await handed_off(client)
        await agent.send(type="replay", conversation=cid)
        saved = await agent.expect("replay", conversation=cid)
    assert saved["file"] == f"{cid}.yaml"
    (conversation,) = loads(saved["yaml"]).conversations
    first = conversation.turns[0]
    assert first.text == QUESTION_ES
    assert first.expect is not None and first.expect.faq
    assert any(t.kind == "action" for t in conversation.turns)
    assert cid in json.loads(saved["cassette"])["conversations"]


async def test_nobody_claims_in_time_and_the_customer_leaves_a_message(start: Any) -> None:
    """Past queue_timeout the customer is told in Spanish and may leave a message, which
    shows up as a ticket in the console; the bot takes the chat back."""
    async with start() as app:
        app.desk.queue_timeout = 0.3
        async with chat(app) as client, agent_socket(app, "marta") as agent:
            cid = await handed_off(client)
            frames = await client.until("handoff.timeout")
            note = await client.recv()
            assert note["type"] == "system" and "mensaje" in note["text"]
            await client.send(type="ticket", text="Llamadme al móvil, por favor")
            cancelled = await client.until("handoff.cancelled")
            assert cancelled and (await client.recv())["type"] == "system"
            while True:
                queue = await agent.expect("queue")
                if queue["tickets"]:
                    break
            (ticket,) = queue["tickets"]
            assert (ticket["conversation"], ticket["lang"]) == (cid, "es")
            assert ticket["text"] == "Llamadme al móvil, por favor"
            assert frames
        assert (await app.store.conversation(cid)).status == "bot"


# -- console page and CLI ------------------------------------------------------------------


async def test_the_console_page_is_served_with_a_strict_policy(app: App) -> None:
    """/console loads the console script and stylesheet; no inline script may run."""
    from tests.test_server import http_get

    status, headers, body = await http_get(app, "/console")
    assert status == 200 and b"console.js" in body
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    for path in ("/console.js", "/console.css"):
        status, _, _ = await http_get(app, path)
        assert status == 200


def test_bot_agent_add_list_disable(tmp_path: Path) -> None:
    """An operator adds an agent (password on stdin), lists and disables them."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"

    async def migrate() -> None:
        async with Store(DatabaseConfig(url=url)) as store:
            await store.upgrade()

    asyncio.run(migrate())
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}

    def bot(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "bot.cli", "agent", *args, "--db", url],
            input=stdin, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
            check=False,
        )  # fmt: skip

    added = bot("add", "marta", "--role", "admin", "--password-stdin", stdin=PASSWORD + "\n")
    assert added.returncode == 0, added.stderr
    assert bot("add", "ana", "--password-stdin", stdin="short\n").returncode == 2
    assert bot("list").stdout == "marta\tadmin\tactive\n"
    assert bot("disable", "marta").returncode == 0
    assert bot("list").stdout == "marta\tadmin\tdisabled\n"


def _basic(name: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode()


# -- in a real browser ---------------------------------------------------------------------


@pytest.mark.browser
@pytest.mark.slow
async def test_an_agent_answers_a_spanish_customer_in_the_browser(app: App) -> None:
    """Marta logs in, reads the Spanish question beside its English pivot, previews and
    sends an English reply; the customer's widget shows it in Spanish. Her note never
    reaches the customer, and HTML a customer typed shows as text in the console."""
    from tests.test_browser import (
        CHROMIUM,
        CHROMIUM_ARGS,
        SCREENSHOTS,
        WAIT_MS,
        XSS,
        open_widget,
    )

    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    playwright_api = pytest.importorskip("playwright.async_api")
    app.pipeline.translator.memory.add("en", "es", REPLY_EN, REPLY_ES)
    await add_agent(app, "marta")
    dialogs: list[str] = []
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            customer = await (await browser.new_context()).new_page()
            console = await (await browser.new_context()).new_page()
            for page in (customer, console):
                page.set_default_timeout(WAIT_MS)
                page.on("dialog", lambda d: dialogs.append(d.message))
            await open_widget(customer, app, "es")
            await customer.locator("textarea.mg-input").fill(QUESTION_ES)
            await customer.locator("textarea.mg-input").press("Enter")
            await customer.locator(".mg-msg[data-role=bot]").first.wait_for()
            await customer.locator("button.mg-human").click()
            await customer.locator("button.mg-cancel").wait_for(state="visible")
            await customer.locator("textarea.mg-input").fill(XSS)
            await customer.locator("textarea.mg-input").press("Enter")

            await console.goto(f"{app.url}/console")
            await console.locator("#login input[name=name]").fill("marta")
            await console.locator("#login input[name=password]").fill(PASSWORD)
            await console.locator("#login button[type=submit]").click()
            await console.locator(".cs-queue .cs-item").first.click()
            original = console.locator(".cs-msg[data-role=customer] .cs-original .cs-text")
            await original.filter(has_text=QUESTION_ES).wait_for()
            pivot = console.locator(".cs-msg[data-role=customer] .cs-pivot .cs-text").first
            assert await pivot.text_content() == "How do I return an item?"
            await original.filter(has_text="<script>").wait_for()  # the payload, as text
            assert await console.locator(".cs-log img, .cs-log script").count() == 0

            await console.locator("button.cs-claim").click()
            await console.locator("textarea.cs-reply:not([disabled])").wait_for()
            await console.locator("textarea.cs-note").fill("VIP: refund approved by Ana")
            await console.locator("button.cs-add-note").click()
            await console.locator(".cs-note-item", has_text="VIP").wait_for()
            await console.locator("textarea.cs-reply").fill(REPLY_EN)
            await console.locator(".cs-preview", has_text=REPLY_ES).wait_for()
            await console.locator("button.cs-send").click()

            await customer.locator(".mg-msg[data-role=agent]", has_text=REPLY_ES).wait_for()
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            await console.screenshot(path=str(SCREENSHOTS / "console.png"))
            assert "VIP" not in await customer.content()
            assert dialogs == []
        finally:
            await browser.close()


@pytest.mark.browser
@pytest.mark.slow
async def test_a_customer_nobody_answers_leaves_a_message_in_the_browser(app: App) -> None:
    """Nobody claims the Spanish customer's request in time: the widget offers "Dejar un
    mensaje"; the message they type becomes a ticket and the assistant is back."""
    from tests.test_browser import CHROMIUM, CHROMIUM_ARGS, WAIT_MS, open_widget

    if not CHROMIUM.exists():
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install -y chromium)")
    playwright_api = pytest.importorskip("playwright.async_api")
    app.desk.queue_timeout = 0.5
    async with playwright_api.async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = await browser.new_page()
            page.set_default_timeout(WAIT_MS)
            await open_widget(page, app, "es")
            await page.locator("button.mg-human").click()
            await page.locator("button.mg-cancel", has_text="Cancelar solicitud").wait_for()
            leave = page.locator("button.mg-leave", has_text="Dejar un mensaje")
            await leave.click()
            assert await page.locator("button.mg-cancel").text_content() == "Volver al asistente"
            await page.locator("textarea.mg-input").fill("Llamadme mañana, por favor")
            await page.locator("textarea.mg-input").press("Enter")
            await page.locator(
                ".mg-msg[data-role=system]", has_text="hemos pasado tu mensaje"
            ).wait_for()
            await page.locator("button.mg-human").wait_for(state="visible")
            assert await leave.is_hidden()
        finally:
            await browser.close()
    (ticket,) = await app.store.tickets()
    assert (ticket["text"], ticket["lang"]) == ("Llamadme mañana, por favor", "es")
