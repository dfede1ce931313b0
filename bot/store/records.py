"""What the store hands out and takes in: plain frozen values, never ORM objects."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from bot.frames import Event, stored_event


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
class TurnRecords:
    """What a bot turn reads from the store before it answers (``Store.turn_records``)."""

    conversation: ConversationInfo
    history: list[tuple[str, str]]  # the last messages: (role, pivot text), oldest first
    asked: list[tuple[str, str | None]]  # the customer's: (text, FAQ id of the reply or None)


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    type: str
    payload: dict[str, Any]

    def frame(self) -> Event:
        """The event as sent on the wire: rebuilt by the builder that checked its payload
        before it was stored (bot/frames.py), so the two cannot drift."""
        return stored_event(self.type, self.seq, self.payload)


@dataclass(frozen=True)
class StoredMessage:
    id: int
    client_id: str | None
    seq: int | None
    text: str
    replied: bool
    choice: str | None = None  # the FAQ id the customer picked from a clarify reply's choices


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
    # A clarify reply: the entries the customer may pick from, same shape as ``sources``.
    choices: list[dict[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Pick:
    """A customer's pick between a clarify reply's choices: a labelled retrieval example."""

    conversation_id: str
    question: str  # the customer message the bot could not decide on
    language: str
    offered: list[str]  # the FAQ ids it offered
    faq_id: str  # the one the customer picked
    at: datetime


@dataclass(frozen=True)
class AgentInfo:
    id: int
    name: str
    role: str  # agent | admin
    active: bool

    @property
    def admin(self) -> bool:
        return self.role == "admin"
