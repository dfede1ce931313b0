"""Retention and erasure: what the shop must be able to delete (GDPR, the shop sells in the EU).

- ``purge(store, older_than_days)``: conversations whose last activity is older than the
  configured age (``privacy.retention_days``), with everything stored under them;
- ``erase(store, conversation_ids)``: one customer's conversations, on request;
- ``conversations_of(store, email)``: the conversations in which a customer wrote that e-mail
  address (the only identity a chat customer gives), to erase by e-mail.

Deleting a conversation deletes its events, messages, handoffs, notes, tickets and feedback
through the schema's ``ON DELETE CASCADE`` (SQLite with ``foreign_keys=ON``, PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, func, or_, select

from bot.store.models import Conversation, Message
from bot.store.store import Store


async def erase(store: Store, conversation_ids: Sequence[str]) -> int:
    """Delete these conversations and all stored under them; the number deleted."""
    if not conversation_ids:
        return 0
    async with store._write() as session:
        result = await session.execute(
            delete(Conversation).where(Conversation.id.in_(list(conversation_ids)))
        )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def conversations_of(store: Store, email: str) -> list[str]:
    """Conversations in which the customer wrote ``email`` (case-insensitive)."""
    needle = email.strip().lower()
    if "@" not in needle:
        raise ValueError(f"not an e-mail address: {email!r}")
    pattern = f"%{needle}%"
    async with store._session() as session:
        rows = await session.scalars(
            select(Message.conversation_id)
            .where(
                Message.role == "customer",
                or_(
                    func.lower(Message.original_text).like(pattern),
                    func.lower(Message.pivot_text).like(pattern),
                ),
            )
            .distinct()
        )
        return sorted(rows)


async def purge(store: Store, older_than_days: float, *, now: datetime | None = None) -> int:
    """Delete conversations idle for longer than ``older_than_days``; the number deleted."""
    cutoff = (now or datetime.now(UTC)) - timedelta(days=older_than_days)
    async with store._session() as session:
        ids = list(
            await session.scalars(select(Conversation.id).where(Conversation.updated_at < cutoff))
        )
    return await erase(store, ids)
