"""The ``/ws/agent`` connection handler: one ``AgentSession`` per console socket.

The handshake carries the console session cookie (checked in bot.server.console, which
also refuses a foreign Origin); the first frame must be ``hello`` with the session's CSRF
token, else the socket is closed with 1008. The session is looked up again before every
frame, so a logout, a revoked session or a disabled agent stops the socket at once.

    hello      -> ready: the agent, the queue (waiting + own conversations), tickets, FAQs
    open       -> transcript (and the agent follows the conversation's events)
    claim      -> one conditional UPDATE: the first agent wins, the others get an error
    preview    -> what the customer would read (translated, placeholders checked)
    message    -> agent.message to the customer; optionally stored as an approved pair
    note       -> an internal note, to agents only
    typing     -> typing (who: agent) to the customer
    release / close / reassign (admin) / canned

Frames that break the protocol get an ``error`` event and the connection stays open.
The desk (``Desk``) sends every agent the queue when it changes and tells customers who
waited past ``handoff.queue_timeout`` that they may leave a message.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import timedelta
from http.cookies import SimpleCookie
from pathlib import Path
from typing import TYPE_CHECKING, Any

from websockets.asyncio.server import ServerConnection, broadcast
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode

from bot import frames
from bot.auth import same
from bot.config import Config
from bot.errors import ProtocolError
from bot.server import protocol
from bot.server.ratelimit import LogThrottle
from bot.server.rooms import Hub, Room
from bot.server.texts import Texts
from bot.service import BotService, CustomerText
from bot.store import AgentInfo, ConversationInfo, Store
from bot.translate import normalize

if TYPE_CHECKING:
    from bot.replay.runner import InProcess

log = logging.getLogger(__name__)

COOKIE = "mg_console"
AGENT_PATH = "/ws/agent"
MAX_TEXT_CHARS = 4000
DESK_TICK = 5.0  # seconds between two looks for handoffs waiting too long

AGENT_ERRORS = (
    "bad_frame",
    "unknown_type",
    "unsupported_version",
    "not_ready",
    "not_found",
    "forbidden",  # an admin's action, or a conversation the agent may not see
    "not_owner",  # the conversation is not (or no longer) this agent's
    "already_claimed",
    "translation_failed",
    "internal",
)


class AgentError(ProtocolError):
    """A refused agent frame; ``code`` is one of ``AGENT_ERRORS``."""


def session_cookie(headers: Any) -> str | None:
    cookies: SimpleCookie = SimpleCookie()
    for header in headers.get_all("Cookie"):
        with contextlib.suppress(Exception):
            cookies.load(header)
    morsel = cookies.get(COOKIE)
    return morsel.value if morsel is not None else None


@dataclass
class Desk:
    """Every console socket in this process, and the queue they are sent."""

    store: Store
    hub: Hub
    texts: Texts
    queue_timeout: float
    agents: dict[ServerConnection, AgentInfo] = field(default_factory=dict)

    async def run(self) -> None:
        """Send the queue when it changes; tell customers waiting too long. Cancelled at
        shutdown."""
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(DESK_TICK, self.queue_timeout / 2)):
                    await self.hub.queue_changed.wait()
            self.hub.queue_changed.clear()
            try:
                await self.time_out_waiting()
                await self.broadcast_queue()
            except Exception:
                log.exception("the agent desk failed to update")

    async def time_out_waiting(self) -> None:
        overdue = await self.store.overdue_handoffs(timedelta(seconds=self.queue_timeout))
        for cid in overdue:
            conv = await self.store.conversation(cid)
            text = self.texts.message("handoff_timeout", conv.language, conv.locale)
            room = self.hub.acquire(cid)
            try:
                async with room.emit_lock:
                    events = await self.store.record_events(
                        cid, [("handoff.timeout", {}), ("system", {"text": text})]
                    )
                    room.send_events(events)
            finally:
                self.hub.release(room)

    async def broadcast_queue(self) -> None:
        tickets = await self.store.tickets() if self.agents else []
        for ws, agent in list(self.agents.items()):
            queue = await self.store.queue(agent.id)
            broadcast([ws], protocol.encode(frames.queue(conversations=queue, tickets=tickets)))


@dataclass(frozen=True)
class AgentHandler:
    """What every console socket shares; called by websockets for each ``/ws/agent``."""

    config: Config
    store: Store
    hub: Hub
    desk: Desk
    pipeline: BotService
    texts: Texts
    # The conversation as a replay test: the replay runner needs the concrete pipeline,
    # which only the composition root (bot.server.app) holds. None: not offered.
    replayer: Callable[[], InProcess] | None = None
    quiet: LogThrottle = field(default_factory=LogThrottle)

    async def __call__(self, ws: ServerConnection) -> None:
        token = session_cookie(ws.request.headers) if ws.request else None
        found = await self.store.session_agent(token) if token else None
        if found is None or token is None:
            await ws.close(CloseCode.POLICY_VIOLATION, "not logged in")
            return
        session = AgentSession(self, ws, token, *found)
        try:
            await session.run()
        except ConnectionClosed:
            pass
        except Exception:
            self.quiet.log(log, logging.ERROR, "connection", "agent socket failed", exc_info=True)
            await ws.close(CloseCode.INTERNAL_ERROR, "server error")
        finally:
            session.detach()


class AgentSession:
    def __init__(
        self, shared: AgentHandler, ws: ServerConnection, token: str, agent: AgentInfo, csrf: str
    ) -> None:
        self.shared = shared
        self.ws = ws
        self.token = token
        self.agent = agent
        self.csrf = csrf
        self.ready = False
        self.watching: dict[str, Room] = {}

    async def run(self) -> None:
        first = await asyncio.wait_for(self.ws.recv(), self.shared.config.server.handshake_timeout)
        try:
            frame = _parse(first)
            if frame.get("type") != "hello" or frame.get("v") != protocol.VERSION:
                raise AgentError("send hello first", code="not_ready")
            if not same(str(frame.get("csrf", "")), self.csrf):
                raise AgentError("bad CSRF token", code="forbidden")
        except AgentError:
            await self.ws.close(CloseCode.POLICY_VIOLATION, "hello with the CSRF token first")
            return
        await self.hello()
        while True:
            data = await self.ws.recv()
            found = await self.shared.store.session_agent(self.token)
            if found is None:  # logged out, revoked or disabled meanwhile
                await self.ws.close(CloseCode.POLICY_VIOLATION, "session ended")
                return
            self.agent = found[0]
            await self.dispatch(data)

    async def hello(self) -> None:
        store, desk = self.shared.store, self.shared.desk
        desk.agents[self.ws] = self.agent
        await self.send(
            frames.ready(
                agent={"name": self.agent.name, "role": self.agent.role},
                languages=self.shared.config.shop.languages,
                faqs=self.shared.pipeline.faqs(),
            )
        )
        queue, tickets = await store.queue(self.agent.id), await store.tickets()
        await self.send(frames.queue(conversations=queue, tickets=tickets))

    async def dispatch(self, data: str | bytes) -> None:
        frame: dict[str, Any] = {}
        try:
            frame = _parse(data)
            kind = frame.get("type")
            handler = _HANDLERS.get(kind) if isinstance(kind, str) else None
            if handler is None:
                raise AgentError(f"unknown frame type {str(kind)[:40]!r}", code="unknown_type")
            await handler(self, frame)
        except ProtocolError as exc:
            await self.send(_error(exc.code, str(exc), frame))
        except (ConnectionClosed, asyncio.CancelledError):
            raise
        except Exception:
            log.exception("agent frame %r failed", frame.get("type"))
            await self.send(_error("internal", "the server failed on this frame", frame))

    # -- frames -----------------------------------------------------------------------------

    async def open(self, frame: dict[str, Any]) -> None:
        conv = await self.visible(frame)
        if conv.id not in self.watching:
            room = self.watching[conv.id] = self.shared.hub.acquire(conv.id)
            room.watchers.add(self.ws)
        await self.transcript(conv, trace=frame.get("trace") is True)

    async def transcript(self, conv: ConversationInfo, *, trace: bool = False) -> None:
        store = self.shared.store
        messages = [_message(m, trace=trace) for m in await store.messages(conv.id)]
        await self.send(
            frames.transcript(
                conversation=conv.id,
                status=conv.status,
                owner=conv.agent_id == self.agent.id,
                lang=conv.language,
                locale=conv.locale,
                messages=messages,
                notes=await store.notes(conv.id),
            )
        )

    async def replay(self, frame: dict[str, Any]) -> None:
        """The conversation as a replay file (docs/replay.md) with what each turn showed the
        customer pinned as expectations, and its cassette: a QA team's regression case."""
        from bot.replay import record

        conv = await self.visible(frame)
        if self.shared.replayer is None:
            raise AgentError("replay export is not available on this server", code="internal")
        replayer = self.shared.replayer()
        exported, shown = await record.export(self.shared.store, replayer, conv.id)
        name = f"{conv.id}.yaml"
        _, cassette, text = await record.record_new(
            replayer, Path(name), [exported],
            stored={conv.id: shown}, model=False, pin_expectations=True,
        )  # fmt: skip
        await self.send(
            frames.replay(conversation=conv.id, file=name, yaml=text, cassette=cassette.dumps())
        )

    async def claim(self, frame: dict[str, Any]) -> None:
        conv = await self.conversation(frame)
        note = self.shared.texts.message(
            "agent_joined", conv.language, conv.locale, agent=self.agent.name
        )
        room = self.shared.hub.acquire(conv.id)
        try:
            async with room.emit_lock:
                events = await self.shared.store.claim(conv.id, self.agent, note)
                room.send_events(events)
        finally:
            self.shared.hub.release(room)
        if not events:
            raise AgentError("another agent has this conversation", code="already_claimed")
        self.shared.hub.queue_changed.set()
        await self.open({"conversation": conv.id})

    async def preview(self, frame: dict[str, Any]) -> None:
        conv = await self.visible(frame)
        text, source = _text(frame), self.source_language(frame)
        # The preview also reads a model translation back (the agent sees if it drifted);
        # sending it afterwards reuses this translation.
        out, warnings = await self.translate(conv, text, source, check=True)
        await self.send(
            frames.preview(
                conversation=conv.id,
                id=frame.get("id"),
                text=text,
                lang=conv.language,
                delivered=out.delivered,
                engine=out.engine,
                warnings=warnings,
                back=out.back,
                agreement=out.agreement,
                ms=out.ms,
            )
        )

    async def message(self, frame: dict[str, Any]) -> None:
        conv = await self.owned(frame)
        text, source = _text(frame), self.source_language(frame)
        out, warnings = await self.translate(conv, text, source)
        delivered = out.delivered
        if delivered is None:
            if frame.get("untranslated") is not True:
                raise AgentError(warnings[0]["message"], code="translation_failed")
            delivered = text
        store = self.shared.store
        room = self.shared.hub.acquire(conv.id)
        try:
            async with room.emit_lock:
                event = await store.agent_message(
                    conv.id,
                    self.agent,
                    text=text,
                    source_lang=source,
                    delivered=delivered,
                    language=conv.language,
                )
                if event is not None:
                    room.send(event.frame())
        finally:
            self.shared.hub.release(room)
        if event is None:
            raise AgentError("this conversation is not yours", code="not_owner")
        if frame.get("approve") is True and out.delivered is not None and source != conv.language:
            await store.add_translation(
                source, conv.language, text, delivered,
                key=normalize(text), origin="agent", approved_by=self.agent.name,
            )  # fmt: skip
            self.shared.pipeline.remember_translation(source, conv.language, text, delivered)
        await self.send(
            frames.sent(
                conversation=conv.id,
                id=frame.get("id"),
                seq=event.seq,
                delivered=delivered,
                approved=frame.get("approve") is True,
            )
        )

    async def note(self, frame: dict[str, Any]) -> None:
        conv = await self.visible(frame)
        note = await self.shared.store.add_note(conv.id, self.agent.id, _text(frame))
        note["agent"] = self.agent.name
        out = frames.note(conversation=conv.id, note=note)
        room = self.shared.hub.get(conv.id)
        if room is not None and self.ws in room.watchers:
            room.notify(out)
        else:
            await self.send(out)

    async def typing(self, frame: dict[str, Any]) -> None:
        conv = await self.owned(frame)
        room = self.shared.hub.get(conv.id)
        if room is None or not (room.sockets or self.shared.hub.bus.distributed):
            return  # the customer is not connected (here, nor maybe elsewhere): nothing to show
        async with room.emit_lock:
            seq = await self.shared.store.next_seq(conv.id)
            room.send(frames.typing(seq, who="agent"))

    async def release(self, frame: dict[str, Any]) -> None:
        await self.hand_back(frame, "bot", "agent_left")

    async def close(self, frame: dict[str, Any]) -> None:
        await self.hand_back(frame, "closed", "conversation_closed")

    async def hand_back(self, frame: dict[str, Any], status: str, key: str) -> None:
        conv = await self.conversation(frame)
        note = self.shared.texts.message(key, conv.language, conv.locale, agent=self.agent.name)
        room = self.shared.hub.acquire(conv.id)
        try:
            async with room.emit_lock:
                events = await self.shared.store.hand_back(conv.id, self.agent, status, note)
                room.send_events(events)
        finally:
            self.shared.hub.release(room)
        if not events:
            raise AgentError("this conversation is not yours", code="not_owner")
        self.shared.hub.queue_changed.set()
        await self.send(frames.released(conversation=conv.id, status=status))

    async def reassign(self, frame: dict[str, Any]) -> None:
        if not self.agent.admin:
            raise AgentError("only an admin can reassign", code="forbidden")
        conv = await self.conversation(frame)
        name = frame.get("agent")
        target = next((a for a in await self.shared.store.agents() if a.name == name), None)
        if target is None or not target.active:
            raise AgentError("no such active agent", code="not_found")
        if not await self.shared.store.reassign(conv.id, target.id):
            raise AgentError("the conversation is not with an agent", code="not_owner")
        self.shared.hub.queue_changed.set()
        await self.send(frames.reassigned(conversation=conv.id, agent=target.name))

    async def canned(self, frame: dict[str, Any]) -> None:
        """A curated FAQ answer as the customer would read it (their language, market)."""
        conv = await self.visible(frame)
        faq = frame.get("faq")
        text = (
            self.shared.pipeline.canned_answer(
                faq, conv.language, locale=conv.locale, market=conv.market
            )
            if isinstance(faq, str)
            else None
        )
        if text is None or not isinstance(faq, str):
            raise AgentError("no such FAQ answer", code="not_found")
        await self.send(frames.canned(conversation=conv.id, faq=faq, text=text, lang=conv.language))

    # -- helpers ----------------------------------------------------------------------------

    async def conversation(self, frame: dict[str, Any]) -> ConversationInfo:
        cid = frame.get("conversation")
        if not isinstance(cid, str) or not cid or len(cid) > 40:
            raise AgentError("the frame needs a 'conversation' id", code="bad_frame")
        try:
            return await self.shared.store.conversation(cid)
        except Exception:
            raise AgentError("no such conversation", code="not_found") from None

    async def visible(self, frame: dict[str, Any]) -> ConversationInfo:
        """A conversation this agent may read: queued, their own, or any for an admin."""
        conv = await self.conversation(frame)
        if self.agent.admin or conv.status == "queued" or conv.agent_id == self.agent.id:
            return conv
        raise AgentError("this conversation is not yours", code="forbidden")

    async def owned(self, frame: dict[str, Any]) -> ConversationInfo:
        conv = await self.conversation(frame)
        if conv.status != "agent" or conv.agent_id != self.agent.id:
            raise AgentError("this conversation is not yours", code="not_owner")
        return conv

    def source_language(self, frame: dict[str, Any]) -> str:
        lang = frame.get("lang", self.shared.config.shop.pivot)
        if lang not in self.shared.config.shop.languages:
            raise AgentError("'lang' must be a launch language", code="bad_frame")
        return str(lang)

    async def translate(
        self, conv: ConversationInfo, text: str, source: str, *, check: bool = False
    ) -> tuple[CustomerText, list[frames.PreviewWarning]]:
        """What the customer would read (``delivered`` None when translation failed) and
        the warnings: a failed translation, a fuzzy translation-memory match (of the reply
        or one of its sentences), a protected span (order number, amount, glossary term)
        lost, or (``check``) a back-translation that disagrees with what was written."""
        out = await self.shared.pipeline.translate_for_customer(
            text, source, conv.language, locale=conv.locale, market=conv.market, check=check
        )
        warnings: list[frames.PreviewWarning] = []
        if out.delivered is None:
            warnings.append({"code": "translation_failed", "message": out.error or ""})
        elif out.similarity < 1.0:
            # A near match from the translation memory: right for a similar sentence.
            message = f"a similar sentence's approved translation ({out.similarity:.2f})"
            warnings.append({"code": "fuzzy_memory", "message": message})
        warnings += [{"code": "placeholder_lost", "message": span} for span in out.lost]
        warnings += [{"code": code, "message": message} for code, message in out.notices]
        return out, warnings

    async def send(self, frame: frames.AgentFrame) -> None:
        await self.ws.send(protocol.encode(frame))

    def detach(self) -> None:
        self.shared.desk.agents.pop(self.ws, None)
        for room in self.watching.values():
            room.watchers.discard(self.ws)
            self.shared.hub.release(room)
        self.watching.clear()


_HANDLERS = {
    "open": AgentSession.open,
    "claim": AgentSession.claim,
    "preview": AgentSession.preview,
    "message": AgentSession.message,
    "note": AgentSession.note,
    "typing": AgentSession.typing,
    "release": AgentSession.release,
    "close": AgentSession.close,
    "reassign": AgentSession.reassign,
    "canned": AgentSession.canned,
    "replay": AgentSession.replay,
}


def _parse(data: str | bytes) -> dict[str, Any]:
    if not isinstance(data, str):
        raise AgentError("binary frames are not part of the protocol", code="bad_frame")
    try:
        frame = json.loads(data)
    except (ValueError, RecursionError):
        raise AgentError("frame is not JSON", code="bad_frame") from None
    if not isinstance(frame, dict):
        raise AgentError("frame is not a JSON object", code="bad_frame")
    return frame


def _text(frame: dict[str, Any]) -> str:
    text = frame.get("text")
    if not isinstance(text, str) or not text.strip():
        raise AgentError("the frame needs a 'text'", code="bad_frame")
    text = protocol.clean_text(text).strip()
    if len(text) > MAX_TEXT_CHARS:
        raise AgentError(f"'text' is longer than {MAX_TEXT_CHARS} characters", code="bad_frame")
    return text


def _error(code: str, message: str, frame: dict[str, Any]) -> frames.AgentError:
    return frames.agent_error(
        code, message, conversation=frame.get("conversation"), id=frame.get("id")
    )


def _message(row: dict[str, Any], *, trace: bool) -> dict[str, Any]:
    """One transcript line: what was written, its language, the English pivot, and what
    the customer read."""
    role = row["role"]
    out: dict[str, Any] = {
        "seq": row["seq"],
        "role": role,
        "original": row["original_text"],
        "lang": row["language"],
        "pivot": row["pivot_text"],
        "delivered": row["delivered_text"] if role != "customer" else None,
        "faq_ids": list(row["faq_ids"] or []),
        "source": row["source"],
        "at": row["created_at"].isoformat() if row["created_at"] else None,
    }
    if trace:
        out["trace"] = row["trace"]
    return out
