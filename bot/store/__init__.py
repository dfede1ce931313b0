"""Persistence: conversations, the event log, messages, handoffs, agents, translation memory
and feedback, in SQLite (default) or PostgreSQL. ``Store`` is the only way in."""

from __future__ import annotations

from bot.store.engine import resolve_url
from bot.store.records import (
    Accepted,
    AgentInfo,
    ConversationInfo,
    Pick,
    Reply,
    StoredEvent,
    StoredMessage,
    TurnRecords,
)
from bot.store.store import Store

__all__ = [
    "Accepted",
    "AgentInfo",
    "ConversationInfo",
    "Pick",
    "Reply",
    "Store",
    "StoredEvent",
    "StoredMessage",
    "TurnRecords",
    "resolve_url",
]
