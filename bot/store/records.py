"""What the store hands out and takes in: plain frozen values, never ORM objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ConversationInfo:
    id: str
    language: str
    locale: str | None
    market: str | None
    status: str  # bot | queued | agent | closed
    last_seq: int
    no_answer_streak: int
    agent_id: int | None = None  # the agent who owns it while status is "agent"


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    type: str
    payload: dict[str, Any]

    def frame(self) -> dict[str, Any]:
        """The event as sent on the wire."""
        return {"type": self.type, "seq": self.seq, **self.payload}


@dataclass(frozen=True)
class StoredMessage:
    id: int
    client_id: str | None
    seq: int | None
    text: str
    replied: bool


@dataclass(frozen=True)
class Accepted:
    """A customer message after ``Store.accept_message``: new, or the one stored before."""

    message: StoredMessage
    ack: StoredEvent
    created: bool
    status: str  # the conversation's status when the message was stored


@dataclass(frozen=True)
class Reply:
    """A finished bot turn, as the store records it."""

    text: str
    language: str
    faq_ids: list[str]
    source: str
    answered: bool
    pivot: str | None = None  # the customer message in the pivot language
    reply_pivot: str | None = None  # the reply in the pivot language
    handoff_reason: str | None = None
    trace: list[dict[str, Any]] = field(default_factory=list)
    # What the customer sees as the reply's sources: [{"id": faq id, "title": localized}].
    sources: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class AgentInfo:
    id: int
    name: str
    role: str  # agent | admin
    active: bool

    @property
    def admin(self) -> bool:
        return self.role == "admin"
