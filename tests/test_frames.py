"""Server frames: built in one place (bot/frames.py), as docs/protocol.md lists them, mirrored
by the widget and the console, and stored events replayed exactly as they were sent."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any, NotRequired

import pytest

from bot import frames
from bot.config import DatabaseConfig
from bot.store import Store, StoredEvent

ROOT = Path(__file__).resolve().parent.parent
DOC = (ROOT / "docs" / "protocol.md").read_text(encoding="utf-8")
WIDGET = (ROOT / "bot" / "static" / "widget.js").read_text(encoding="utf-8")
CONSOLE = (ROOT / "bot" / "static" / "console.js").read_text(encoding="utf-8")

# One example of every frame, built by its builder.
CUSTOMER: dict[str, Any] = {
    "welcome": frames.welcome("c_1", "r_1", 0, "es"),
    "ack": frames.ack(1, id="m1", text="hola"),
    "typing": frames.typing(2, who="bot"),
    "reply.delta": frames.reply_delta(3, text="Tu", reply_to="m1"),
    "reply": frames.reply(
        4,
        text="Tu pedido…",
        lang="es",
        faq_ids=["orders.track"],
        sources=[{"id": "orders.track", "title": "¿Dónde está mi pedido?"}],
        reply_to="m1",
    ),
    "handoff": frames.handoff(5, reason="customer_request"),
    "handoff.cancelled": frames.handoff_cancelled(6),
    "handoff.timeout": frames.handoff_timeout(7),
    "agent.joined": frames.agent_joined(8, agent="Marta"),
    "agent.message": frames.agent_message(9, text="¡Hola!", agent="Marta", lang="es"),
    "agent.left": frames.agent_left(10, agent="Marta"),
    "system": frames.system(11, text="Marta se ha unido"),
    "error": frames.error("too_long", "Demasiado largo", "m1"),
}
AGENT: dict[str, Any] = {
    "ready": frames.ready(
        agent={"name": "marta", "role": "agent"},
        languages=["en", "es"],
        faqs=[("returns.start", "How do I return an item?")],
    ),
    "queue": frames.queue(conversations=[], tickets=[]),
    "transcript": frames.transcript(
        conversation="c_1",
        status="agent",
        owner=True,
        lang="es",
        locale="es-ES",
        messages=[],
        notes=[],
    ),
    "conversation.event": frames.conversation_event("c_1", frames.system(1, text="x")),
    "transcript.changed": frames.transcript_changed("c_1"),
    "customer.typing": frames.customer_typing("c_1"),
    "preview": frames.preview(
        conversation="c_1",
        id="p1",
        text="Hi",
        lang="es",
        delivered="Hola",
        engine="llm",
        warnings=[],
    ),
    "sent": frames.sent(conversation="c_1", id="r1", seq=9, delivered="Hola", approved=False),
    "note": frames.note(conversation="c_1", note={"text": "VIP"}),
    "canned": frames.canned(conversation="c_1", faq="returns.start", text="…", lang="es"),
    "replay": frames.replay(conversation="c_1", file="c_1.yaml", yaml="", cassette="{}"),
    "released": frames.released(conversation="c_1", status="bot"),
    "reassigned": frames.reassigned(conversation="c_1", agent="ana"),
    "error": frames.agent_error("not_found", "no such conversation", conversation="c_1", id="x"),
}


def _table(heading: str) -> dict[str, set[str]]:
    """The rows of the first table after ``heading``: frame type -> the fields it names."""
    section = DOC.split(heading, 1)[1]
    rows: dict[str, set[str]] = {}
    for line in section.splitlines():
        if not line.startswith("|"):
            if rows:
                break
            continue
        cells = [c.strip() for c in line.strip("|").split("|")]
        types = re.findall(r"`([a-z.]+)`", cells[0])
        if not types or cells[0].startswith("type"):
            continue
        listed = re.sub(r"\{[^}]*\}", "", cells[1].split("—")[0])  # not the nested keys
        fields = set(re.findall(r"`([a-z_]+)`", listed))
        for kind in types:
            rows[kind] = fields
    return rows


def _required(typed: type) -> set[str]:
    hints = typing.get_type_hints(typed, include_extras=True)
    return {key for key, hint in hints.items() if typing.get_origin(hint) is not NotRequired}


def _all(typed: type) -> set[str]:
    return set(typing.get_type_hints(typed))


def test_every_customer_event_has_the_fields_the_protocol_lists() -> None:
    """A client written from docs/protocol.md finds every field it was promised."""
    documented = _table("## Server events (`<-`)")
    assert set(documented) == set(CUSTOMER)
    for kind, fields in documented.items():
        frame = CUSTOMER[kind]
        assert frame["type"] == kind
        expected = fields - {"type"}
        if kind != "error":  # every event but error carries seq
            expected.add("seq")
        optional = {"error": {"id", "reason"}, "reply": {"choices"}}.get(kind, set())
        assert expected - optional <= set(frame) <= expected | {"type"}, kind


def test_every_agent_event_has_the_fields_the_protocol_lists() -> None:
    """The console finds in each agent frame the fields docs/protocol.md names for it."""
    documented = _table("## Agent events (`<-`)")
    assert set(documented) == set(AGENT)
    for kind in ("ready", "queue", "transcript", "conversation.event", "transcript.changed"):
        assert set(AGENT[kind]) == documented[kind] | {"type"}, kind
    assert set(AGENT["error"]) == documented["error"] | {"type"}


def test_the_typed_frames_and_the_builders_agree() -> None:
    """Each builder returns exactly its TypedDict's keys: what mypy checks is what is sent."""
    types: dict[str, type] = {
        "welcome": frames.Welcome, "ack": frames.Ack, "typing": frames.Typing,
        "reply.delta": frames.ReplyDelta, "reply": frames.Reply, "handoff": frames.Handoff,
        "handoff.cancelled": frames.HandoffCancelled, "handoff.timeout": frames.HandoffTimeout,
        "agent.joined": frames.AgentJoined, "agent.message": frames.AgentMessage,
        "agent.left": frames.AgentLeft, "system": frames.System, "error": frames.Error,
    }  # fmt: skip
    for kind, typed in types.items():
        frame = CUSTOMER[kind]
        assert _required(typed) <= set(frame) <= _all(typed), kind
    agent_types: dict[str, type] = {
        "ready": frames.Ready, "queue": frames.Queue, "transcript": frames.Transcript,
        "preview": frames.Preview, "sent": frames.Sent, "canned": frames.Canned,
        "replay": frames.Replay, "error": frames.AgentError,
    }  # fmt: skip
    for kind, typed in agent_types.items():
        assert _required(typed) <= set(AGENT[kind]) <= _all(typed), kind


def _handlers(script: str) -> set[str]:
    """The frame types a ``const HANDLERS = {...}`` table of a script handles."""
    body = script.split("const HANDLERS = {", 1)[1].split("\n  };", 1)[0]
    return set(re.findall(r"^ {4}'?([a-z.]+)'?\(", body, re.M))


def test_the_widget_handles_every_customer_event() -> None:
    """Every event the server sends has a handler in the widget (welcome and error apart)."""
    handled = _handlers(WIDGET)
    assert "ev.type === 'welcome'" in WIDGET and "ev.type === 'error'" in WIDGET
    assert handled == set(CUSTOMER) - {"welcome", "error"}
    assert handled == frames.STORED_EVENTS | frames.TRANSIENT_EVENTS


def test_the_console_handles_every_agent_event() -> None:
    """Every frame of the agent socket has a handler in the console."""
    assert _handlers(CONSOLE) == set(AGENT)


def test_a_stored_event_is_replayed_as_it_was_sent() -> None:
    """After a reconnect the customer receives the very frame the live socket showed."""
    for kind in frames.STORED_EVENTS:
        live = CUSTOMER[kind]
        stored = StoredEvent(live["seq"], kind, frames.payload_of(live))
        assert stored.frame() == live


@pytest.mark.parametrize(
    ("kind", "payload", "error"),
    [
        ("system", {"txt": "a typo"}, TypeError),
        ("agent.message", {"text": "hola", "agent": "Marta"}, TypeError),  # no lang
        ("typing", {"who": "bot"}, ValueError),  # transient: never stored
        ("welcome", {}, ValueError),
    ],
)
def test_an_event_the_protocol_does_not_define_is_refused(
    kind: str, payload: dict[str, Any], error: type[Exception]
) -> None:
    """A payload with a field the protocol lacks, or missing one, is never built."""
    with pytest.raises(error):
        frames.stored_event(kind, 1, payload)


async def test_the_store_refuses_to_store_a_malformed_event(db_url: str) -> None:
    """The store cannot write an event that a client could not read back."""
    async with Store(DatabaseConfig(url=db_url)) as store:
        conv, _ = await store.create_conversation(language="es", locale="es-ES", market="EU")
        with pytest.raises(TypeError):
            await store.record_events(conv.id, [("system", {"txt": "a typo"})])
        [event] = await store.record_events(conv.id, [("system", {"text": "Hola"})])
        assert await store.events_after(conv.id, 0) == [event]
        assert event.frame() == frames.system(event.seq, text="Hola")


def test_every_frame_builder_lives_in_one_module() -> None:
    """No server module writes a frame's ``"type"`` by hand: bot/frames.py builds them all."""
    by_hand = re.compile(r"""\{\s*["']type["']\s*:""")
    for path in [*(ROOT / "bot" / "server").glob("*.py"), *(ROOT / "bot" / "store").glob("*.py")]:
        assert not by_hand.search(path.read_text(encoding="utf-8")), path.name
