"""Bot turns: one task per stored customer message, one turn at a time per conversation.

A turn: ``typing`` -> ``pipeline.answer`` (streamed pieces as ``reply.delta``) -> the reply
stored with its ``reply`` event (and ``handoff`` when the pipeline hands over) -> sent.
A failing turn is logged and answered with ``error`` ``internal``; the message stays
unanswered, so the customer can send it again (same id) and a later resume retries it.

Who answers follows the conversation's status: ``bot`` the bot; ``queued`` the bot too
when ``handoff.answer_while_queued`` (only replies that answer: never a second handoff
offer, nor a "which of these do you mean?" to a message the person will read anyway; the
queue place is kept); ``agent`` and ``closed`` nobody here. A message the bot
does not answer is still annotated (detected language, English pivot) for the console.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from bot import frames
from bot.handoff import Asked
from bot.pipeline import TurnContext, TurnResult
from bot.server.metrics import Metrics
from bot.server.rooms import Hub, Room
from bot.server.texts import Texts
from bot.service import BotService
from bot.store import ConversationInfo, Reply, Store, StoredMessage, TurnRecords

log = logging.getLogger(__name__)

HISTORY_MESSAGES = 6


class Turns:
    def __init__(
        self,
        *,
        store: Store,
        pipeline: BotService,
        hub: Hub,
        texts: Texts,
        metrics: Metrics,
        answer_while_queued: bool = True,
    ) -> None:
        self.answer_while_queued = answer_while_queued
        self.store = store
        self.pipeline = pipeline
        self.hub = hub
        self.texts = texts
        self.metrics = metrics
        self.accepting = True
        self._tasks: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def schedule(self, room: Room, message: StoredMessage) -> None:
        """Answer ``message`` after the conversation's earlier turns (once per id)."""
        key = message.client_id or str(message.id)
        if not self.accepting or key in room.in_flight:
            return  # shutting down: it stays unanswered and is answered on resume
        room.in_flight.add(key)
        self.hub.acquire(room.id)
        task = asyncio.create_task(self._run(room, message, key), name=f"turn {room.id} {key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def drain(self, grace: float) -> None:
        """Stop taking turns; let running ones finish for ``grace`` s, then cancel them."""
        self.accepting = False
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("cancelled %d turn(s) still running at shutdown", len(pending))
                await asyncio.wait(pending)

    async def _run(self, room: Room, message: StoredMessage, key: str) -> None:
        conv: ConversationInfo | None = None
        try:
            async with room.turn_lock:
                if await self._answered_elsewhere(room, message):
                    return
                records = await self.store.turn_records(
                    room.id, before_seq=message.seq or 0, limit=HISTORY_MESSAGES
                )
                conv = records.conversation
                if self.bot_answers(conv.status):
                    await self._answer(room, records, message)
                else:  # a human has it (or took over while this waited)
                    await self._annotate(room, conv, message)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("turn failed (conversation %s, message %s)", room.id, key)
            self.metrics.errors.labels("internal").inc()
            language = conv.language if conv else self.texts.default_language
            text = self.texts.error("internal", language, conv.locale if conv else None)
            room.send(frames.error("internal", text, message.client_id))
        finally:
            room.in_flight.discard(key)
            self.hub.release(room)

    async def _answered_elsewhere(self, room: Room, message: StoredMessage) -> bool:
        """Another server process answered it while this one waited for the turn lock."""
        if not self.hub.bus.distributed or message.client_id is None or message.replied:
            return False
        current = await self.store.message(room.id, message.client_id)
        return current is not None and current.replied

    def bot_answers(self, status: str) -> bool:
        return bot_answers(status, answer_while_queued=self.answer_while_queued)

    async def _annotate(self, room: Room, conv: ConversationInfo, message: StoredMessage) -> None:
        """No bot reply: record the message's language and English pivot for the agent."""
        read = await self.pipeline.annotate(message.text, current=conv.language, locale=conv.locale)
        await self.store.annotate_message(message.id, read.language, read.pivot)
        room.notify(frames.transcript_changed(room.id))

    async def _answer(self, room: Room, records: TurnRecords, message: StoredMessage) -> None:
        started = time.perf_counter()
        conv = records.conversation
        queued = conv.status == "queued"
        if not queued:
            await self._transient(room, lambda seq: frames.typing(seq, who="bot"))
        context = turn_context(
            self.pipeline,
            language=conv.language,
            locale=conv.locale,
            market=conv.market,
            no_answer_streak=conv.no_answer_streak,
            history=records.history,
            asked=records.asked,
        )

        async def on_delta(piece: str) -> None:
            await self._transient(
                room, lambda seq: frames.reply_delta(seq, text=piece, reply_to=message.client_id)
            )

        if message.choice is not None and self.pipeline.has_faq(message.choice):  # a button
            result = self.pipeline.chosen(message.text, message.choice or "", context)
        else:  # While queued only a real answer is sent: nothing streams before that is known.
            result = await self.pipeline.answer(
                message.text, context, on_delta=None if queued else on_delta
            )
        if queued and not sent_while_queued(result):
            await self.store.annotate_message(message.id, result.language, result.pivot)
            room.notify(frames.transcript_changed(room.id))
            return
        async with room.emit_lock:
            events = await self.store.record_reply(
                room.id, message.id, message.client_id, _reply(result, self.pipeline)
            )
            room.send_events(events)
        if any(event.type == "handoff" for event in events):
            self.hub.queue_changed.set()
        self.metrics.turn(result, time.perf_counter() - started)

    async def _transient(self, room: Room, event: Callable[[int], frames.Event]) -> None:
        """An event with its own seq that is sent once and never stored or replayed."""
        async with room.emit_lock:
            seq = await self.store.next_seq(room.id)
            room.send(event(seq))


def bot_answers(status: str, *, answer_while_queued: bool) -> bool:
    """Whether the bot answers a customer message in a conversation of this status."""
    return status == "bot" or (status == "queued" and answer_while_queued)


def sent_while_queued(result: TurnResult) -> bool:
    """Whether a reply goes to a customer waiting for a person: only a real answer, never a
    handoff offer, a "no answer" or a "which of these do you mean?"."""
    return result.answered and not result.handoff and not result.choices


def turn_context(
    pipeline: BotService,
    *,
    language: str,
    locale: str | None,
    market: str | None,
    no_answer_streak: int,
    history: list[tuple[str, str]],
    asked: list[tuple[str, str | None]],
) -> TurnContext:
    """What the pipeline knows before a turn, from what the conversation stored: its last
    messages (role, pivot text) and the customer's last questions (text, FAQ answered).
    The replay runner builds its turns with the same function."""
    history = history[-HISTORY_MESSAGES:]
    last_bot = next((text for role, text in reversed(history) if role == "bot"), None)
    return TurnContext(
        language=language,
        locale_hint=locale,
        market=market,
        no_answer_streak=no_answer_streak,
        history=history,
        offer_pending=bool(history)
        and history[-1][0] == "bot"
        and pipeline.offers_human(last_bot or ""),
        earlier=[Asked(text, faq) for text, faq in asked[-HISTORY_MESSAGES:]],
    )


def _reply(result: TurnResult, pipeline: BotService) -> Reply:
    return Reply(
        text=result.reply,
        language=result.language,
        faq_ids=list(result.faq_ids),
        source=result.source,
        answered=result.answered,
        pivot=result.pivot,
        reply_pivot=result.reply_pivot,
        handoff_reason=(result.handoff_reason or "bot") if result.handoff else None,
        # Stage outputs are JSON by contract; str() anything that slipped through.
        trace=json.loads(json.dumps(result.trace.as_list(), default=str)),
        sources=[
            {"id": faq_id, "title": pipeline.title(faq_id, result.language)}
            for faq_id in result.faq_ids
        ],
        choices=list(result.choices),
    )
