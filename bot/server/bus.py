"""What server processes tell each other: ``Bus`` (one process) or ``RedisBus`` (several).

A process delivers the events it makes to its own sockets at once (bot.server.rooms) and
puts them on the bus; every other process sharing the bus delivers them to its own sockets
of that conversation. A process skips what it published itself, so no socket gets an event
twice. Three things cross processes:

    emit section  ``async with room.emit_lock``: numbering and sending a conversation's
                  events. A per-conversation Redis lock (short expiry); entering returns
                  the highest seq any process published for the conversation, which the
                  room waits to have delivered before it numbers more, so sockets get
                  events in seq order whichever process made them. Leaving publishes the
                  section's events, records their last seq and unlocks, in one script.
    turn lock     ``async with room.turn_lock``: one bot turn at a time per conversation
                  across processes (a lock with expiry, renewed while the turn runs), so a
                  message two processes see is answered once.
    publish       the rest, in order: agent notifications, "the queue changed".

Redis keeps nothing but expiring locks and one number per active conversation. Redis
failures never stop a process: it logs them and serves its own sockets alone (as one
process without Redis would) until Redis answers again; what a socket missed meanwhile is
in the database and replayed on resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

from bot.config import BusConfig
from bot.server.ratelimit import LogThrottle

log = logging.getLogger(__name__)

EMIT_TTL_MS = 3000  # an emit section holds its lock for one database write and a send
EMIT_WAIT = 5.0  # past this a section goes ahead unlocked (a holder died: its lock expires)
LAST_TTL_MS = 600_000  # the last published seq of a conversation idle this long is dropped
CATCH_UP_WAIT = 0.5  # how long a room waits for another process's event before numbering
TURN_TTL = 10.0  # a turn lock is renewed every TURN_TTL / 3 while the turn runs
RECONNECT_MAX = 5.0

# KEYS: lock, last. ARGV: token, ttl ms. -> {1, last seq or ""} when locked, else {0, ""}.
_ENTER = """
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then
  return {1, redis.call('GET', KEYS[2]) or ''}
end
return {0, ''}
"""
# KEYS: lock, last. ARGV: token, channel, last seq or "", ttl ms, messages...
_LEAVE = """
for i = 5, #ARGV do redis.call('PUBLISH', ARGV[2], ARGV[i]) end
if ARGV[3] ~= '' and tonumber(ARGV[3]) > tonumber(redis.call('GET', KEYS[2]) or '0') then
  redis.call('SET', KEYS[2], ARGV[3], 'PX', ARGV[4])
end
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""


@dataclass(frozen=True)
class Envelope:
    """One thing for the other processes: ``event`` (a conversation's event, as its
    sockets get it), ``notify`` (an agent-protocol frame for the agents following the
    conversation) or ``queue`` (the agents' queue may have changed)."""

    kind: str
    conversation: str = ""
    frame: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Section:
    """An entered emit section: its lock token (None: not locked) and the highest seq
    published for the conversation before it (None: nothing known)."""

    token: str | None = None
    last: int | None = None


UNLOCKED = Section()
Receiver = Callable[[Envelope], None]


class Bus:
    """One process: nothing to share; the rooms' asyncio locks do all the work."""

    distributed = False

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        return None

    async def enter(self, conversation: str) -> Section:
        return UNLOCKED

    async def leave(
        self, conversation: str, section: Section, envelopes: list[Envelope], last: int | None
    ) -> None:
        return None

    def publish(self, envelope: Envelope) -> None:
        return None

    @contextlib.asynccontextmanager
    async def turn_lock(self, conversation: str) -> AsyncIterator[None]:
        yield


class RedisBus(Bus):
    """Processes sharing one Redis (and ``bus.prefix``) share their conversations' events."""

    distributed = True

    def __init__(self, config: BusConfig, receive: Receiver) -> None:
        from redis.asyncio import Redis

        self.config = config
        self.receive = receive
        self.origin = secrets.token_hex(8)  # this process, on every message it publishes
        self.channel = f"{config.prefix}:events"
        self.redis = Redis.from_url(
            config.redis_url,
            socket_timeout=config.timeout,
            socket_connect_timeout=config.timeout,
            decode_responses=True,
        )
        self._enter = self.redis.register_script(_ENTER)
        self._leave = self.redis.register_script(_LEAVE)
        self._outbox: asyncio.Queue[str] = asyncio.Queue()
        self._subscribed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.quiet = LogThrottle()

    async def __aenter__(self) -> RedisBus:
        self._tasks = [
            asyncio.create_task(self._listen(), name="bus listener"),
            asyncio.create_task(self._publish_queued(), name="bus publisher"),
        ]
        try:  # serve only once this process hears the others (or Redis is known down)
            async with asyncio.timeout(self.config.timeout * 2):
                await self._subscribed.wait()
        except TimeoutError:
            log.error("Redis at %s does not answer: serving this process's sockets alone "
                      "until it does", _address(self.config.redis_url))  # fmt: skip
        else:
            log.info("sharing events through Redis at %s", _address(self.config.redis_url))
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.redis.aclose()

    # -- emit sections ----------------------------------------------------------------------

    def _keys(self, conversation: str, kind: str) -> str:
        return f"{self.config.prefix}:{kind}:{conversation}"

    async def enter(self, conversation: str) -> Section:
        token = secrets.token_hex(8)
        keys = [self._keys(conversation, "emit"), self._keys(conversation, "last")]
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + EMIT_WAIT, 0.002
        while True:
            try:
                locked, last = await self._enter(keys=keys, args=[token, EMIT_TTL_MS])
            except Exception as exc:  # Redis down: this process goes on alone
                self._failed("enter", exc)
                return UNLOCKED
            if int(locked):
                return Section(token, int(last) if last else None)
            if loop.time() > deadline:
                log.warning("conversation %s: emit lock held too long; going ahead", conversation)
                return UNLOCKED
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)

    async def leave(
        self, conversation: str, section: Section, envelopes: list[Envelope], last: int | None
    ) -> None:
        keys = [self._keys(conversation, "emit"), self._keys(conversation, "last")]
        args: list[str | int] = [
            section.token or "",
            self.channel,
            "" if last is None else last,
            LAST_TTL_MS,
            *(self._encode(e) for e in envelopes),
        ]
        try:
            await self._leave(keys=keys, args=args)
        except Exception as exc:
            self._failed("publish", exc)

    # -- the rest ---------------------------------------------------------------------------

    def publish(self, envelope: Envelope) -> None:
        self._outbox.put_nowait(self._encode(envelope))

    @contextlib.asynccontextmanager
    async def turn_lock(self, conversation: str) -> AsyncIterator[None]:
        lock = self.redis.lock(self._keys(conversation, "turn"), timeout=TURN_TTL, sleep=0.05)
        try:
            held = bool(await lock.acquire())
        except Exception as exc:  # Redis down: the room's asyncio lock still holds here
            self._failed("turn lock", exc)
            held = False
        renew = asyncio.create_task(_renew(lock)) if held else None
        try:
            yield
        finally:
            if renew is not None:
                renew.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renew
                try:
                    await lock.release()
                except Exception as exc:  # expired meanwhile, or Redis down
                    self._failed("turn unlock", exc)

    def _encode(self, envelope: Envelope) -> str:
        message = {"o": self.origin, "k": envelope.kind, "c": envelope.conversation,
                   "f": envelope.frame}  # fmt: skip
        return json.dumps(message, ensure_ascii=False, separators=(",", ":"))

    async def _publish_queued(self) -> None:
        while True:
            data = await self._outbox.get()
            try:
                await self.redis.publish(self.channel, data)
            except Exception as exc:
                self._failed("publish", exc)

    async def _listen(self) -> None:
        """Deliver what the other processes publish; reconnect when Redis goes away."""
        pause = 0.1
        while True:
            try:
                async with self.redis.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    await pubsub.get_message(timeout=self.config.timeout)  # the confirmation
                    self._subscribed.set()
                    pause = 0.1
                    while True:
                        message = await pubsub.get_message(
                            ignore_subscribe_messages=True, timeout=1.0
                        )
                        if message is not None:
                            self._deliver(message.get("data"))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self._failed("subscription", exc)
            await asyncio.sleep(pause)
            pause = min(pause * 2, RECONNECT_MAX)

    def _deliver(self, data: Any) -> None:
        try:
            message = json.loads(data)
            if message["o"] == self.origin:
                return  # this process delivered it already
            envelope = Envelope(str(message["k"]), str(message["c"]), dict(message["f"]))
        except (TypeError, ValueError, KeyError):
            self.quiet.log(log, logging.WARNING, "bad", "unreadable message on %s", self.channel)
            return
        try:
            self.receive(envelope)
        except Exception:
            log.exception("delivering a %s from another process failed", envelope.kind)

    def _failed(self, what: str, exc: BaseException) -> None:
        self.quiet.log(
            log, logging.WARNING, what, "Redis %s failed (%s: %s): serving this process alone",
            what, type(exc).__name__, exc,
        )  # fmt: skip


async def _renew(lock: Any) -> None:
    while True:
        await asyncio.sleep(TURN_TTL / 3)
        try:
            await lock.reacquire()
        except Exception as exc:  # the turn goes on; another process may now take one
            log.warning("a turn lock could not be renewed: %s", exc)
            return


def _address(url: str) -> str:
    """The URL without its password, for the log."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{f':{parts.port}' if parts.port else ''}{parts.path}"
