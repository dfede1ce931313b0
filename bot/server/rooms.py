"""Live conversations in this process: who is connected, and the order of events.

A ``Room`` exists while a conversation has a socket or a turn in flight (``Hub.acquire``
and ``Hub.release`` count them). Every event of a
conversation is numbered and sent under the room's ``emit_lock``, so events reach every
socket in ``seq`` order; ``turn_lock`` lets one bot turn run at a time.

Several tabs resuming the same conversation share its room and all see its events. Agent
console sockets following a conversation are its ``watchers``: they get every event wrapped
as ``conversation.event`` (bot.server.agent). ``Hub.agents`` are all console sockets;
``Hub.queue_changed`` wakes the desk that sends them the queue. Rooms
of other processes are out of reach: fanning out across processes (Redis pub/sub, or
PostgreSQL LISTEN/NOTIFY) is future work.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.server import ServerConnection, broadcast

from bot.server.protocol import encode
from bot.store import StoredEvent


@dataclass(eq=False)
class Room:
    id: str
    emit_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    turn_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    sockets: set[ServerConnection] = field(default_factory=set)
    in_flight: set[str] = field(default_factory=set)  # client ids with a turn queued or running
    watchers: set[ServerConnection] = field(default_factory=set)  # agent console sockets
    users: int = 0

    def send(self, frame: dict[str, Any]) -> None:
        """Push a frame to every socket of the conversation (callers hold ``emit_lock``).

        ``broadcast`` writes without waiting, so a slow socket never holds the lock;
        ping timeouts drop sockets that stop reading.
        """
        broadcast(self.sockets, encode(frame))
        self.notify({"type": "conversation.event", "conversation": self.id, "event": frame})

    def notify(self, frame: dict[str, Any]) -> None:
        """Push an agent-protocol frame to the agents following the conversation."""
        if self.watchers:
            broadcast(self.watchers, encode(frame))

    def send_events(self, events: list[StoredEvent]) -> None:
        for event in events:
            self.send(event.frame())


class Hub:
    def __init__(self) -> None:
        self._rooms: dict[str, Room] = {}
        self.agents: set[ServerConnection] = set()
        self.queue_changed = asyncio.Event()

    def get(self, conversation_id: str) -> Room | None:
        return self._rooms.get(conversation_id)

    def acquire(self, conversation_id: str) -> Room:
        """The conversation's room; every ``acquire`` is paired with one ``release``."""
        room = self._rooms.get(conversation_id)
        if room is None:
            room = self._rooms[conversation_id] = Room(conversation_id)
        room.users += 1
        return room

    def release(self, room: Room) -> None:
        room.users -= 1
        if room.users <= 0 and self._rooms.get(room.id) is room:
            del self._rooms[room.id]

    def __len__(self) -> int:
        return len(self._rooms)
