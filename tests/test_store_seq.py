"""Seqs in blocks: a streamed reply does not cost a database write per piece, and no seq a
client saw is ever handed out again, across restarts and several processes."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import event

from bot.config import DatabaseConfig
from bot.store import Store
from tests.test_store import answered, empty_url, postgres  # noqa: F401 (fixtures)

WRITES = ("INSERT", "UPDATE", "DELETE")


@contextmanager
def counting_writes(store: Store) -> Iterator[list[str]]:
    """Every write statement the store's real engine sends while in the block."""
    writes: list[str] = []

    def seen(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith(WRITES):
            writes.append(statement)

    for engine in store.sync_engines:
        event.listen(engine, "before_cursor_execute", seen)
    try:
        yield writes
    finally:
        for engine in store.sync_engines:
            event.remove(engine, "before_cursor_execute", seen)


async def test_a_streamed_reply_costs_one_write_per_block(empty_url: str) -> None:  # noqa: F811
    """Typing and 40 streamed pieces take 41 increasing seqs in at most ceil(41/16)
    writes (the ack's write reserved the first block); the reply stored after them takes
    the next seq (no gap within one process)."""
    async with Store(DatabaseConfig(url=empty_url), seq_block=16) as store:
        await store.upgrade()
        conv, _ = await store.create_conversation(language="en")
        with counting_writes(store) as writes:
            agent_typing = [await store.next_seq(conv.id) for _ in range(20)]
        assert agent_typing == list(range(1, 21))
        assert len(writes) == math.ceil(20 / 16)
        accepted = await store.accept_message(conv.id, "m1", "where is my order?")
        assert accepted.ack.seq == 21
        with counting_writes(store) as writes:
            seqs = [await store.next_seq(conv.id) for _ in range(41)]
        assert seqs == list(range(22, 63))
        assert len(writes) <= math.ceil(41 / 16)
        assert len(writes) == 2  # 16 came with the ack; 25 more: two blocks
        assert all(w.lstrip().upper().startswith("UPDATE CONVERSATIONS") for w in writes)
        assert (await store.conversation(conv.id)).last_seq == 62  # what welcome says
        events = await store.record_reply(conv.id, accepted.message.id, "m1", answered())
        assert [e.seq for e in events] == [63]
        again = await store.accept_message(conv.id, "m2", "thanks")
        assert again.ack.seq == 64
        assert [e.seq for e in await store.events_after(conv.id, 0)] == [21, 63, 64]


async def test_a_restart_never_hands_out_a_seq_a_client_saw(empty_url: str) -> None:  # noqa: F811
    """Seqs sent from a reserved block, then the process dies: the new process's typing,
    stored events and welcome all number above every seq sent before."""
    config = DatabaseConfig(url=empty_url)
    async with Store(config, seq_block=8) as store:
        await store.upgrade()
        conv, _ = await store.create_conversation(language="en")
        await store.accept_message(conv.id, "m1", "hello")
        sent = [await store.next_seq(conv.id) for _ in range(5)]  # 2..6 from block 2..9
    assert sent == [2, 3, 4, 5, 6]
    async with Store(config, seq_block=8) as store:  # a new process on the same database
        welcome_seq = (await store.conversation(conv.id)).last_seq
        typing = await store.next_seq(conv.id)
        ack = (await store.accept_message(conv.id, "m2", "still there?")).ack.seq
    assert welcome_seq >= max(sent)
    assert max(sent) < typing < ack


async def test_two_processes_never_share_a_seq(empty_url: str) -> None:  # noqa: F811
    """Two server processes on one database (SQLite file or PostgreSQL) number the same
    conversation: each reserves its own blocks, no seq is handed out twice, and each
    process's seqs increase."""
    config = DatabaseConfig(url=empty_url)
    async with Store(config, seq_block=4) as a, Store(config, seq_block=4) as b:
        await a.upgrade()
        conv, _ = await a.create_conversation(language="en")
        taken: dict[str, list[int]] = {"a": [], "b": []}
        for n in range(30):
            for name, store in (("a", a), ("b", b)):
                if n % 7 == 3:
                    accepted = await store.accept_message(conv.id, f"{name}{n}", "hi")
                    taken[name].append(accepted.ack.seq)
                else:
                    taken[name].append(await store.next_seq(conv.id))
        everything = taken["a"] + taken["b"]
        assert len(set(everything)) == len(everything)
        assert taken["a"] == sorted(taken["a"]) and taken["b"] == sorted(taken["b"])
        acks = [e.seq for e in await a.events_after(conv.id, 0)]
        assert len(acks) == 8 and set(acks) <= set(everything)


async def test_a_block_is_dropped_once_another_process_numbered_past_it(
    empty_url: str,  # noqa: F811
) -> None:
    """When the bus says another process sent a higher seq, this process's next typing
    goes above it (clients ignore anything at or below the last seq they applied)."""
    config = DatabaseConfig(url=empty_url)
    async with Store(config, seq_block=8) as a, Store(config, seq_block=8) as b:
        await a.upgrade()
        conv, _ = await a.create_conversation(language="en")
        assert await a.next_seq(conv.id) == 1  # a holds 1..8
        other = await b.next_seq(conv.id)  # b holds 9..16
        assert await a.next_seq(conv.id) == 2  # a does not know yet
        a.numbered_elsewhere(conv.id, other)
        assert await a.next_seq(conv.id) > other
