"""Agent-approved replies from the store, as fine-tuning turns (PII removed).

An agent approves a reply in the console (``approve: true`` on a message, bot/server/agent.py):
the pair (what the agent wrote, what the customer read) is stored as an ``origin="agent"``
translation-memory entry with ``approved_at``. A turn for the dataset is the customer message
that the approved agent message answered (the last customer message before it in the same
conversation), with the FAQ ids the bot had found for that message. Both texts pass through
``bot.redact`` before they leave this module. Read-only.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import and_, select
from sqlalchemy.engine import make_url

from bot.config import DatabaseConfig
from bot.finetune.data import ApprovedTurn
from bot.redact import redact
from bot.store import Store
from bot.store.engine import is_sqlite
from bot.store.models import Message, TranslationMemoryEntry


def database_exists(url: str) -> bool:
    """False for an SQLite file that was never created (no conversations: nothing to read)."""
    if not is_sqlite(url):
        return True
    database = make_url(url).database
    return database is not None and (database == ":memory:" or Path(database).is_file())


async def approved_turns(config: DatabaseConfig) -> list[ApprovedTurn] | None:
    """Every approved agent reply with the customer message it answered; None: no database."""
    if not database_exists(config.url):
        return None
    async with Store(config) as store:
        if not await store.ping():
            return None
        async with store.engine.connect() as conn:
            approved = (
                await conn.execute(
                    select(Message.conversation_id, Message.seq, Message.language,
                           Message.delivered_text)
                    .join(
                        TranslationMemoryEntry,
                        and_(
                            TranslationMemoryEntry.origin == "agent",
                            TranslationMemoryEntry.approved_at.is_not(None),
                            TranslationMemoryEntry.source_text == Message.original_text,
                            TranslationMemoryEntry.target_text == Message.delivered_text,
                            TranslationMemoryEntry.target_lang == Message.language,
                        ),
                    )
                    .where(Message.role == "agent")
                    .order_by(Message.conversation_id, Message.seq)
                )
            ).all()  # fmt: skip
            turns = []
            for conversation, seq, language, reply in approved:
                asked = (
                    await conn.execute(
                        select(Message.original_text, Message.faq_ids, Message.id)
                        .where(
                            Message.conversation_id == conversation,
                            Message.role == "customer",
                            Message.seq < seq,
                        )
                        .order_by(Message.seq.desc())
                        .limit(1)
                    )
                ).first()
                if asked is None or not reply or not language:
                    continue
                faq_ids = list(asked.faq_ids or []) or await _bot_faq_ids(conn, asked.id)
                turns.append(
                    ApprovedTurn(
                        conversation=conversation,
                        language=language,
                        question=redact(asked.original_text).text,
                        reply=redact(reply).text,
                        faq_ids=tuple(str(f) for f in faq_ids),
                    )
                )
            return turns


async def _bot_faq_ids(conn: object, message_id: int) -> list[str]:
    """The FAQ ids of the bot's reply to a customer message (where the store keeps them)."""
    from sqlalchemy.ext.asyncio import AsyncConnection

    assert isinstance(conn, AsyncConnection)
    row = (
        await conn.execute(
            select(Message.faq_ids)
            .where(Message.reply_to == message_id, Message.role == "bot")
            .limit(1)
        )
    ).first()
    return [str(f) for f in (row[0] if row else [])]
