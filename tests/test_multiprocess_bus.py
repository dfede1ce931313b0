"""The Redis bus between server processes, on a real Redis: each ``RedisBus`` here stands
for one process (its own connection, its own origin id)."""

from __future__ import annotations

import asyncio
import os
import secrets
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager

import pytest

from bot.config import BusConfig
from bot.server.bus import Envelope, RedisBus, Section
from bot.server.rooms import Hub
from tests.test_server import TIMEOUT, wait_for

REDIS_URL = os.environ.get("BOT_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@pytest.fixture(scope="session")
async def redis_url() -> str:
    """The test Redis, or a skip saying why there is none."""
    redis = pytest.importorskip("redis.asyncio")
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2, socket_timeout=2)
    try:
        await client.ping()
    except Exception as exc:
        pytest.skip(f"Redis is not reachable at {REDIS_URL}: {exc}")
    finally:
        await client.aclose()
    return REDIS_URL


@pytest.fixture
def bus_config(redis_url: str) -> BusConfig:
    """A prefix of its own: tests running at once never hear each other."""
    return BusConfig(redis_url=redis_url, prefix=f"bot-test-{secrets.token_hex(4)}")


@asynccontextmanager
async def processes(
    bus_config: BusConfig, n: int
) -> AsyncIterator[list[tuple[RedisBus, list[Envelope]]]]:
    """``n`` buses on one Redis, each with the envelopes it received."""
    async with AsyncExitStack() as stack:
        out = []
        for _ in range(n):
            got: list[Envelope] = []
            out.append((await stack.enter_async_context(RedisBus(bus_config, got.append)), got))
        yield out


def typing(seq: int) -> Envelope:
    return Envelope("event", "c1", {"type": "typing", "seq": seq, "who": "bot"})


async def test_what_one_process_publishes_reaches_every_other_once_in_order(
    bus_config: BusConfig,
) -> None:
    """Events numbered in process A reach B and C once each, in seq order; A never gets
    its own back (its sockets had them already)."""
    async with processes(bus_config, 3) as [(a, got_a), (_, got_b), (_, got_c)]:
        for seq in range(1, 6):
            section = await a.enter("c1")
            await a.leave("c1", section, [typing(seq)], seq)
        a.publish(Envelope("queue"))
        await wait_for(lambda: len(got_b) == 6 and len(got_c) == 6, "six envelopes")
        await asyncio.sleep(0.2)  # nothing more arrives
    for got in (got_b, got_c):
        assert [e.frame.get("seq") for e in got] == [1, 2, 3, 4, 5, None]
        assert got[-1].kind == "queue"
    assert got_a == []


async def test_one_process_at_a_time_numbers_a_conversations_events(bus_config: BusConfig) -> None:
    """While A numbers an event of a conversation, B waits for it (another conversation
    does not), then learns the last seq A published, so it can deliver it first."""
    async with processes(bus_config, 2) as [(a, _), (b, got_b)]:
        held = await a.enter("c1")
        waiting = asyncio.create_task(b.enter("c1"))
        other = await asyncio.wait_for(b.enter("c2"), TIMEOUT)
        await b.leave("c2", other, [], None)
        await asyncio.sleep(0.3)
        assert not waiting.done()
        await a.leave("c1", held, [typing(7)], 7)
        section = await asyncio.wait_for(waiting, TIMEOUT)
        await b.leave("c1", section, [], None)
        await wait_for(lambda: len(got_b) == 1, "A's event")
    assert held.token is not None and held.last is None
    assert section.token is not None and section.last == 7


async def test_one_bot_turn_at_a_time_per_conversation_across_processes(
    bus_config: BusConfig,
) -> None:
    """Two processes that both hold a message answer it one after the other, never at once."""
    order: list[str] = []

    async def turn(bus: RedisBus, name: str) -> None:
        async with bus.turn_lock("c1"):
            order.append(f"{name} starts")
            await asyncio.sleep(0.3)
            order.append(f"{name} ends")

    async with processes(bus_config, 2) as [(a, _), (b, _)]:
        await asyncio.wait_for(asyncio.gather(turn(a, "A"), turn(b, "B")), TIMEOUT)
    assert [o.split()[1] for o in order] == ["starts", "ends", "starts", "ends"]
    assert order[0].split()[0] == order[1].split()[0]


async def test_rooms_in_two_processes_share_events_and_the_queue(bus_config: BusConfig) -> None:
    """A room's events in A reach the same conversation's room in B (not a room of another
    conversation), and a queue change in A wakes B's agent desk."""
    hub_a, hub_b = Hub(), Hub()
    async with (
        RedisBus(bus_config, hub_a.receive) as bus_a,
        RedisBus(bus_config, hub_b.receive) as bus_b,
    ):
        hub_a.bus, hub_b.bus = bus_a, bus_b
        room_a, room_b, elsewhere = hub_a.acquire("c1"), hub_b.acquire("c1"), hub_b.acquire("c2")
        for seq in (1, 2, 3):
            async with room_a.emit_lock:
                room_a.send({"type": "typing", "seq": seq, "who": "bot"})
        hub_a.queue_changed.set()
        await wait_for(lambda: room_b.delivered == 3, "seq 3 in B")
        await asyncio.wait_for(hub_b.queue_changed.wait(), TIMEOUT)
        async with room_b.emit_lock:  # B numbers after what it received
            room_b.send({"type": "typing", "seq": 4, "who": "agent"})
        await wait_for(lambda: room_a.delivered == 4, "seq 4 in A")
    assert elsewhere.delivered is None


async def test_without_redis_a_process_serves_its_own_sockets(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis down: the bus says so in the log and gives way; sections and turns still run."""
    down = BusConfig(redis_url="redis://127.0.0.1:1/0", timeout=0.2)
    async with RedisBus(down, lambda envelope: None) as bus:
        section = await asyncio.wait_for(bus.enter("c1"), TIMEOUT)
        await asyncio.wait_for(bus.leave("c1", section, [typing(1)], 1), TIMEOUT)
        async with asyncio.timeout(TIMEOUT), bus.turn_lock("c1"):
            pass
    assert section.token is None
    assert "does not answer: serving this process's sockets alone" in caplog.text


class NoticeWhileLeaving(RedisBus):
    """A real bus that runs ``hook`` while a section's ``leave`` is still awaited (the room's
    emit lock held): where another task's console notice can land."""

    hook: Callable[[], None] = staticmethod(lambda: None)

    async def leave(
        self, conversation: str, section: Section, envelopes: list[Envelope], last: int | None
    ) -> None:
        await super().leave(conversation, section, envelopes, last)
        self.hook()


async def test_what_is_shared_while_a_section_publishes_is_not_held_back(
    bus_config: BusConfig,
) -> None:
    """A console notice (the customer's message annotated for the agent) shared while an
    emit section is publishing reaches the other process at once, not with some later
    section: in a quiet conversation there may be none."""
    hub_a = Hub()
    got_b: list[Envelope] = []
    async with (
        NoticeWhileLeaving(bus_config, hub_a.receive) as bus_a,
        RedisBus(bus_config, got_b.append),
    ):
        hub_a.bus = bus_a
        room = hub_a.acquire("c1")
        bus_a.hook = lambda: room.notify({"type": "transcript.changed", "conversation": "c1"})
        async with room.emit_lock:
            room.send({"type": "typing", "seq": 1, "who": "bot"})
        await wait_for(lambda: any(e.kind == "notify" for e in got_b), "the notice in B")
    assert [e.frame["type"] for e in got_b] == ["typing", "transcript.changed"]
