"""The ``/ws/chat`` connection handler: one ``Session`` per customer socket.

    hello            -> welcome, then the stored events the client missed, in order
    message          -> stored with its ack event, ack sent, then a bot turn (bot.server.turns)
    handoff.request  -> the conversation is queued for a human: handoff + system events

Frames that break the protocol get an ``error`` event and the connection stays open; the
socket is closed with 1000 after ``idle_timeout`` seconds without a frame.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from bot.config import ServerConfig
from bot.errors import ProtocolError
from bot.server import protocol
from bot.server.metrics import Metrics
from bot.server.ratelimit import TokenBucket
from bot.server.rooms import Hub, Room
from bot.server.texts import Texts, valid_locale
from bot.server.turns import Turns
from bot.store import ConversationInfo, Store

log = logging.getLogger(__name__)

CUSTOMER_HANDOFF = "customer_request"


@dataclass(frozen=True)
class ChatHandler:
    """What every session shares; called by websockets for each ``/ws/chat`` socket."""

    config: ServerConfig
    store: Store
    hub: Hub
    turns: Turns
    texts: Texts
    metrics: Metrics

    async def __call__(self, ws: ServerConnection) -> None:
        session = Session(self, ws)
        self.metrics.connected()
        try:
            idle = await session.run()
        except ConnectionClosed:
            pass
        except Exception:
            log.exception("chat connection from %s failed", ws.remote_address)
            await ws.close(CloseCode.INTERNAL_ERROR, "server error")
        else:
            if idle:
                await ws.close(CloseCode.NORMAL_CLOSURE, "idle")
        finally:
            session.detach()
            self.metrics.disconnected()


class Session:
    def __init__(self, shared: ChatHandler, ws: ServerConnection) -> None:
        self.shared = shared
        self.ws = ws
        self.room: Room | None = None
        self.language = shared.texts.default_language
        self.locale: str | None = None
        self.bucket = TokenBucket(
            shared.config.rate_limit_messages, shared.config.rate_limit_window
        )

    async def run(self) -> bool:
        """Handle frames until the client goes away (False) or stays silent too long (True)."""
        while True:
            try:
                async with asyncio.timeout(self.shared.config.idle_timeout):
                    data = await self.ws.recv()
            except TimeoutError:
                return True
            await self.dispatch(data)

    async def dispatch(self, data: str | bytes) -> None:
        frame: protocol.ClientFrame | None = None
        try:
            frame = protocol.parse(data)
            if isinstance(frame, protocol.Hello):
                await self.hello(frame)
            elif self.room is None:
                raise ProtocolError("send hello first", code="not_ready")
            elif isinstance(frame, protocol.Message):
                await self.message(self.room, frame)
            else:
                await self.handoff(self.room)
        except ProtocolError as exc:
            log.debug("refused frame from %s: %s", self.ws.remote_address, exc)
            await self.error(exc.code)
        except (ConnectionClosed, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("frame from %s failed", self.ws.remote_address)
            await self.error("internal", frame.id if isinstance(frame, protocol.Message) else None)

    # -- frames -----------------------------------------------------------------------------

    async def hello(self, frame: protocol.Hello) -> None:
        if self.room is not None:
            raise ProtocolError("hello was already sent on this connection")
        if not valid_locale(frame.locale):
            raise ProtocolError("'locale' is not a BCP 47 tag")
        store, texts = self.shared.store, self.shared.texts
        self.locale, self.language = frame.locale, texts.language_of(frame.locale)
        if frame.resume is None:
            conv, token = await store.create_conversation(
                language=self.language, locale=frame.locale, market=texts.market_of(frame.locale)
            )
        else:
            found = await store.find_by_resume(frame.resume)
            if found is None:
                raise ProtocolError("unknown resume token", code="bad_resume")
            conv, token = found, frame.resume
            if conv.locale != frame.locale:  # the customer picked another language
                market = texts.market_of(frame.locale)
                await store.set_locale(conv.id, frame.locale, self.language, market)
        room = self.room = self.shared.hub.acquire(conv.id)
        async with room.emit_lock:  # nothing new is numbered while the replay is sent
            conv = await store.conversation(conv.id)
            self.language = conv.language
            await self.send(protocol.welcome(conv.id, token, conv.last_seq, conv.language))
            for event in await store.events_after(conv.id, frame.last_seq):
                await self.send(event.frame())
            room.sockets.add(self.ws)
        await self.answer_pending(room, conv)

    async def answer_pending(self, room: Room, conv: ConversationInfo) -> None:
        """Customer messages stored but never answered (the server stopped mid-turn)."""
        if conv.status == "bot":
            for message in await self.shared.store.unreplied(conv.id):
                self.shared.turns.schedule(room, message)

    async def message(self, room: Room, frame: protocol.Message) -> None:
        config = self.shared.config
        if not self.bucket.take():
            await self.error("rate_limited", frame.id)
            return
        text = frame.text.strip()
        if not text:
            await self.error("bad_frame", frame.id)
            return
        if len(text) > config.max_message_chars:
            await self.error("too_long", frame.id, limit=str(config.max_message_chars))
            return
        async with room.emit_lock:
            accepted = await self.shared.store.accept_message(room.id, frame.id, text)
            if accepted.created:
                room.send(accepted.ack.frame())
            else:  # a resend: the original ack, to this socket only
                await self.send(accepted.ack.frame())
        if accepted.created:
            self.shared.metrics.messages.labels("customer").inc()
        if accepted.status == "bot" and not accepted.message.replied:
            self.shared.turns.schedule(room, accepted.message)

    async def handoff(self, room: Room) -> None:
        if not self.bucket.take():
            await self.error("rate_limited")
            return
        note = self.shared.texts.message("handoff_started", self.language, self.locale)
        async with room.emit_lock:
            events = await self.shared.store.request_handoff(room.id, CUSTOMER_HANDOFF, note=note)
            room.send_events(events)
        if events:
            self.shared.metrics.handoffs.labels(CUSTOMER_HANDOFF).inc()

    # -- sending ----------------------------------------------------------------------------

    async def send(self, frame: dict[str, object]) -> None:
        await self.ws.send(protocol.encode(frame))

    async def error(self, code: str, message_id: str | None = None, **values: str) -> None:
        self.shared.metrics.errors.labels(code).inc()
        text = self.shared.texts.error(code, self.language, self.locale, **values)
        await self.send(protocol.error(code, text, message_id))

    def detach(self) -> None:
        if self.room is not None:
            self.room.sockets.discard(self.ws)
            self.shared.hub.release(self.room)
            self.room = None
