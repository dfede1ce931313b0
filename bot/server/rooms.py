"""Live conversations in this process: who is connected, and the order of events.

A ``Room`` exists while a conversation has a socket or a turn in flight (``Hub.acquire``
and ``Hub.release`` count them). Every event of a conversation is numbered and sent under
the room's ``emit_lock``, so events reach every socket in ``seq`` order; ``turn_lock`` lets
one bot turn run at a time.

Several tabs resuming the same conversation share its room and all see its events. Agent
console sockets following a conversation are its ``watchers``: they get every event wrapped
as ``conversation.event`` (bot.server.agent). ``Hub.agents`` are all console sockets;
``Hub.queue_changed`` wakes the desk that sends them the queue.

Several processes (``[bus] redis_url``, bot.server.bus): both locks also hold across
processes; what a room sends and notifies is published, and the same conversation's room in
another process delivers it to its own sockets and watchers (``Hub.receive``); setting
``queue_changed`` sets it everywhere. A room delivers each seq once and never one below
what it delivered, so a late or repeated copy is dropped (the database has it for a resume).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast

from bot import frames
from bot.server.bus import CATCH_UP_WAIT, UNLOCKED, Bus, Envelope, Section
from bot.server.protocol import encode
from bot.store import StoredEvent

log = logging.getLogger(__name__)


class EmitLock:
    """``async with room.emit_lock``: the room's asyncio lock and the bus's emit section.

    Entering waits until the room delivered what other processes published before (a short
    wait at most); leaving publishes what the room sent meanwhile."""

    def __init__(self, room: Room) -> None:
        self._room = room
        self._lock = asyncio.Lock()
        self._section: Section = UNLOCKED

    def locked(self) -> bool:
        return self._lock.locked()

    async def __aenter__(self) -> None:
        await self._lock.acquire()
        try:
            room = self._room
            self._section = await room.bus.enter(room.id)
            if self._section.last is not None:
                await room.caught_up(self._section.last)
        except BaseException:
            self._lock.release()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        room, section = self._room, self._section
        outbox, room.outbox, self._section = room.outbox, [], UNLOCKED
        try:
            if section is not UNLOCKED or outbox:
                seqs = [e.frame["seq"] for e in outbox if isinstance(e.frame.get("seq"), int)]
                await room.bus.leave(room.id, section, outbox, max(seqs, default=None))
        finally:
            # Shared while ``leave`` ran (the lock still held): nothing numbered, so nothing
            # to order; published now rather than held back until some later section.
            late, room.outbox = room.outbox, []
            for envelope in late:
                room.bus.publish(envelope)
            self._lock.release()


@dataclass(eq=False)
class Room:
    id: str
    bus: Bus = field(default_factory=Bus)
    sockets: set[ServerConnection] = field(default_factory=set)
    in_flight: set[str] = field(default_factory=set)  # client ids with a turn queued or running
    watchers: set[ServerConnection] = field(default_factory=set)  # agent console sockets
    users: int = 0
    delivered: int | None = None  # the highest seq sent to this process's sockets
    outbox: list[Envelope] = field(default_factory=list)  # to publish when emit_lock is left
    emit_lock: EmitLock = field(init=False)
    _local_turn: asyncio.Lock = field(default_factory=asyncio.Lock, init=False)
    _advanced: asyncio.Event = field(default_factory=asyncio.Event, init=False)

    def __post_init__(self) -> None:
        self.emit_lock = EmitLock(self)

    @property
    def turn_lock(self) -> AbstractAsyncContextManager[None]:
        """``async with room.turn_lock``: one bot turn at a time, in this process and (with
        a bus) in all of them."""
        return self._turn()

    @contextlib.asynccontextmanager
    async def _turn(self) -> AsyncIterator[None]:
        async with self._local_turn, self.bus.turn_lock(self.id):
            yield

    def send(self, frame: Mapping[str, Any]) -> None:
        """Push a frame to every socket of the conversation (callers hold ``emit_lock``),
        here and, through the bus, in the other processes."""
        self.deliver(frame)
        self._share(Envelope("event", self.id, dict(frame)))

    def notify(self, frame: Mapping[str, Any]) -> None:
        """Push an agent-protocol frame to the agents following the conversation."""
        self.notify_here(frame)
        self._share(Envelope("notify", self.id, dict(frame)))

    def send_events(self, events: list[StoredEvent]) -> None:
        for event in events:
            self.send(event.frame())

    def deliver(self, frame: Mapping[str, Any]) -> None:
        """Send a frame to this process's sockets and watchers, once per seq, in order.

        ``broadcast`` writes without waiting, so a slow socket never holds the lock;
        ping timeouts drop sockets that stop reading."""
        seq = frame.get("seq")
        if isinstance(seq, int):
            if self.bus.distributed and self.delivered is not None and seq <= self.delivered:
                return  # a late copy: its socket would drop it (the widget does too)
            self.delivered = seq
            self._advanced.set()
            self._advanced = asyncio.Event()
        broadcast(self.sockets, encode(frame))
        self.notify_here(frames.conversation_event(self.id, frame))

    def notify_here(self, frame: Mapping[str, Any]) -> None:
        if self.watchers:
            broadcast(self.watchers, encode(frame))

    async def caught_up(self, last: int, wait: float = CATCH_UP_WAIT) -> None:
        """Wait until the events up to ``last`` (published by another process) are delivered
        here, so what this process numbers next follows them on every socket."""
        if self.delivered is None:  # nobody here saw an earlier one: nothing to wait for
            self.delivered = last
            return
        try:
            async with asyncio.timeout(wait):
                while self.delivered < last:
                    await self._advanced.wait()
        except TimeoutError:
            log.warning("conversation %s: seq %d from another process did not arrive in "
                        "time; it is left to a resume", self.id, last)  # fmt: skip

    def _share(self, envelope: Envelope) -> None:
        if not self.bus.distributed:
            return
        if self.emit_lock.locked():  # published, in order, when the section ends
            self.outbox.append(envelope)
        else:
            self.bus.publish(envelope)


class QueueChanged(asyncio.Event):
    """Set when the agents' queue may have changed: set in one process, set in all."""

    def __init__(self, hub: Hub) -> None:
        super().__init__()
        self._hub = hub

    def set(self) -> None:
        self._hub.bus.publish(Envelope("queue"))
        super().set()

    def set_here(self) -> None:
        super().set()


class Hub:
    def __init__(self, bus: Bus | None = None) -> None:
        self._rooms: dict[str, Room] = {}
        self.bus = bus or Bus()
        # Told every seq another process sent: the store's next seqs go above it.
        self.numbered_elsewhere: Callable[[str, int], None] = lambda conversation, seq: None
        self.agents: set[ServerConnection] = set()
        self.queue_changed = QueueChanged(self)

    def get(self, conversation_id: str) -> Room | None:
        return self._rooms.get(conversation_id)

    def acquire(self, conversation_id: str) -> Room:
        """The conversation's room; every ``acquire`` is paired with one ``release``."""
        room = self._rooms.get(conversation_id)
        if room is None:
            room = self._rooms[conversation_id] = Room(conversation_id, self.bus)
        room.users += 1
        return room

    def release(self, room: Room) -> None:
        room.users -= 1
        if room.users <= 0 and self._rooms.get(room.id) is room:
            del self._rooms[room.id]

    def receive(self, envelope: Envelope) -> None:
        """What another process published: delivered to this process's sockets of the
        conversation, if it has any."""
        if envelope.kind == "queue":
            self.queue_changed.set_here()
            return
        seq = envelope.frame.get("seq")
        if envelope.kind == "event" and isinstance(seq, int):
            self.numbered_elsewhere(envelope.conversation, seq)
        room = self._rooms.get(envelope.conversation)
        if room is None:
            return
        if envelope.kind == "event":
            room.deliver(envelope.frame)
        elif envelope.kind == "notify":
            room.notify_here(envelope.frame)

    def __len__(self) -> int:
        return len(self._rooms)
