"""The store on real databases: SQLite files and PostgreSQL, with the migrations applied."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from bot.config import DatabaseConfig
from bot.errors import SchemaOutOfDate
from bot.store import Reply, Store, retention
from bot.store.models import Conversation, Feedback, Message, TranslationMemoryEntry
from bot.store.schema import drift, head_revision
from bot.translate import normalize

ROOT = Path(__file__).resolve().parent.parent
PG_ADMIN_URL = os.environ.get(
    "BOT_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def _run_sql(database: str, *statements: str) -> None:
    """Run statements in a PostgreSQL database, on a loop of its own (fixtures are sync)."""
    import asyncpg  # type: ignore[import-untyped]

    async def run() -> None:
        dsn = PG_ADMIN_URL.replace("postgresql+asyncpg://", "postgresql://", 1)
        conn = await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/" + database, timeout=5)
        try:
            for sql in statements:
                await conn.execute(sql)
        finally:
            await conn.close()

    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result()


@pytest.fixture(scope="session")
def postgres() -> Iterator[str]:
    """A uniquely named PostgreSQL database for this test session, dropped at the end."""
    asyncpg = pytest.importorskip("asyncpg")
    admin_db = PG_ADMIN_URL.rsplit("/", 1)[1]
    name = f"bot_test_{secrets.token_hex(4)}"
    try:
        _run_sql(admin_db, f'CREATE DATABASE "{name}"')
    except (OSError, asyncpg.PostgresError) as exc:
        pytest.skip(f"PostgreSQL is not reachable at {PG_ADMIN_URL}: {exc}")
    try:
        yield name
    finally:
        _run_sql(admin_db, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The URL of an empty database of each kind (PostgreSQL: the session's, emptied)."""
    if request.param == "sqlite":
        return f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    name: str = request.getfixturevalue("postgres")
    _run_sql(name, "DROP SCHEMA public CASCADE", "CREATE SCHEMA public")
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


@pytest.fixture
async def store(empty_url: str) -> AsyncIterator[Store]:
    async with Store(DatabaseConfig(url=empty_url)) as store:
        await store.upgrade()
        yield store


def answered(text: str = "Entra en…", *, handoff: str | None = None) -> Reply:
    return Reply(
        text=text,
        language="es",
        faq_ids=["returns.start"],
        source="curated",
        answered=handoff is None,
        pivot="How do I return an item?",
        handoff_reason=handoff,
        trace=[{"stage": "detect", "ms": 1.5, "language": "es"}],
    )


# -- migrations ----------------------------------------------------------------------------


async def test_migrations_create_the_schema_and_match_the_models(empty_url: str) -> None:
    """`upgrade` takes an empty database to head, and the models agree with the migrations."""
    async with Store(DatabaseConfig(url=empty_url)) as store:
        assert await store.current_revision() is None
        with pytest.raises(SchemaOutOfDate, match="bot db upgrade"):
            await store.check_schema()
        await store.upgrade()
        assert await store.current_revision() == head_revision()
        await store.check_schema()
        assert await drift(store.engine) == []


async def test_downgrade_to_base_and_back(empty_url: str) -> None:
    """The initial revision can be undone and applied again."""
    async with Store(DatabaseConfig(url=empty_url)) as store:
        await store.upgrade()
        await store.downgrade("base")
        assert await store.current_revision() is None
        await store.upgrade()
        assert await store.current_revision() == head_revision()


def test_db_commands(tmp_path: Path) -> None:
    """`bot db current` says the schema is out of date until `bot db upgrade` runs."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"

    def bot(*args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
        return subprocess.run(
            [sys.executable, "-m", "bot.cli", *args],
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=env,
            timeout=120,
            check=False,
        )

    before = bot("db", "current", "--db", url)
    assert before.returncode == 1
    assert "bot db upgrade" in before.stdout
    upgrade = bot("db", "upgrade", "--db", url)
    assert upgrade.returncode == 0, upgrade.stderr
    after = bot("db", "current", "--db", url)
    assert after.returncode == 0
    assert after.stdout.strip() == f"{head_revision()} (head)"


# -- conversations, seqs and messages ------------------------------------------------------


async def test_resume_token_finds_the_conversation_and_is_stored_hashed(store: Store) -> None:
    """Only the holder of the resume token gets the conversation back."""
    conv, token = await store.create_conversation(language="es", locale="es-ES", market="EU")
    assert (await store.find_by_resume(token)) == conv
    assert await store.find_by_resume(token + "x") is None
    assert await store.find_by_resume("") is None
    async with store._session() as session:
        stored = await session.scalar(select(Conversation.resume_hash))
    assert stored is not None
    assert token not in stored


async def test_every_event_takes_the_next_seq_and_only_stored_ones_replay(store: Store) -> None:
    """ack 1, typing 2 (sent, not stored), reply 3: the replay is ack and reply."""
    conv, _ = await store.create_conversation(language="es")
    accepted = await store.accept_message(conv.id, "m1", "¿Cómo devuelvo un artículo?")
    assert accepted.created
    assert accepted.ack.frame() == {
        "type": "ack",
        "seq": 1,
        "id": "m1",
        "text": "¿Cómo devuelvo un artículo?",
    }
    assert await store.next_seq(conv.id) == 2
    events = await store.record_reply(conv.id, accepted.message.id, "m1", answered())
    assert [(e.type, e.seq) for e in events] == [("reply", 3)]
    replay = await store.events_after(conv.id, 0)
    assert [(e.type, e.seq) for e in replay] == [("ack", 1), ("reply", 3)]
    assert replay[1].payload == {
        "text": "Entra en…",
        "lang": "es",
        "faq_ids": ["returns.start"],
        "sources": [],
        "reply_to": "m1",
    }
    assert [e.seq for e in await store.events_after(conv.id, 1)] == [3]
    assert (await store.conversation(conv.id)).last_seq == 3


async def test_concurrent_messages_get_distinct_seqs(store: Store, empty_url: str) -> None:
    """Seq allocation is atomic: 40 messages at once take 40 distinct seqs, each stored
    once (consecutive on SQLite's one writer; PostgreSQL's concurrent writers each reserve
    a block for the turn's typing, which leaves gaps)."""
    conv, _ = await store.create_conversation(language="en")
    results = await asyncio.gather(
        *(store.accept_message(conv.id, f"m{i}", f"message {i}") for i in range(40))
    )
    seqs = sorted(r.ack.seq for r in results)
    assert len(set(seqs)) == 40
    assert [e.seq for e in await store.events_after(conv.id, 0)] == seqs
    if empty_url.startswith("sqlite"):
        assert seqs == list(range(1, 41))


async def test_a_resent_message_id_is_stored_once(store: Store) -> None:
    """The same client id twice: one row, the original ack seq and text."""
    conv, _ = await store.create_conversation(language="es")
    first = await store.accept_message(conv.id, "m1", "hola")
    again = await store.accept_message(conv.id, "m1", "hola otra vez")
    assert not again.created
    assert again.ack == first.ack
    async with store._session() as session:
        count = await session.scalar(
            select(func.count()).select_from(Message).where(Message.conversation_id == conv.id)
        )
    assert count == 1


async def test_unreplied_messages_are_the_ones_without_a_reply(store: Store) -> None:
    """A message stored but never answered is found again (the server died mid-turn)."""
    conv, _ = await store.create_conversation(language="es")
    one = await store.accept_message(conv.id, "m1", "uno")
    two = await store.accept_message(conv.id, "m2", "dos")
    await store.record_reply(conv.id, one.message.id, "m1", answered())
    pending = await store.unreplied(conv.id)
    assert [m.client_id for m in pending] == ["m2"]
    assert pending[0] == two.message


async def test_a_message_is_answered_once(store: Store) -> None:
    """A second reply to the same message (another process, or this one after a freeze
    that outlived its turn lock) stores nothing and sends nothing, even when both race."""
    conv, _ = await store.create_conversation(language="es")
    accepted = await store.accept_message(conv.id, "m1", "¿Cómo devuelvo un artículo?")
    first, second = await asyncio.gather(
        store.record_reply(conv.id, accepted.message.id, "m1", answered()),
        store.record_reply(conv.id, accepted.message.id, "m1", answered()),
    )
    assert sorted([len(first), len(second)]) == [0, 1]
    late = await store.record_reply(conv.id, accepted.message.id, "m1", answered())
    assert late == []
    roles = [m["role"] for m in await store.messages(conv.id)]
    assert roles == ["customer", "bot"]
    assert [e.type for e in await store.events_after(conv.id, 0)] == ["ack", "reply"]


async def test_reply_records_the_turn_on_both_messages(store: Store) -> None:
    """Language, pivot, FAQ ids and the trace are stored with the message pair."""
    conv, _ = await store.create_conversation(language="en")
    accepted = await store.accept_message(conv.id, "m1", "¿Cómo devuelvo un artículo?")
    await store.record_reply(conv.id, accepted.message.id, "m1", answered())
    customer, bot = await store.messages(conv.id)
    assert customer["role"] == "customer"
    assert customer["language"] == "es"
    assert customer["pivot_text"] == "How do I return an item?"
    assert customer["replied"] is True
    assert bot["role"] == "bot"
    assert bot["reply_to"] == customer["id"]
    assert bot["delivered_text"] == "Entra en…"
    assert bot["faq_ids"] == ["returns.start"]
    assert bot["trace"] == [{"stage": "detect", "ms": 1.5, "language": "es"}]
    info = await store.conversation(conv.id)
    assert (info.language, info.no_answer_streak) == ("es", 0)
    records = await store.turn_records(conv.id, before_seq=99)
    assert records.conversation == info
    assert records.history == [("customer", "How do I return an item?"), ("bot", "Entra en…")]
    assert records.asked == [("¿Cómo devuelvo un artículo?", "returns.start")]


async def test_handoff_queues_the_conversation_once(store: Store) -> None:
    """A handoff reply queues the conversation once; later messages stay the bot's to
    answer while it waits (handoff.answer_while_queued), without leaving the queue."""
    conv, _ = await store.create_conversation(language="es")
    accepted = await store.accept_message(conv.id, "m1", "quiero hablar con una persona")
    events = await store.record_reply(
        conv.id, accepted.message.id, "m1", answered("Te paso…", handoff="customer_request")
    )
    assert [(e.type, e.seq) for e in events] == [("reply", 2), ("handoff", 3)]
    assert (await store.conversation(conv.id)).status == "queued"
    assert await store.request_handoff(conv.id, "customer_request", note="again") == []
    later = await store.accept_message(conv.id, "m2", "¿hola?")
    assert later.status == "queued"
    assert not later.message.replied  # the bot may still answer FAQ questions
    assert await store.unreplied(conv.id) == [later.message]
    assert (await store.conversation(conv.id)).status == "queued"
    assert await store.handoffs(conv.id) == ["customer_request"]


async def test_handoff_request_adds_a_system_note(store: Store) -> None:
    """`handoff.request` stores a handoff event and the localized note after it."""
    conv, _ = await store.create_conversation(language="es")
    events = await store.request_handoff(conv.id, "customer_request", note="Te paso…")
    assert [(e.type, e.seq, e.payload) for e in events] == [
        ("handoff", 1, {"reason": "customer_request"}),
        ("system", 2, {"text": "Te paso…"}),
    ]


async def test_no_answer_streak_counts_unanswered_turns(store: Store) -> None:
    """Turns without an answer raise the streak; an answer resets it."""
    conv, _ = await store.create_conversation(language="es")
    for i, ok in enumerate([False, False, True]):
        m = await store.accept_message(conv.id, f"m{i}", "?")
        reply = answered() if ok else Reply("No sé", "es", [], "message", answered=False)
        await store.record_reply(conv.id, m.message.id, f"m{i}", reply)
        streak = (await store.conversation(conv.id)).no_answer_streak
        assert streak == (0 if ok else i + 1)


# -- translation memory and feedback -------------------------------------------------------


async def test_only_approved_translations_are_loaded(store: Store) -> None:
    """Curated and reviewer-approved agent translations count; unapproved ones do not."""
    pairs = [
        ("¿Dónde está mi paquete?", "Where is my parcel?", "curated", None),
        ("Mi paquete llegó roto", "My parcel arrived broken", "agent", "marta"),
        ("Mi paquete no llega", "My parcel is not arriving", "agent", None),
    ]
    for text, translation, origin, approver in pairs:
        await store.add_translation(
            "es", "en", text, translation, key=normalize(text), origin=origin, approved_by=approver
        )
    # The same source again replaces the entry (unique per language pair and key).
    await store.add_translation(
        "es",
        "en",
        "¿DÓNDE está mi paquete?",
        "Where's my parcel?",
        key=normalize("¿Dónde está mi paquete?"),
    )
    approved = sorted(await store.approved_translations())
    assert approved == [
        ("es", "en", "Mi paquete llegó roto", "My parcel arrived broken"),
        ("es", "en", "¿DÓNDE está mi paquete?", "Where's my parcel?"),
    ]
    async with store._session() as session:
        count = await session.scalar(select(func.count()).select_from(TranslationMemoryEntry))
    assert count == 3


async def test_feedback_is_attached_to_a_message(store: Store) -> None:
    """A thumbs-down with a comment is stored against the bot's reply."""
    conv, _ = await store.create_conversation(language="es")
    m = await store.accept_message(conv.id, "m1", "hola")
    await store.record_reply(conv.id, m.message.id, "m1", answered())
    bot_message = (await store.messages(conv.id))[1]
    await store.add_feedback(bot_message["id"], -1, "no me ayudó")
    async with store._session() as session:
        rows = (await session.execute(select(Feedback))).scalars().all()
    assert [(r.message_id, r.rating, r.comment) for r in rows] == [
        (bot_message["id"], -1, "no me ayudó")
    ]


async def test_a_seq_sent_but_not_stored_is_never_handed_out_again(empty_url: str) -> None:
    """A typing event's seq is reserved before it is sent: after a restart the next
    stored event takes a higher one (the rest of the reserved block is a gap)."""
    config = DatabaseConfig(url=empty_url)
    async with Store(config) as store:
        await store.upgrade()
        conv, _ = await store.create_conversation(language="en")
        await store.accept_message(conv.id, "m1", "hello")
        assert await store.next_seq(conv.id) == 2  # sent as `typing`, then the process dies
    async with Store(config) as store:
        again = await store.accept_message(conv.id, "m2", "are you there?")
    assert again.ack.seq > 2


# -- retention and erasure ------------------------------------------------------------------


async def test_erasure_by_email_removes_everything_of_that_customer(store: Store) -> None:
    """`bot data erase --email` deletes the conversations where the customer gave that
    address, with their messages and events; other customers' conversations stay."""
    mine, _ = await store.create_conversation(language="de")
    await store.accept_message(mine.id, "m1", "Bitte an Marie.Dupont@example.com antworten")
    other, _ = await store.create_conversation(language="en")
    await store.accept_message(other.id, "m1", "where is my parcel?")
    assert await retention.conversations_of(store, "marie.dupont@EXAMPLE.com") == [mine.id]
    assert await retention.erase(store, [mine.id]) == 1
    assert await store.messages(mine.id) == []
    assert await store.events_after(mine.id, 0) == []
    assert [m["original_text"] for m in await store.messages(other.id)] == ["where is my parcel?"]


async def test_conversations_past_retention_are_purged(store: Store) -> None:
    """Conversations idle for longer than the retention are deleted; recent ones are kept."""
    old, _ = await store.create_conversation(language="en")
    await store.accept_message(old.id, "m1", "hello")
    recent, _ = await store.create_conversation(language="en")
    later = datetime.now(UTC) + timedelta(days=40)
    async with store._write() as session:
        await session.execute(
            update(Conversation)
            .where(Conversation.id == recent.id)
            .values(updated_at=later - timedelta(days=1))
        )
    assert await retention.purge(store, 30, now=later) == 1
    assert await store.messages(old.id) == []
    assert (await store.conversation(recent.id)).id == recent.id
