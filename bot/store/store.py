"""``Store``: the only code that touches the database.

    async with Store(config.database) as store:
        await store.check_schema()
        conv, token = await store.create_conversation(locale="es-ES", language="es")

Sequence numbers: ``conversations.last_seq`` is the highest seq the conversation has
*reserved*; nothing at or below it is ever handed out again, whatever happens to the
process afterwards. A stored event takes its seq in the transaction that stores it. A
transient event (``typing``, ``reply.delta``: sent, never stored) takes one from a block of
``seq_block`` seqs that this store reserved with one ``UPDATE ... RETURNING`` before any of
them is sent and keeps in memory: a streamed reply costs one write per block, not one per
piece. A stored event takes the next seq of that block too while nobody else has reserved
since (``last_seq`` still equals the block's top: checked in its own ``UPDATE``), so seqs stay
dense in one process; otherwise it takes ``last_seq + 1`` and the block is dropped. After a
restart the next block starts above the last reserved one: gaps, never a reused seq.

Callers number one conversation's events under one lock (the server's ``room.emit_lock``),
so a block is never used out of order within a process. Several processes on one
PostgreSQL each reserve their own blocks with the same atomic ``UPDATE``: seqs stay unique.
For their order, whoever numbers an event after another process did tells the store
(``numbered_elsewhere``, from the bus): a block below that seq is dropped. Without
it, a transient event sent after another process's higher seq would be ignored by clients
(``seq <= lastSeq``), which costs a streamed piece, nothing stored.

On SQLite all writes go through one asyncio lock (one writer, as SQLite wants it; readers
run beside it in WAL mode); on PostgreSQL row locks do that job.

A customer turn's three steps (``accept_message``, ``turn_records``, ``record_reply``, and
``next_seq`` when it needs a new block) are Core statements in one transaction each
(``_step``): on SQLite in the store's own thread on a plain ``sqlite3`` connection, one
thread hand-off a step; everything else goes through the async engine and ORM sessions.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import hashlib
import secrets
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import (
    ColumnElement,
    Connection,
    Engine,
    Row,
    Update,
    bindparam,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.sql import Executable

from bot import frames
from bot.config import DatabaseConfig
from bot.errors import StoreError
from bot.store import schema
from bot.store import turn_sql as sql
from bot.store.engine import create_engine, create_sqlite_thread_engine, is_sqlite
from bot.store.models import (
    Agent,
    AgentNote,
    AgentSession,
    Base,
    Conversation,
    Event,
    Feedback,
    Handoff,
    Message,
    Ticket,
    TranslationMemoryEntry,
    utcnow,
)
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
from bot.store.turn_sql import CONVERSATIONS, EVENTS, MESSAGES

T = TypeVar("T")
MAX_TOKEN_CHARS = 100
CHOICE_STAGE = "choice"  # a customer message's trace: the clarify button it was sent with
SEQ_BLOCK = 32  # transient seqs reserved per database write (gaps are allowed)
MAX_BLOCKS = 10_000  # conversations whose blocks are held; an evicted block is just a gap
# A turn's path (accept, read the context, record the reply) runs Core statements on one
# connection per step: no ORM session, unit of work or identity map (docs/server.md).
# A session or a bare connection: the seq and event helpers serve both.
Executor = AsyncSession | AsyncConnection


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def new_resume_token() -> str:
    return "r_" + secrets.token_urlsafe(24)


@dataclass(frozen=True)
class Resumed:
    """What a resume token got: the conversation and the token that replaces it, or why it
    was refused (``unknown``, ``replaced``: superseded past its grace, ``expired``,
    ``revoked``)."""

    conversation: ConversationInfo | None = None
    token: str = ""
    refused: str | None = None


class Store:
    def __init__(
        self,
        config: DatabaseConfig,
        *,
        seq_block: int = SEQ_BLOCK,
        log_content: bool = False,
        own_thread: bool = True,
    ) -> None:
        """``log_content``: SQL parameters may show in errors (privacy.log_content).
        ``own_thread``: on SQLite, a turn's steps run in the store's thread (``_step``);
        False sends them through aiosqlite like the rest (bench/bench_store.py compares)."""
        if seq_block < 1:
            raise ValueError("seq_block must be at least 1")
        self.config = config
        self.log_content = log_content
        self.seq_block = seq_block
        self.own_thread = own_thread
        # conversation id -> [next seq to hand out, top of the reserved block]
        self._blocks: dict[str, list[int]] = {}
        self._engine: AsyncEngine | None = None
        self._sessions: async_sessionmaker[AsyncSession] | None = None
        self._write_lock: asyncio.Lock | None = None
        # SQLite: a turn's steps run in this thread on a plain sqlite3 connection.
        self._thread_engine: Engine | None = None
        self._thread: ThreadPoolExecutor | None = None

    # -- lifecycle ----------------------------------------------------------------------

    async def __aenter__(self) -> Store:
        self._engine = create_engine(
            self.config.url,
            echo=self.config.echo,
            synchronous=self.config.sqlite_synchronous,
            log_content=self.log_content,
        )
        self._sessions = async_sessionmaker(self._engine, expire_on_commit=False)
        if is_sqlite(self.config.url):
            self._write_lock = asyncio.Lock()
            database = make_url(self.config.url).database
            if self.own_thread and database not in (None, "", ":memory:"):
                self._thread_engine = create_sqlite_thread_engine(
                    self.config.url,
                    synchronous=self.config.sqlite_synchronous,
                    log_content=self.log_content,
                )
                self._thread = ThreadPoolExecutor(1, thread_name_prefix="store")
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        engine, self._engine = self._engine, None
        if engine is not None:
            await engine.dispose()
        thread, self._thread = self._thread, None
        if thread is not None and self._thread_engine is not None:
            await asyncio.get_running_loop().run_in_executor(thread, self._thread_engine.dispose)
            thread.shutdown()

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError("the store is not open (use `async with Store(...)`)")
        return self._engine

    @property
    def sync_engines(self) -> list[Engine]:
        """Every engine the store's statements go through (for event listeners)."""
        thread = [self._thread_engine] if self._thread_engine is not None else []
        return [self.engine.sync_engine, *thread]

    async def check_schema(self) -> None:
        await schema.check_schema(self.engine)

    async def upgrade(self, revision: str = "head") -> None:
        await schema.upgrade(self.engine, revision)

    async def downgrade(self, revision: str) -> None:
        await schema.downgrade(self.engine, revision)

    async def current_revision(self) -> str | None:
        return await schema.current_revision(self.engine)

    async def ping(self) -> bool:
        try:
            async with self.engine.connect() as conn:
                await conn.execute(text("SELECT 1"))
        except (SQLAlchemyError, OSError):
            return False
        return True

    # -- sessions -------------------------------------------------------------------------

    def _session(self) -> AsyncSession:
        if self._sessions is None:
            raise StoreError("the store is not open (use `async with Store(...)`)")
        return self._sessions()

    @contextlib.asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncSession]:
        """One write transaction (serialized on SQLite)."""
        lock = self._write_lock or contextlib.nullcontext()
        async with lock, self._session() as session, session.begin():
            yield session

    @contextlib.asynccontextmanager
    async def _transaction(self) -> AsyncIterator[AsyncConnection]:
        """``_write`` on a bare connection: Core statements, no ORM session."""
        lock = self._write_lock or contextlib.nullcontext()
        async with lock, self.engine.begin() as conn:
            yield conn

    def _writer(self) -> contextlib.AbstractAsyncContextManager[Any]:
        """Held around a write step: SQLite's one writer (PostgreSQL locks rows itself)."""
        return self._write_lock or contextlib.nullcontext()

    async def _step(self, step: Callable[[Connection], T], *, write: bool = True) -> T:
        """One step of a turn (accept a message, read its context, record the reply): its
        statements in one transaction (a write step runs under ``_writer``). On SQLite they
        run in the store's thread on a plain ``sqlite3`` connection, one thread hand-off
        for the step (aiosqlite makes four per statement, and the async adaptation costs
        more CPU than SQLite itself: docs/server.md); on PostgreSQL through the async
        engine as the rest do."""
        if self._thread is None or self._thread_engine is None:
            async with self.engine.begin() if write else self.engine.connect() as conn:
                return await conn.run_sync(step)
        engine = self._thread_engine

        def run() -> T:
            with engine.begin() as conn:
                return step(conn)

        return await asyncio.get_running_loop().run_in_executor(self._thread, run)

    async def _allocate(
        self, session: Executor, conversation_id: str, n: int = 1, **values: Any
    ) -> int:
        """Take ``n`` seqs for the conversation (setting ``values`` too); returns the first."""
        seq, _ = await self._allocate_with_status(session, conversation_id, n, **values)
        return seq

    async def _allocate_with_status(
        self, session: Executor, conversation_id: str, n: int = 1, **values: Any
    ) -> tuple[int, str]:
        taken = await self._take(session, conversation_id, n, **values)
        if taken is None:
            raise StoreError(f"no conversation {conversation_id!r}")
        return taken

    async def _take(
        self,
        session: Executor,
        cid: str,
        n: int,
        *where: ColumnElement[bool],
        **values: Any,
    ) -> tuple[int, str] | None:
        """``n`` seqs for a stored event (first seq, status), or None when no row matches
        ``where``: from this store's block while nobody reserved above it, else new ones."""
        held = self._snapshot(cid)
        params = sql.take_params(cid, n, held, utcnow())
        row = (await session.execute(_seq_update(*where, **values), params)).first()
        if row is None:
            return None
        return self._settle(cid, n, held, int(row[0])), str(row[1])

    def _snapshot(self, cid: str) -> tuple[int, int] | None:
        """The conversation's block as (next seq, top), to number a write with."""
        block = self._blocks.get(cid)
        return (block[0], block[1]) if block is not None else None

    def _settle(self, cid: str, n: int, held: tuple[int, int] | None, last: int) -> int:
        """After a seq update that left ``last_seq`` at ``last``: the write's first seq, and
        the block moved past it (or dropped: someone reserved above it)."""
        first, ours = _first_seq(n, held, last)
        block = self._blocks.get(cid)
        if ours and held is not None and block is not None and block[1] == held[1]:
            block[0] = first + n  # the block's: nobody reserved since
        else:
            self._passed(cid, last)  # a block below is stale: later seqs go above
        return first

    @staticmethod
    async def _insert_event(
        session: Executor, cid: str, seq: int, kind: str, **fields: Any
    ) -> StoredEvent:
        row, event = _event(cid, seq, kind, utcnow(), **fields)
        await session.execute(insert(EVENTS).values(**row))
        return event

    # -- conversations ------------------------------------------------------------------

    async def _event_and_note(
        self, session: AsyncSession, cid: str, note: str | None, kind: str, **payload: Any
    ) -> list[StoredEvent]:
        """A ``kind`` event, then a ``system`` line with ``note`` when there is one."""
        seq = await self._allocate(session, cid, 2 if note else 1)
        events = [await self._insert_event(session, cid, seq, kind, **payload)]
        if note:
            events.append(await self._insert_event(session, cid, seq + 1, "system", text=note))
        return events

    async def _release_handoff(self, session: AsyncSession, cid: str) -> None:
        """Close the conversation's open handoff record (taken back or handed back)."""
        await session.execute(
            update(Handoff)
            .where(Handoff.conversation_id == cid, Handoff.released_at.is_(None))
            .values(released_at=utcnow())
        )

    async def create_conversation(
        self, *, language: str, locale: str | None = None, market: str | None = None
    ) -> tuple[ConversationInfo, str]:
        """A new conversation and its resume token (only its hash is stored)."""
        conv, token = self.draft_conversation(language=language, locale=locale, market=market)
        await self.save_conversation(conv, token)
        return conv, token

    @staticmethod
    def draft_conversation(
        *, language: str, locale: str | None = None, market: str | None = None
    ) -> tuple[ConversationInfo, str]:
        """A new conversation's id and resume token, not stored yet (``save_conversation``)."""
        conv = ConversationInfo(
            id="c_" + secrets.token_hex(12),
            language=language,
            locale=locale,
            market=market,
            status="bot",
            last_seq=0,
            no_answer_streak=0,
        )
        return conv, new_resume_token()

    async def save_conversation(self, conv: ConversationInfo, token: str) -> None:
        """Store a drafted conversation with the hash of its resume token."""
        async with self._write() as session:
            await session.execute(
                insert(CONVERSATIONS).values(
                    id=conv.id,
                    resume_hash=hash_token(token),
                    locale=conv.locale,
                    language=conv.language,
                    market=conv.market,
                    status=conv.status,
                    last_seq=conv.last_seq,
                    no_answer_streak=conv.no_answer_streak,
                    created_at=utcnow(),
                    updated_at=utcnow(),
                )
            )

    async def find_by_resume(self, token: str) -> ConversationInfo | None:
        """The conversation whose current token is ``token`` (unrevoked); no rotation."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        async with self._session() as session:
            row = await session.scalar(
                select(Conversation).where(
                    Conversation.resume_hash == hash_token(token),
                    Conversation.resume_revoked_at.is_(None),
                )
            )
            return _info(row) if row else None

    async def resume(self, token: str, *, idle_ttl: float, grace: float) -> Resumed:
        """Check a resume token and rotate it: the conversation and its new token, or why
        not. Accepted: the current token, or the one it replaced for ``grace`` seconds after
        (a client whose welcome was lost); refused once revoked, or when the conversation
        was idle for ``idle_ttl`` seconds (0: never expires). One write."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return Resumed(refused="unknown")
        presented = hash_token(token)
        for _ in range(2):  # a second pass when another hello rotated it meanwhile (PG)
            async with self._write() as session:
                row = await session.scalar(
                    select(Conversation).where(
                        (Conversation.resume_hash == presented)
                        | (Conversation.resume_prev_hash == presented)
                    )
                )
                if row is None:
                    return Resumed(refused="unknown")
                now = utcnow()
                refused = _refusal(row, presented, now, idle_ttl)
                if refused:
                    return Resumed(refused=refused)
                fresh = new_resume_token()
                values: dict[str, Any] = {"resume_hash": hash_token(fresh), "updated_at": now}
                if row.resume_hash == presented:  # the previous one stays valid a moment
                    values |= {
                        "resume_prev_hash": presented,
                        "resume_prev_until": now + timedelta(seconds=grace),
                    }
                done = await session.scalar(
                    update(CONVERSATIONS)
                    .where(
                        CONVERSATIONS.c.id == row.id,
                        CONVERSATIONS.c.resume_hash == row.resume_hash,
                    )
                    .values(**values)
                    .returning(CONVERSATIONS.c.id)
                )
                if done is not None:
                    return Resumed(_info(row), fresh)
        return Resumed(refused="unknown")

    async def revoke_resume(self, conversation_ids: Sequence[str]) -> int:
        """No resume token of these conversations works any more; the number revoked."""
        if not conversation_ids:
            return 0
        async with self._write() as session:
            result = await session.execute(
                update(CONVERSATIONS)
                .where(
                    CONVERSATIONS.c.id.in_(list(conversation_ids)),
                    CONVERSATIONS.c.resume_revoked_at.is_(None),
                )
                .values(resume_revoked_at=utcnow(), resume_prev_hash=None)
            )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]

    async def conversation(self, conversation_id: str) -> ConversationInfo:
        async with self._session() as session:
            row = await session.get(Conversation, conversation_id)
            if row is None:
                raise StoreError(f"no conversation {conversation_id!r}")
            info = _info(row)
        return self._current(info)

    def _current(self, info: ConversationInfo) -> ConversationInfo:
        """``info`` with ``last_seq`` at the last seq sent: a reserved block's rest is not."""
        block = self._blocks.get(info.id)
        if block is not None and info.last_seq == block[1]:
            return dataclasses.replace(info, last_seq=block[0] - 1)
        return info

    async def set_locale(
        self, conversation_id: str, locale: str, language: str, market: str | None
    ) -> None:
        """The customer's page or language picker changed locale: follow it."""
        async with self._write() as session:
            await session.execute(
                update(Conversation)
                .where(Conversation.id == conversation_id)
                .values(locale=locale, language=language, market=market, updated_at=utcnow())
            )

    async def events_after(self, conversation_id: str, seq: int) -> list[StoredEvent]:
        """The stored events with ``seq`` above ``seq``, in order: the replay."""
        async with self._session() as session:
            rows = await session.scalars(
                select(Event)
                .where(Event.conversation_id == conversation_id, Event.seq > seq)
                .order_by(Event.seq)
            )
            return [StoredEvent(r.seq, r.type, dict(r.payload)) for r in rows]

    async def next_seq(self, conversation_id: str) -> int:
        """A seq for an event that is sent but not stored (``typing``, ``reply.delta``): from
        the conversation's reserved block; a database write only when a new block is due."""
        block = self._blocks.get(conversation_id)
        while block is None or block[0] > block[1]:
            async with self._writer():
                n, held = self.seq_block, self._snapshot(conversation_id)
                params = sql.take_params(conversation_id, n, held, utcnow())
                row = await self._step(_first_row(sql.TAKE, params))
                if row is None:
                    raise StoreError(f"no conversation {conversation_id!r}")
                first = self._settle(conversation_id, n, held, int(row[0]))
            block = self._hold(conversation_id, first, first + n - 1)
        seq = block[0]
        block[0] += 1
        return seq

    def _hold(self, cid: str, first: int, top: int) -> list[int] | None:
        """Keep the committed block ``first..top`` for the conversation's next seqs; None
        when this store has meanwhile numbered past it (its seqs become a gap)."""
        held = self._blocks.pop(cid, None)
        if held is not None and held[1] > top:
            self._blocks[cid] = held
            return None
        if len(self._blocks) >= MAX_BLOCKS:  # the oldest one: its rest becomes a gap
            del self._blocks[next(iter(self._blocks))]
        block = self._blocks[cid] = [first, top]
        return block

    def _passed(self, cid: str, high: int) -> None:
        """Seqs up to ``high`` are taken: an empty block there marks the high-water line."""
        held = self._blocks.get(cid)
        if held is None or held[1] < high:
            self._hold(cid, high + 1, high)

    def numbered_elsewhere(self, conversation_id: str, seq: int) -> None:
        """Another server process sent ``seq`` (bot.server.bus): this store's next seqs for
        the conversation go above it, not into a block of its own left below."""
        self._passed(conversation_id, seq)

    # -- messages -------------------------------------------------------------------------

    async def accept_message(
        self, conversation_id: str, client_id: str, text: str, *, choice: str | None = None
    ) -> Accepted:
        """Store a customer message and its ``ack`` event, or find the one stored before.
        ``choice``: the FAQ id of a clarify button (kept in the message's trace)."""
        try:
            return await self._accept(conversation_id, client_id, text, choice)
        except IntegrityError:  # the same id stored at the same moment by another process
            return await self._accept(conversation_id, client_id, text, choice)

    async def _accept(
        self, cid: str, client_id: str, text: str, choice: str | None = None
    ) -> Accepted:
        def accept(
            conn: Connection, n: int, held: tuple[int, int] | None
        ) -> Accepted | tuple[int, int, str, int, StoredEvent]:
            old = conn.execute(sql.MESSAGE, {"cid": cid, "client_id": client_id}).first()
            if old is not None:
                status = conn.scalar(sql.STATUS, {"cid": cid})
                ack = StoredEvent(old.seq or 0, "ack", {"id": client_id, "text": old.original_text})
                return Accepted(_message(old), ack, created=False, status=status or "closed")
            now = utcnow()
            row = conn.execute(sql.TAKE, sql.take_params(cid, n, held, now)).first()
            if row is None:
                raise StoreError(f"no conversation {cid!r}")
            last, status = int(row[0]), str(row[1])
            seq, _ = _first_seq(n, held, last)
            if status == "closed":  # a closed conversation starts again with the bot
                conn.execute(sql.REOPEN, {"cid": cid})
                status = "bot"
            message = {
                "conversation_id": cid,
                "role": "customer",
                "client_id": client_id,
                "seq": seq,
                "original_text": text,
                # While a human owns the conversation the bot leaves the message to them
                # (queued: the bot may still answer, see bot.server.turns).
                "replied": status not in ("bot", "queued"),
                "created_at": now,
            }
            if choice:  # else left out (SQL NULL): JSON None would store 'null'
                message["trace"] = [{"stage": CHOICE_STAGE, "faq_id": choice}]
            message_id = conn.scalar(sql.ADD_MESSAGE_ID, message)
            event, ack = _event(cid, seq, "ack", now, id=client_id, text=text)
            conn.execute(sql.ADD_EVENT, event)
            return int(message_id or 0), seq, status, last, ack

        async with self._writer():
            # The same write reserves the block for the turn's typing and streamed pieces.
            block = self._blocks.get(cid)
            spare = 0 if block is not None and block[0] <= block[1] else self.seq_block
            n, held = 1 + spare, self._snapshot(cid)
            done = await self._step(functools.partial(accept, n=n, held=held))
            if isinstance(done, Accepted):
                return done
            message_id, seq, status, last, ack = done
            self._settle(cid, n, held, last)
            if spare:  # committed: only now may its seqs be sent
                self._hold(cid, seq + 1, seq + spare)
        replied = status not in ("bot", "queued")
        message = StoredMessage(message_id, client_id, seq, text, replied, choice)
        return Accepted(message, ack, created=True, status=status)

    async def unreplied(self, conversation_id: str) -> list[StoredMessage]:
        """Customer messages stored but not answered (the server stopped mid-turn)."""
        async with self._session() as session:
            rows = await session.scalars(
                select(Message)
                .where(
                    Message.conversation_id == conversation_id,
                    Message.role == "customer",
                    Message.replied.is_(False),
                )
                .order_by(Message.seq)
            )
            return [_message(r) for r in rows]

    async def message(self, conversation_id: str, client_id: str) -> StoredMessage | None:
        async with self._session() as session:
            row = await session.scalar(
                select(Message).where(
                    Message.conversation_id == conversation_id, Message.client_id == client_id
                )
            )
            return _message(row) if row else None

    async def mark_replied(self, message_id: int) -> None:
        async with self._write() as session:
            await session.execute(
                update(Message)
                .where(Message.id == message_id)
                .values(replied=True, replied_at=utcnow())
            )

    async def offered_choices(self, conversation_id: str) -> list[str]:
        """The FAQ ids the conversation's latest bot reply offered as choices (clarify)."""
        async with self._session() as session:
            payload = await session.scalar(
                select(Event.payload)
                .where(Event.conversation_id == conversation_id, Event.type == "reply")
                .order_by(Event.seq.desc())
                .limit(1)
            )
        choices = (payload or {}).get("choices") or []
        return [str(c["id"]) for c in choices if isinstance(c, dict) and "id" in c]

    async def clarify_picks(self, *, since: datetime | None = None) -> list[Pick]:
        """Every pick between a clarify reply's choices, oldest first, with the question
        that reply answered: labelled examples for the retrieval evaluation."""
        async with self._session() as session:
            query = select(Message).where(Message.role == "customer", Message.trace.is_not(None))
            if since is not None:
                query = query.where(Message.created_at >= since)
            picks = [m for m in await session.scalars(query.order_by(Message.id)) if m.trace]
            out = []
            for pick in picks:
                faq_id = _choice(pick.trace)
                clarify = await session.scalar(
                    select(Message)
                    .where(
                        Message.conversation_id == pick.conversation_id,
                        Message.role == "bot",
                        Message.seq < (pick.seq or 0),
                    )
                    .order_by(Message.seq.desc())
                    .limit(1)
                )
                offered = _offered(clarify.trace if clarify else None)
                if faq_id is None or clarify is None or faq_id not in offered:
                    continue
                question = await session.get(Message, clarify.reply_to or -1)
                if question is None:
                    continue
                out.append(
                    Pick(
                        conversation_id=pick.conversation_id,
                        question=question.original_text,
                        language=question.language or clarify.language or "",
                        offered=offered,
                        faq_id=faq_id,
                        at=_aware(pick.created_at),
                    )
                )
        return out

    async def turn_records(
        self, conversation_id: str, *, before_seq: int, limit: int = 6
    ) -> TurnRecords:
        """What a bot turn reads before it answers, in two statements on one connection:
        the conversation, its last ``limit`` customer/bot messages before ``before_seq``
        (role, pivot text), and the customer's messages among the last ``2 * limit``, each
        with the first FAQ id of the bot's reply to it (original text, FAQ id or None)."""
        cid = conversation_id
        recent = {"cid": cid, "before": before_seq, "limit": 2 * limit}

        def read(conn: Connection) -> tuple[Row[Any] | None, Sequence[Row[Any]]]:
            return conn.execute(sql.CONVERSATION, {"cid": cid}).first(), conn.execute(
                sql.RECENT, recent
            ).all()

        row, newest = await self._step(read, write=False)
        if row is None:
            raise StoreError(f"no conversation {conversation_id!r}")
        rows = newest[::-1]  # oldest first
        answered = {r.reply_to: r.faq_ids[0] for r in rows if r.role == "bot" and r.faq_ids}
        asked = [(r.original_text, answered.get(r.id)) for r in rows if r.role == "customer"]
        return TurnRecords(
            conversation=self._current(_info(row)),
            history=[
                (r.role, r.pivot_text or r.delivered_text or r.original_text) for r in rows[-limit:]
            ],
            asked=asked[-limit:],
        )

    async def record_reply(
        self, conversation_id: str, message_id: int, client_id: str | None, reply: Reply
    ) -> list[StoredEvent]:
        """Store the bot's reply to a customer message, and the handoff it asks for.

        A message is answered once: when it already has a reply (a second process, or this
        one after a freeze that outlived its turn lock, got there first) nothing is stored
        and no events are returned. The claim is the conditional update below, so on
        PostgreSQL a concurrent writer waits for the first one's commit and then finds the
        message replied."""
        cid = conversation_id

        def record(
            conn: Connection, held: tuple[int, int] | None
        ) -> tuple[list[StoredEvent], int, int]:
            now = utcnow()
            claim = {
                "mid": message_id,
                "language": reply.language,
                "pivot_text": reply.pivot,
                "faq_ids": list(reply.faq_ids),
                "now": now,
            }
            if conn.scalar(sql.CLAIM, claim) is None:
                return [], 0, 0
            handoff = False
            if reply.handoff_reason is not None:  # only if the bot still has the conversation
                handoff = bool(conn.scalar(sql.HAND_OVER, {"cid": cid}))
            n = 2 if handoff else 1
            params = sql.take_params(
                cid, n, held, now, language=reply.language, answered=reply.answered
            )
            row = conn.execute(sql.TAKE_FOR_REPLY, params).first()
            if row is None:
                raise StoreError(f"no conversation {cid!r}")
            seq, _ = _first_seq(n, held, int(row[0]))
            message = {
                "conversation_id": cid,
                "role": "bot",
                "client_id": None,
                "seq": seq,
                "reply_to": message_id,
                "original_text": reply.text,
                "delivered_text": reply.text,
                "language": reply.language,
                "pivot_text": reply.reply_pivot,
                "faq_ids": list(reply.faq_ids),
                "source": reply.source,
                "trace": reply.trace,
                "handoff": reply.handoff_reason is not None,
                "replied": True,
                "created_at": now,
            }
            conn.execute(sql.ADD_MESSAGE, message)
            events = [
                _event(
                    cid, seq, "reply", now,
                    text=reply.text, lang=reply.language, faq_ids=list(reply.faq_ids),
                    sources=list(reply.sources), reply_to=client_id,
                    **({"choices": list(reply.choices)} if reply.choices else {}),
                )
            ]  # fmt: skip
            if handoff and reply.handoff_reason:
                handoff_row = {"conversation_id": cid, "reason": reply.handoff_reason}
                conn.execute(sql.ADD_HANDOFF, handoff_row)
                events.append(_event(cid, seq + 1, "handoff", now, reason=reply.handoff_reason))
            conn.execute(sql.ADD_EVENT, [row for row, _ in events])
            return [event for _, event in events], n, int(row[0])

        async with self._writer():
            held = self._snapshot(cid)
            events, n, last = await self._step(functools.partial(record, held=held))
            if events:
                self._settle(cid, n, held, last)
        return events

    async def request_handoff(
        self, conversation_id: str, reason: str, *, note: str | None = None
    ) -> list[StoredEvent]:
        """Queue the conversation for a human: a ``handoff`` event, and a ``system`` event
        with ``note`` when given. Nothing when it already is queued or with an agent."""
        cid = conversation_id
        async with self._write() as session:
            queued = await session.scalar(
                update(CONVERSATIONS)
                .where(CONVERSATIONS.c.id == cid, CONVERSATIONS.c.status == "bot")
                .values(status="queued")
                .returning(CONVERSATIONS.c.id)
            )
            if queued is None:
                return []
            session.add(Handoff(conversation_id=cid, reason=reason))
            return await self._event_and_note(session, cid, note, "handoff", reason=reason)

    # -- translation memory and feedback --------------------------------------------------

    async def add_translation(
        self,
        source: str,
        target: str,
        text: str,
        translation: str,
        *,
        key: str,
        origin: str = "curated",
        approved_by: str | None = None,
    ) -> None:
        """Insert or replace one translation; curated ones count as approved."""
        approved = origin == "curated" or approved_by is not None
        async with self._write() as session:
            row = await session.scalar(
                select(TranslationMemoryEntry).where(
                    TranslationMemoryEntry.source_lang == source,
                    TranslationMemoryEntry.target_lang == target,
                    TranslationMemoryEntry.key == key,
                )
            )
            if row is None:
                row = TranslationMemoryEntry(source_lang=source, target_lang=target, key=key)
                session.add(row)
            row.source_text, row.target_text, row.origin = text, translation, origin
            row.approved_by = approved_by
            row.approved_at = utcnow() if approved else None

    async def approved_translations(self) -> list[tuple[str, str, str, str]]:
        """(source, target, text, translation) for every approved entry."""
        async with self._session() as session:
            rows = await session.execute(
                select(
                    TranslationMemoryEntry.source_lang,
                    TranslationMemoryEntry.target_lang,
                    TranslationMemoryEntry.source_text,
                    TranslationMemoryEntry.target_text,
                ).where(TranslationMemoryEntry.approved_at.is_not(None))
            )
            return [(r[0], r[1], r[2], r[3]) for r in rows]

    async def add_feedback(self, message_id: int, rating: int, comment: str | None = None) -> None:
        async with self._write() as session:
            session.add(Feedback(message_id=message_id, rating=rating, comment=comment))

    async def handoffs(self, conversation_id: str) -> list[str]:
        """The reasons of the conversation's handoffs, oldest first."""
        async with self._session() as session:
            rows = await session.scalars(
                select(Handoff.reason)
                .where(Handoff.conversation_id == conversation_id)
                .order_by(Handoff.id)
            )
            return list(rows)

    async def messages(self, conversation_id: str) -> Sequence[dict[str, Any]]:
        """Every message of a conversation as a dict (for the console and tests)."""
        async with self._session() as session:
            rows = await session.scalars(
                select(Message)
                .where(Message.conversation_id == conversation_id)
                .order_by(Message.seq)
            )
            return [{c.key: getattr(r, c.key) for c in Message.__table__.columns} for r in rows]

    # -- agents and the console (bot/server/agent.py, bot/server/console.py) --------------
    # Ownership moves in single conditional UPDATEs (``WHERE status = ...``): two agents
    # claiming at once, or an agent and a customer's cancel, can never both win.

    async def add_agent(self, name: str, password_hash: str, *, role: str = "agent") -> int:
        async with self._write() as session:
            row = Agent(
                name=name,
                password_hash=password_hash,
                role=role,
                languages=[],
                token_hash=hash_token(secrets.token_urlsafe(24)),  # legacy column, unused
                active=True,
            )
            session.add(row)
            try:
                await session.flush()
            except IntegrityError:
                raise StoreError(f"an agent named {name!r} exists already") from None
            return row.id

    async def agents(self) -> list[AgentInfo]:
        async with self._session() as session:
            rows = await session.scalars(select(Agent).order_by(Agent.name))
            return [_agent(r) for r in rows]

    async def agent_login(self, name: str) -> tuple[AgentInfo, str | None] | None:
        """The agent called ``name`` and its password hash, active or not."""
        async with self._session() as session:
            row = await session.scalar(select(Agent).where(Agent.name == name))
            return (_agent(row), row.password_hash) if row else None

    async def set_agent_active(self, name: str, active: bool) -> bool:
        """Enable or disable an agent; disabling revokes its console sessions."""
        async with self._write() as session:
            agent_id = await session.scalar(
                update(Agent).where(Agent.name == name).values(active=active).returning(Agent.id)
            )
            if agent_id is None:
                return False
            if not active:
                await session.execute(
                    update(AgentSession)
                    .where(AgentSession.agent_id == agent_id, AgentSession.revoked_at.is_(None))
                    .values(revoked_at=utcnow())
                )
            return True

    async def create_session(self, agent_id: int, lifetime: timedelta) -> tuple[str, str]:
        """A new console session: (cookie token, CSRF token); only the token's hash is kept."""
        token, csrf = "s_" + secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        async with self._write() as session:
            session.add(
                AgentSession(
                    token_hash=hash_token(token),
                    agent_id=agent_id,
                    csrf_token=csrf,
                    expires_at=utcnow() + lifetime,
                )
            )
        return token, csrf

    async def session_agent(self, token: str) -> tuple[AgentInfo, str] | None:
        """The active agent and CSRF token of a live (unexpired, unrevoked) session."""
        if not token or len(token) > MAX_TOKEN_CHARS:
            return None
        async with self._session() as session:
            row = (
                await session.execute(
                    select(Agent, AgentSession.csrf_token, AgentSession.expires_at)
                    .join(AgentSession, AgentSession.agent_id == Agent.id)
                    .where(
                        AgentSession.token_hash == hash_token(token),
                        AgentSession.revoked_at.is_(None),
                        Agent.active.is_(True),
                    )
                )
            ).first()
        if row is None or _aware(row[2]) <= utcnow():
            return None
        return _agent(row[0]), row[1]

    async def revoke_session(self, token: str) -> None:
        async with self._write() as session:
            await session.execute(
                update(AgentSession)
                .where(AgentSession.token_hash == hash_token(token))
                .values(revoked_at=utcnow())
            )

    async def queue(self, agent_id: int | None = None) -> list[dict[str, Any]]:
        """Conversations waiting for an agent (oldest first), then those ``agent_id`` owns:
        id, status, language, locale, reason, queued_at, timed_out, preview, agent_id."""
        async with self._session() as session:
            wanted = Conversation.status == "queued"
            if agent_id is not None:
                wanted = wanted | (
                    (Conversation.status == "agent") & (Conversation.agent_id == agent_id)
                )
            convs = list(await session.scalars(select(Conversation).where(wanted)))
            out = []
            for conv in convs:
                handoff = await session.scalar(
                    select(Handoff)
                    .where(Handoff.conversation_id == conv.id)
                    .order_by(Handoff.id.desc())
                    .limit(1)
                )
                preview = await session.scalar(
                    select(Message.original_text)
                    .where(Message.conversation_id == conv.id, Message.role == "customer")
                    .order_by(Message.seq.desc())
                    .limit(1)
                )
                queued_at = _aware(handoff.queued_at) if handoff else _aware(conv.updated_at)
                out.append(
                    {
                        "conversation": conv.id,
                        "status": conv.status,
                        "lang": conv.language,
                        "locale": conv.locale,
                        "reason": handoff.reason if handoff else None,
                        "queued_at": queued_at.isoformat(),
                        "timed_out": bool(handoff and handoff.timed_out_at),
                        "preview": (preview or "")[:200],
                        "agent_id": conv.agent_id,
                    }
                )
        out.sort(key=lambda c: (c["status"] != "queued", c["queued_at"]))
        return out

    async def claim(self, conversation_id: str, agent: AgentInfo, note: str) -> list[StoredEvent]:
        """The agent takes a queued conversation: ``agent.joined`` and a ``system`` line.
        Nothing when it is not (or no longer) queued: another agent was faster."""
        cid = conversation_id
        async with self._write() as session:
            won = await session.scalar(
                update(CONVERSATIONS)
                .where(CONVERSATIONS.c.id == cid, CONVERSATIONS.c.status == "queued")
                .values(status="agent", agent_id=agent.id)
                .returning(CONVERSATIONS.c.id)
            )
            if won is None:
                return []
            await session.execute(
                update(Handoff)
                .where(Handoff.conversation_id == cid, Handoff.claimed_at.is_(None))
                .values(agent_id=agent.id, claimed_at=utcnow())
            )
            seq = await self._allocate(session, cid, 2)
            return [
                await self._insert_event(session, cid, seq, "agent.joined", agent=agent.name),
                await self._insert_event(session, cid, seq + 1, "system", text=note),
            ]

    async def hand_back(
        self, conversation_id: str, agent: AgentInfo, status: str, note: str | None
    ) -> list[StoredEvent]:
        """The owning agent (or an admin) ends their part: ``status`` ``bot`` (release) or
        ``closed``. ``agent.left`` and a ``system`` line with ``note``; [] when not owned."""
        cid = conversation_id
        owned = (CONVERSATIONS.c.id == cid) & (CONVERSATIONS.c.status == "agent")
        if agent.role != "admin":
            owned = owned & (CONVERSATIONS.c.agent_id == agent.id)
        async with self._write() as session:
            done = await session.scalar(
                update(CONVERSATIONS)
                .where(owned)
                .values(status=status, agent_id=None, no_answer_streak=0)
                .returning(CONVERSATIONS.c.id)
            )
            if done is None:
                return []
            await self._release_handoff(session, cid)
            return await self._event_and_note(session, cid, note, "agent.left", agent=agent.name)

    async def reassign(self, conversation_id: str, to_agent: int) -> bool:
        """An admin gives an agent-owned conversation to another active agent."""
        async with self._write() as session:
            return bool(
                await session.scalar(
                    update(CONVERSATIONS)
                    .where(CONVERSATIONS.c.id == conversation_id, CONVERSATIONS.c.status == "agent")
                    .values(agent_id=to_agent)
                    .returning(CONVERSATIONS.c.id)
                )
            )

    async def cancel_handoff(self, conversation_id: str, note: str | None) -> list[StoredEvent]:
        """The customer takes back a pending handoff: ``handoff.cancelled`` (+ ``system``)."""
        cid = conversation_id
        async with self._write() as session:
            done = await session.scalar(
                update(CONVERSATIONS)
                .where(CONVERSATIONS.c.id == cid, CONVERSATIONS.c.status == "queued")
                .values(status="bot", no_answer_streak=0)
                .returning(CONVERSATIONS.c.id)
            )
            if done is None:
                return []
            await self._release_handoff(session, cid)
            return await self._event_and_note(session, cid, note, "handoff.cancelled")

    async def agent_message(
        self,
        conversation_id: str,
        agent: AgentInfo,
        *,
        text: str,
        source_lang: str,
        delivered: str,
        language: str,
    ) -> StoredEvent | None:
        """Store an agent's reply (what they wrote and what the customer reads) with its
        ``agent.message`` event; None unless ``agent`` owns the conversation."""
        cid = conversation_id
        async with self._write() as session:
            taken = await self._take(
                session,
                cid,
                1,
                CONVERSATIONS.c.status == "agent",
                CONVERSATIONS.c.agent_id == agent.id,
            )
            if taken is None:
                return None
            seq = taken[0]
            await session.execute(
                insert(MESSAGES).values(
                    conversation_id=cid,
                    role="agent",
                    seq=seq,
                    original_text=text,
                    pivot_text=text if source_lang == "en" else None,
                    delivered_text=delivered,
                    language=language,
                    source=f"agent:{source_lang}",
                    faq_ids=[],
                    replied=True,
                )
            )
            return await self._insert_event(
                session, cid, seq, "agent.message", text=delivered, agent=agent.name, lang=language
            )

    async def record_events(
        self, conversation_id: str, events: list[tuple[str, dict[str, Any]]]
    ) -> list[StoredEvent]:
        """Store server events (type, payload) with the next seqs, in order."""
        async with self._write() as session:
            seq = await self._allocate(session, conversation_id, len(events))
            return [
                await self._insert_event(session, conversation_id, seq + n, kind, **payload)
                for n, (kind, payload) in enumerate(events)
            ]

    async def annotate_message(self, message_id: int, language: str, pivot: str | None) -> None:
        """A customer message the bot did not answer: its detected language and pivot."""
        async with self._write() as session:
            await session.execute(
                update(MESSAGES)
                .where(MESSAGES.c.id == message_id)
                .values(language=language, pivot_text=pivot, replied=True, replied_at=utcnow())
            )

    async def add_note(self, conversation_id: str, agent_id: int, text: str) -> dict[str, Any]:
        async with self._write() as session:
            row = AgentNote(conversation_id=conversation_id, agent_id=agent_id, text=text)
            session.add(row)
            await session.flush()
            return {"id": row.id, "text": text, "created_at": _aware(row.created_at).isoformat()}

    async def notes(self, conversation_id: str) -> list[dict[str, Any]]:
        async with self._session() as session:
            rows = await session.execute(
                select(AgentNote.id, AgentNote.text, AgentNote.created_at, Agent.name)
                .outerjoin(Agent, Agent.id == AgentNote.agent_id)
                .where(AgentNote.conversation_id == conversation_id)
                .order_by(AgentNote.id)
            )
            return [
                {"id": r[0], "text": r[1], "created_at": _aware(r[2]).isoformat(), "agent": r[3]}
                for r in rows
            ]

    async def overdue_handoffs(self, older_than: timedelta) -> list[str]:
        """Queued conversations waiting longer than ``older_than`` whose customer has not
        been told yet; they are marked told."""
        cutoff = utcnow() - older_than
        async with self._write() as session:
            rows = await session.execute(
                select(Handoff.id, Handoff.conversation_id, Handoff.queued_at)
                .join(Conversation, Conversation.id == Handoff.conversation_id)
                .where(
                    Conversation.status == "queued",
                    Handoff.claimed_at.is_(None),
                    Handoff.released_at.is_(None),
                    Handoff.timed_out_at.is_(None),
                )
            )
            due = [r[0] for r in rows if _aware(r[2]) <= cutoff]
            if not due:
                return []
            handoffs = Base.metadata.tables["handoffs"]
            marked = await session.execute(  # another server process may have marked some
                update(handoffs)
                .where(handoffs.c.id.in_(due), handoffs.c.timed_out_at.is_(None))
                .values(timed_out_at=utcnow())
                .returning(handoffs.c.conversation_id)
            )
            return [str(r[0]) for r in marked]

    async def add_ticket(
        self, conversation_id: str, language: str, text: str, note: str | None
    ) -> list[StoredEvent]:
        """The customer leaves a message instead of waiting: a ticket, the conversation
        back with the bot, a ``handoff.cancelled`` and a ``system`` line with ``note``."""
        events = await self.cancel_handoff(conversation_id, note)
        if events:  # still queued: not claimed by an agent meanwhile
            async with self._write() as session:
                session.add(Ticket(conversation_id=conversation_id, language=language, text=text))
        return events

    async def tickets(self) -> list[dict[str, Any]]:
        async with self._session() as session:
            rows = await session.scalars(
                select(Ticket).where(Ticket.closed_at.is_(None)).order_by(Ticket.id)
            )
            return [
                {
                    "id": r.id,
                    "conversation": r.conversation_id,
                    "lang": r.language,
                    "text": r.text,
                    "created_at": _aware(r.created_at).isoformat(),
                }
                for r in rows
            ]

    # -- replay exports (bot/replay) ------------------------------------------------------
    # Read-only queries for `bot replay list|record`; nothing above depends on them. A
    # conversation's log itself is read with `conversation`, `events_after` and `messages`.

    async def recent_conversations(self, *, limit: int = 20) -> list[dict[str, Any]]:
        """The latest conversations, most recently active first: id, locale, language,
        status, created_at, updated_at and customer_messages (how many)."""
        from sqlalchemy import func

        customer_messages = (
            select(func.count(Message.id))
            .where(Message.conversation_id == Conversation.id, Message.role == "customer")
            .scalar_subquery()
            .label("customer_messages")
        )
        stmt = (
            select(
                Conversation.id,
                Conversation.locale,
                Conversation.language,
                Conversation.status,
                Conversation.created_at,
                Conversation.updated_at,
                customer_messages,
            )
            .order_by(Conversation.updated_at.desc(), Conversation.id)
            .limit(limit)
        )
        async with self._session() as session:
            rows = await session.execute(stmt)
            return [dict(row._mapping) for row in rows]


def _event(
    cid: str, seq: int, kind: str, now: datetime, **fields: Any
) -> tuple[dict[str, Any], StoredEvent]:
    """An event's row (``turn_sql.ADD_EVENT``'s parameters), and the event. Built by the
    same builder that rebuilds it for the wire (bot/frames.py): a field the protocol does
    not have, or one it needs missing, fails here, before storing."""
    payload = frames.payload_of(frames.stored_event(kind, seq, fields))
    row = {"conversation_id": cid, "seq": seq, "type": kind, "payload": payload, "created_at": now}
    return row, StoredEvent(seq, kind, payload)


def _first_row(stmt: Executable, params: dict[str, Any]) -> Callable[[Connection], Row[Any] | None]:
    return lambda conn: conn.execute(stmt, params).first()


def _seq_update(*where: ColumnElement[bool], **values: Any) -> Update:
    """``turn_sql.TAKE`` with more conditions and values (handoffs, agents): run it with
    ``turn_sql.take_params``. Returns (last_seq, status), or no row when ``where`` fails."""
    return (
        update(CONVERSATIONS)
        .where(CONVERSATIONS.c.id == bindparam("cid"), *where)
        .values(last_seq=sql.RESERVE, updated_at=bindparam("now"), **values)
        .returning(CONVERSATIONS.c.last_seq, CONVERSATIONS.c.status)
    )


def _first_seq(n: int, held: tuple[int, int] | None, last: int) -> tuple[int, bool]:
    """The first of the ``n`` seqs a reservation (``turn_sql.RESERVE``) that left
    ``last_seq`` at ``last`` took, and whether they came from the block ``held``."""
    if held is not None and held[1] - held[0] + 1 >= n and last == held[1]:
        return held[0], True
    return last - n + 1, False


def _info(row: Conversation | Row[Any]) -> ConversationInfo:
    return ConversationInfo(
        id=row.id,
        language=row.language,
        locale=row.locale,
        market=row.market,
        status=row.status,
        last_seq=row.last_seq,
        no_answer_streak=row.no_answer_streak,
        agent_id=row.agent_id,
    )


def _refusal(row: Conversation, presented: str, now: datetime, idle_ttl: float) -> str | None:
    """Why the token that found ``row`` may not resume it, or None."""
    if row.resume_revoked_at is not None:
        return "revoked"
    if idle_ttl and _aware(row.updated_at) + timedelta(seconds=idle_ttl) <= now:
        return "expired"
    if row.resume_hash != presented:  # the token the last welcome replaced
        until = row.resume_prev_until
        if until is None or _aware(until) <= now:
            return "replaced"
    return None


def _agent(row: Agent) -> AgentInfo:
    return AgentInfo(id=row.id, name=row.name, role=row.role, active=row.active)


def _aware(moment: datetime) -> datetime:
    """SQLite hands timestamps back naive; they were written in UTC."""
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _message(row: Message | Row[Any]) -> StoredMessage:
    choice = _choice(row.trace) if row.role == "customer" else None
    return StoredMessage(row.id, row.client_id, row.seq, row.original_text, row.replied, choice)


def _offered(trace: list[Any] | None) -> list[str]:
    """The FAQ ids a bot reply offered to pick from: its trace's ``clarify`` stage."""
    for stage in trace or ():
        if isinstance(stage, dict) and stage.get("stage") == "clarify":
            return [str(i) for i in stage.get("offered") or []]
    return []


def _choice(trace: list[Any] | None) -> str | None:
    """The FAQ id a customer message picked (its trace holds only that), else None."""
    for stage in trace or ():
        if isinstance(stage, dict) and stage.get("stage") == CHOICE_STAGE:
            faq_id = stage.get("faq_id")
            return faq_id if isinstance(faq_id, str) else None
    return None
