"""The ``/ws/chat`` connection handler: one ``Session`` per customer socket.

    hello            -> welcome, then the stored events the client missed, in order
    message          -> stored with its ack event, ack sent, then a bot turn (bot.server.turns)
    handoff.request  -> the conversation is queued for a human: handoff + system events
    handoff.cancel   -> a pending handoff is taken back: handoff.cancelled + system
    ticket           -> (queued) a message left for the team: ticket, back to the bot
    typing           -> the customer is writing: told to the agents following it only

Frames that break the protocol get an ``error`` event and the connection stays open; the
socket is closed with 1000 after ``idle_timeout`` seconds without a frame. Limits
(bot.server.admission): a socket past its address's connection limit is closed with 1013;
messages past their conversation's or address's bucket get ``error`` ``rate_limited``.
What a client can cause over and over is logged a few times per window, then counted.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from bot import frames
from bot.config import ServerConfig
from bot.errors import ProtocolError
from bot.redact import redact
from bot.server import protocol
from bot.server.admission import Admission
from bot.server.metrics import Metrics
from bot.server.ratelimit import LogThrottle
from bot.server.rooms import Hub, Room
from bot.server.texts import Texts, valid_locale
from bot.server.turns import Turns
from bot.store import ConversationInfo, Store

log = logging.getLogger(__name__)

CUSTOMER_HANDOFF = "customer_request"
REPLAY_BATCH = 100  # events replayed between two yields to the other sockets


@dataclass(frozen=True)
class ChatHandler:
    """What every session shares; called by websockets for each ``/ws/chat`` socket."""

    config: ServerConfig
    store: Store
    hub: Hub
    turns: Turns
    texts: Texts
    metrics: Metrics
    admission: Admission
    redact_stored: bool = False  # privacy.keep_original = false: store customer text redacted
    quiet: LogThrottle = field(default_factory=LogThrottle)

    async def __call__(self, ws: ServerConnection) -> None:
        self.admission.handshake_ended(ws)
        address = self.admission.address_of(ws)
        if not self.admission.connect(address):
            await ws.close(CloseCode.TRY_AGAIN_LATER, "too many connections")
            return
        session = Session(self, ws, address)
        self.metrics.connected()
        try:
            idle = await session.run()
        except ConnectionClosed:
            pass
        except Exception:
            failed = "chat connection from %s failed"
            self.quiet.log(log, logging.ERROR, "connection", failed, address, exc_info=True)
            await ws.close(CloseCode.INTERNAL_ERROR, "server error")
        else:
            if idle:
                await ws.close(CloseCode.NORMAL_CLOSURE, "idle")
        finally:
            session.detach()
            self.metrics.disconnected()
            self.admission.disconnect(address)


class Session:
    def __init__(self, shared: ChatHandler, ws: ServerConnection, address: str) -> None:
        self.shared = shared
        self.ws = ws
        self.address = address
        self.room: Room | None = None
        self.language = shared.texts.default_language
        self.locale: str | None = None
        self.quiet = LogThrottle()  # per connection and code: a few records a minute

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
            elif isinstance(frame, protocol.HandoffRequest):
                await self.handoff(self.room)
            elif isinstance(frame, protocol.HandoffCancel):
                await self.cancel(self.room)
            elif isinstance(frame, protocol.TicketFrame):
                await self.ticket(self.room, frame)
            else:
                self.room.notify(frames.customer_typing(self.room.id))
        except ProtocolError as exc:
            self.quiet.log(
                log, logging.DEBUG, exc.code, "refused frame from %s: %s", self.address, exc
            )
            await self.error(exc.code, _message_id(frame))
        except (ConnectionClosed, asyncio.CancelledError):
            raise
        except Exception:
            self.quiet.log(
                log, logging.ERROR, "internal", "frame from %s failed", self.address, exc_info=True
            )
            await self.error("internal", _message_id(frame))

    # -- frames -----------------------------------------------------------------------------

    async def hello(self, frame: protocol.Hello) -> None:
        if self.room is not None:
            raise ProtocolError("hello was already sent on this connection")
        if not valid_locale(frame.locale):
            raise ProtocolError("'locale' is not a BCP 47 tag")
        self.locale, self.language = frame.locale, self.shared.texts.language_of(frame.locale)
        if frame.resume is None:
            await self.start(frame.locale)
        else:
            await self.resume(frame.resume, frame.locale, frame.last_seq)

    async def start(self, locale: str) -> None:
        """A new conversation: the welcome, then its one write. The welcome does not wait
        for the database (behind other turns' writes on SQLite): nothing of the conversation
        is numbered or acknowledged before the row exists (this socket's next frame is read
        after it), and should the process die in between, the token resumes nothing
        (``bad_resume``) and the client starts again, having lost nothing."""
        self.shared.admission.new_conversation(self.address)
        market = self.shared.texts.market_of(locale)
        store = self.shared.store
        conv, token = store.draft_conversation(language=self.language, locale=locale, market=market)
        room = self.room = self.shared.hub.acquire(conv.id)
        async with room.emit_lock:
            await self.send(protocol.welcome(conv.id, token, conv.last_seq, conv.language))
            try:
                await store.save_conversation(conv, token)
            except Exception:  # the client holds a conversation that does not exist
                self.detach()
                await self.ws.close(CloseCode.INTERNAL_ERROR, "server error")
                raise
            room.sockets.add(self.ws)

    async def resume(self, token: str, locale: str, last_seq: int) -> None:
        store, config = self.shared.store, self.shared.config
        resumed = await store.resume(
            token, idle_ttl=config.resume_token_ttl, grace=config.resume_token_grace
        )
        if resumed.conversation is None:
            self.shared.metrics.errors.labels("bad_resume").inc()
            text = self.shared.texts.error("bad_resume", self.language, self.locale)
            await self.send(protocol.error("bad_resume", text, reason=resumed.refused))
            return
        conv, token = resumed.conversation, resumed.token  # rotated: the old one is retired
        if conv.locale != locale:  # the customer picked another language
            market = self.shared.texts.market_of(locale)
            await store.set_locale(conv.id, locale, self.language, market)
        room = self.room = self.shared.hub.acquire(conv.id)
        async with room.emit_lock:  # nothing new is numbered while the replay is sent
            conv = await store.conversation(conv.id)
            self.language = conv.language
            await self.send(protocol.welcome(conv.id, token, conv.last_seq, conv.language))
            events = await store.events_after(conv.id, last_seq)
            for n, event in enumerate(events, 1):
                await self.send(event.frame())
                if n % REPLAY_BATCH == 0:  # a long conversation does not hold up the others
                    await asyncio.sleep(0)
            room.sockets.add(self.ws)
        await self.answer_pending(room, conv)

    async def answer_pending(self, room: Room, conv: ConversationInfo) -> None:
        """Customer messages stored but never answered (the server stopped mid-turn)."""
        if self.shared.turns.bot_answers(conv.status):
            for message in await self.shared.store.unreplied(conv.id):
                self.shared.turns.schedule(room, message)

    async def message(self, room: Room, frame: protocol.Message) -> None:
        config = self.shared.config
        self.shared.admission.spend(room.id, self.address)
        text = frame.text.strip()
        if not text:
            await self.error("bad_frame", frame.id)
            return
        if len(text) > config.max_message_chars:
            await self.error("too_long", frame.id, limit=str(config.max_message_chars))
            return
        if self.shared.redact_stored:
            text = redact(text).text
        async with room.emit_lock:
            if frame.choice is not None:  # a clarify button: one the last reply offered
                await self.check_choice(room, frame)
            accepted = await self.shared.store.accept_message(
                room.id, frame.id, text, choice=frame.choice
            )
            if accepted.created:
                room.send(accepted.ack.frame())
            else:  # a resend: the original ack, to this socket only
                await self.send(accepted.ack.frame())
        if accepted.created:
            self.shared.metrics.messages.labels("customer").inc()
            if accepted.status == "queued":
                self.shared.hub.queue_changed.set()  # the queue shows the latest message
        if not accepted.message.replied or (accepted.created and accepted.status == "agent"):
            # The bot answers it, or (an agent has the conversation) it is annotated with
            # its language and English pivot for the agent (bot.server.turns).
            self.shared.turns.schedule(room, accepted.message)

    async def check_choice(self, room: Room, frame: protocol.Message) -> None:
        """``bad_frame`` unless ``frame.choice`` is one of the latest reply's choices (a
        resend of a stored message is not checked again: the reply has moved on)."""
        store = self.shared.store
        if await store.message(room.id, frame.id) is not None:
            return
        choice = frame.choice or ""
        if choice not in await store.offered_choices(room.id):
            raise ProtocolError(f"'choice' {choice!r} was not offered")

    async def handoff(self, room: Room) -> None:
        self.shared.admission.spend(room.id, self.address)
        note = self.shared.texts.message("handoff_started", self.language, self.locale)
        async with room.emit_lock:
            events = await self.shared.store.request_handoff(room.id, CUSTOMER_HANDOFF, note=note)
            room.send_events(events)
        if events:
            self.shared.metrics.handoffs.labels(CUSTOMER_HANDOFF).inc()
            self.shared.hub.queue_changed.set()

    async def cancel(self, room: Room) -> None:
        self.shared.admission.spend(room.id, self.address)
        note = self.shared.texts.message("handoff_cancelled", self.language, self.locale)
        async with room.emit_lock:
            events = await self.shared.store.cancel_handoff(room.id, note)
            room.send_events(events)
        if events:
            self.shared.hub.queue_changed.set()

    async def ticket(self, room: Room, frame: protocol.TicketFrame) -> None:
        self.shared.admission.spend(room.id, self.address)
        text = frame.text.strip()
        if not text or len(text) > self.shared.config.max_message_chars:
            raise ProtocolError("'ticket' needs a text of a message's length")
        conv = await self.shared.store.conversation(room.id)
        if conv.status != "queued":
            raise ProtocolError("no handoff is pending", code="not_ready")
        if self.shared.redact_stored:
            text = redact(text).text
        note = self.shared.texts.message("ticket_received", self.language, self.locale)
        async with room.emit_lock:
            events = await self.shared.store.add_ticket(room.id, self.language, text, note)
            room.send_events(events)
        self.shared.hub.queue_changed.set()

    # -- sending ----------------------------------------------------------------------------

    async def send(self, frame: Mapping[str, object]) -> None:
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


def _message_id(frame: protocol.ClientFrame | None) -> str | None:
    """The id to name in an error: the frame's, when it was a readable ``message``."""
    return frame.id if isinstance(frame, protocol.Message) else None
