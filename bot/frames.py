"""Every frame the server sends, typed and built here and nowhere else (docs/protocol.md).

Customer socket (``/ws/chat``): ``welcome``, ``error`` and the conversation's events, each
with a ``seq``: ``ack``, ``typing``, ``reply.delta``, ``reply``, ``handoff``,
``handoff.cancelled``, ``handoff.timeout``, ``agent.joined``, ``agent.message``,
``agent.left``, ``system``. The ``STORED_EVENTS`` are kept as (type, seq, payload) and
replayed on resume: ``stored_event`` builds an event from its type and payload with the
same builder whether the store is about to write it or has read it back, so what is stored
and what is sent cannot drift (an unknown field or a missing one raises ``TypeError``).

Agent socket (``/ws/agent``): ``ready``, ``queue``, ``transcript``, ``conversation.event``,
``transcript.changed``, ``customer.typing``, ``preview``, ``sent``, ``note``, ``canned``,
``replay``, ``released``, ``reassigned``, ``error``.

The JavaScript mirrors both sets (the ``HANDLERS`` of bot/static/widget.js and console.js);
tests/test_frames.py checks that these TypedDicts, docs/protocol.md's tables and those
handlers name the same frames and fields. This module imports nothing of the bot: the store,
below the server, builds its events here too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal, NotRequired, TypedDict

VERSION = 1

# -- customer socket ---------------------------------------------------------------------


class Welcome(TypedDict):
    type: Literal["welcome"]
    v: int
    conversation: str
    resume: str
    seq: int
    lang: str


class Error(TypedDict):
    type: Literal["error"]
    code: str
    message: str
    id: NotRequired[str]  # the message frame's id, when the error concerns one
    reason: NotRequired[str]  # bad_resume: why the token was refused


class Ack(TypedDict):
    type: Literal["ack"]
    seq: int
    id: str
    text: str


class Typing(TypedDict):
    type: Literal["typing"]
    seq: int
    who: str  # bot | agent


class ReplyDelta(TypedDict):
    type: Literal["reply.delta"]
    seq: int
    text: str
    reply_to: str | None


class Source(TypedDict):
    id: str
    title: str


class Reply(TypedDict):
    type: Literal["reply"]
    seq: int
    text: str
    lang: str
    faq_ids: list[str]
    sources: list[Source]
    reply_to: str | None
    choices: NotRequired[list[Source]]  # a clarify reply: the entries to pick from


class Handoff(TypedDict):
    type: Literal["handoff"]
    seq: int
    reason: str


class HandoffCancelled(TypedDict):
    type: Literal["handoff.cancelled"]
    seq: int


class HandoffTimeout(TypedDict):
    type: Literal["handoff.timeout"]
    seq: int


class AgentJoined(TypedDict):
    type: Literal["agent.joined"]
    seq: int
    agent: str


class AgentMessage(TypedDict):
    type: Literal["agent.message"]
    seq: int
    text: str
    agent: str
    lang: str


class AgentLeft(TypedDict):
    type: Literal["agent.left"]
    seq: int
    agent: str


class System(TypedDict):
    type: Literal["system"]
    seq: int
    text: str


Event = (
    Ack | Typing | ReplyDelta | Reply | Handoff | HandoffCancelled | HandoffTimeout
    | AgentJoined | AgentMessage | AgentLeft | System
)  # fmt: skip
CustomerFrame = Welcome | Error | Event


def welcome(conversation: str, resume: str, seq: int, lang: str) -> Welcome:
    return {
        "type": "welcome",
        "v": VERSION,
        "conversation": conversation,
        "resume": resume,
        "seq": seq,
        "lang": lang,
    }


def error(
    code: str, message: str, message_id: str | None = None, *, reason: str | None = None
) -> Error:
    frame: Error = {"type": "error", "code": code, "message": message}
    if message_id is not None:
        frame["id"] = message_id
    if reason is not None:
        frame["reason"] = reason
    return frame


def ack(seq: int, *, id: str, text: str) -> Ack:
    return {"type": "ack", "seq": seq, "id": id, "text": text}


def typing(seq: int, *, who: Literal["bot", "agent"]) -> Typing:
    return {"type": "typing", "seq": seq, "who": who}


def reply_delta(seq: int, *, text: str, reply_to: str | None) -> ReplyDelta:
    return {"type": "reply.delta", "seq": seq, "text": text, "reply_to": reply_to}


def reply(
    seq: int,
    *,
    text: str,
    lang: str,
    faq_ids: Sequence[str],
    sources: Sequence[Mapping[str, str]],
    reply_to: str | None,
    choices: Sequence[Mapping[str, str]] = (),
) -> Reply:
    frame: Reply = {
        "type": "reply",
        "seq": seq,
        "text": text,
        "lang": lang,
        "faq_ids": list(faq_ids),
        "sources": [_source(s) for s in sources],
        "reply_to": reply_to,
    }
    if choices:
        frame["choices"] = [_source(c) for c in choices]
    return frame


def _source(entry: Mapping[str, str]) -> Source:
    return {"id": entry["id"], "title": entry["title"]}


def handoff(seq: int, *, reason: str) -> Handoff:
    return {"type": "handoff", "seq": seq, "reason": reason}


def handoff_cancelled(seq: int) -> HandoffCancelled:
    return {"type": "handoff.cancelled", "seq": seq}


def handoff_timeout(seq: int) -> HandoffTimeout:
    return {"type": "handoff.timeout", "seq": seq}


def agent_joined(seq: int, *, agent: str) -> AgentJoined:
    return {"type": "agent.joined", "seq": seq, "agent": agent}


def agent_message(seq: int, *, text: str, agent: str, lang: str) -> AgentMessage:
    return {"type": "agent.message", "seq": seq, "text": text, "agent": agent, "lang": lang}


def agent_left(seq: int, *, agent: str) -> AgentLeft:
    return {"type": "agent.left", "seq": seq, "agent": agent}


def system(seq: int, *, text: str) -> System:
    return {"type": "system", "seq": seq, "text": text}


# Events kept in the replay log, by type; the others are sent once and never replayed.
_STORED: dict[str, Callable[..., Event]] = {
    "ack": ack,
    "reply": reply,
    "handoff": handoff,
    "handoff.cancelled": handoff_cancelled,
    "handoff.timeout": handoff_timeout,
    "agent.joined": agent_joined,
    "agent.message": agent_message,
    "agent.left": agent_left,
    "system": system,
}
STORED_EVENTS = frozenset(_STORED)
TRANSIENT_EVENTS = frozenset({"typing", "reply.delta"})


def stored_event(kind: str, seq: int, payload: Mapping[str, Any]) -> Event:
    """A stored event (its type, seq and payload) as sent on the wire; also how the store
    checks a payload before writing it. ``ValueError``: not a stored type; ``TypeError``:
    a field the type does not have, or one it needs missing."""
    builder = _STORED.get(kind)
    if builder is None:
        raise ValueError(f"{kind!r} is not a stored event type")
    return builder(seq, **payload)


def payload_of(event: Mapping[str, Any]) -> dict[str, Any]:
    """What the store keeps of an event: everything but its ``type`` and ``seq``."""
    return {key: value for key, value in event.items() if key not in ("type", "seq")}


# -- agent socket ------------------------------------------------------------------------


class AgentRef(TypedDict):
    name: str
    role: str


class FaqRef(TypedDict):
    id: str
    question: str


class Ready(TypedDict):
    type: Literal["ready"]
    v: int
    agent: AgentRef
    languages: list[str]
    faqs: list[FaqRef]


class Queue(TypedDict):
    type: Literal["queue"]
    conversations: list[dict[str, Any]]
    tickets: list[dict[str, Any]]


class Transcript(TypedDict):
    type: Literal["transcript"]
    conversation: str
    status: str
    owner: bool
    lang: str
    locale: str | None
    messages: list[dict[str, Any]]
    notes: list[dict[str, Any]]


class ConversationEvent(TypedDict):
    type: Literal["conversation.event"]
    conversation: str
    event: Mapping[str, Any]  # an ``Event`` of the customer socket


class TranscriptChanged(TypedDict):
    type: Literal["transcript.changed"]
    conversation: str


class CustomerTyping(TypedDict):
    type: Literal["customer.typing"]
    conversation: str


class PreviewWarning(TypedDict):
    code: str  # translation_failed | fuzzy_memory | placeholder_lost | ...
    message: str


class Preview(TypedDict):
    type: Literal["preview"]
    conversation: str
    id: Any  # the client's preview id, echoed as sent
    text: str
    lang: str
    delivered: str | None
    engine: str | None
    warnings: list[PreviewWarning]
    back: NotRequired[str]  # the translation translated back, when checked
    agreement: NotRequired[float]  # of ``back`` with ``text`` (chrF++, 0-100)
    ms: NotRequired[float]  # translation time


class Sent(TypedDict):
    type: Literal["sent"]
    conversation: str
    id: Any  # the client's message id, echoed as sent
    seq: int
    delivered: str
    approved: bool


class Note(TypedDict):
    type: Literal["note"]
    conversation: str
    note: dict[str, Any]


class Canned(TypedDict):
    type: Literal["canned"]
    conversation: str
    faq: str
    text: str
    lang: str


class Replay(TypedDict):
    type: Literal["replay"]
    conversation: str
    file: str
    yaml: str
    cassette: str


class Released(TypedDict):
    type: Literal["released"]
    conversation: str
    status: str


class Reassigned(TypedDict):
    type: Literal["reassigned"]
    conversation: str
    agent: str


class AgentError(TypedDict):
    type: Literal["error"]
    code: str
    message: str
    conversation: NotRequired[str]
    id: NotRequired[str]


AgentFrame = (
    Ready | Queue | Transcript | ConversationEvent | TranscriptChanged | CustomerTyping
    | Preview | Sent | Note | Canned | Replay | Released | Reassigned | AgentError
)  # fmt: skip


def ready(*, agent: AgentRef, languages: Sequence[str], faqs: Sequence[tuple[str, str]]) -> Ready:
    return {
        "type": "ready",
        "v": VERSION,
        "agent": agent,
        "languages": list(languages),
        "faqs": [{"id": faq_id, "question": question} for faq_id, question in faqs],
    }


def queue(*, conversations: list[dict[str, Any]], tickets: list[dict[str, Any]]) -> Queue:
    return {"type": "queue", "conversations": conversations, "tickets": tickets}


def transcript(
    *,
    conversation: str,
    status: str,
    owner: bool,
    lang: str,
    locale: str | None,
    messages: list[dict[str, Any]],
    notes: list[dict[str, Any]],
) -> Transcript:
    return {
        "type": "transcript",
        "conversation": conversation,
        "status": status,
        "owner": owner,
        "lang": lang,
        "locale": locale,
        "messages": messages,
        "notes": notes,
    }


def conversation_event(conversation: str, event: Mapping[str, Any]) -> ConversationEvent:
    return {"type": "conversation.event", "conversation": conversation, "event": event}


def transcript_changed(conversation: str) -> TranscriptChanged:
    return {"type": "transcript.changed", "conversation": conversation}


def customer_typing(conversation: str) -> CustomerTyping:
    return {"type": "customer.typing", "conversation": conversation}


def preview(
    *,
    conversation: str,
    id: Any,
    text: str,
    lang: str,
    delivered: str | None,
    engine: str | None,
    warnings: list[PreviewWarning],
    back: str | None = None,
    agreement: float | None = None,
    ms: float | None = None,
) -> Preview:
    frame: Preview = {
        "type": "preview",
        "conversation": conversation,
        "id": id,
        "text": text,
        "lang": lang,
        "delivered": delivered,
        "engine": engine,
        "warnings": warnings,
    }
    if back is not None:
        frame["back"] = back
    if agreement is not None:
        frame["agreement"] = round(agreement, 1)
    if ms is not None:
        frame["ms"] = round(ms, 1)
    return frame


def sent(*, conversation: str, id: Any, seq: int, delivered: str, approved: bool) -> Sent:
    return {
        "type": "sent",
        "conversation": conversation,
        "id": id,
        "seq": seq,
        "delivered": delivered,
        "approved": approved,
    }


def note(*, conversation: str, note: dict[str, Any]) -> Note:
    return {"type": "note", "conversation": conversation, "note": note}


def canned(*, conversation: str, faq: str, text: str, lang: str) -> Canned:
    return {"type": "canned", "conversation": conversation, "faq": faq, "text": text, "lang": lang}


def replay(*, conversation: str, file: str, yaml: str, cassette: str) -> Replay:
    return {
        "type": "replay",
        "conversation": conversation,
        "file": file,
        "yaml": yaml,
        "cassette": cassette,
    }


def released(*, conversation: str, status: str) -> Released:
    return {"type": "released", "conversation": conversation, "status": status}


def reassigned(*, conversation: str, agent: str) -> Reassigned:
    return {"type": "reassigned", "conversation": conversation, "agent": agent}


def agent_error(
    code: str, message: str, *, conversation: object = None, id: object = None
) -> AgentError:
    """An agent-socket ``error``, naming the frame's conversation and id when they were
    strings."""
    frame: AgentError = {"type": "error", "code": code, "message": message}
    if isinstance(conversation, str):
        frame["conversation"] = conversation
    if isinstance(id, str):
        frame["id"] = id
    return frame
