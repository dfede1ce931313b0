"""Replay a conversation through the real pipeline, in-process, as the chat server runs it.

What the server keeps between turns and passes to the pipeline (``Turns._answer`` in
bot/server/turns.py, from bot/store) is mirrored here, and nothing else: the
conversation's language (the last turn's), the page locale and market, the no-answer
streak, the last six customer/bot messages in the pivot language, whether the bot's last
message offered a person, the customer's last six messages with the FAQ that answered
each, and who has the conversation. Once an agent has it, customer messages are stored and
acknowledged but not answered, until an agent turn with ``leave: true``. While it waits
for an agent (queued) the bot answers only where the server's ``Turns.bot_answers`` does:
with ``handoff.answer_while_queued`` on (where the config has it), and then only replies
that answer, never a second handoff.

Each conversation gets a fresh ``TurnContext`` each turn and a pipeline of its own: its
own model client (circuit breaker, admission slots) and translator (translation cache),
sharing only read-only parts with the others (knowledge, detector, handoff rules, FAISS
index, embedder, translation memory: nothing adds to it during a replay). The embedder's
query cache is shared: it maps a text to the vector the model computes for it, so it
changes timings, never results (tests/test_replay.py checks this).
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field

import httpx

from bot.config import ModelConfig
from bot.errors import BotError
from bot.llm import LLMClient
from bot.pipeline import Pipeline, TurnContext
from bot.replay import ReplayError
from bot.replay.cassette import Cassette, CassetteTransport, RecordingTransport
from bot.replay.checks import verdict
from bot.replay.format import Conversation, ReplayFile, Turn
from bot.replay.results import ConversationResult, TurnOutcome
from bot.server.texts import Texts
from bot.server.turns import bot_answers, sent_while_queued, turn_context
from bot.translate import Translator

log = logging.getLogger(__name__)

CUSTOMER_HANDOFF = "customer_request"  # the reason of a "talk to a human" button press
DEFAULT_AGENT = "Agent"


@dataclass
class _Conversation:
    """What the server's database holds about a conversation between two turns."""

    language: str
    locale: str
    market: str | None
    status: str = "bot"  # bot | queued | agent
    no_answer_streak: int = 0
    handoff_reason: str | None = None
    history: list[tuple[str, str]] = field(default_factory=list)  # (role, pivot text)
    asked: list[tuple[str, str | None]] = field(default_factory=list)  # (text, first FAQ id)


@dataclass
class FileResult:
    file: ReplayFile
    conversations: list[ConversationResult]
    notes: list[str] = field(default_factory=list)


class InProcess:
    """Runs conversations through pipelines built on ``base``'s read-only parts."""

    def __init__(self, base: Pipeline) -> None:
        self.base = base
        self.texts = Texts(base)

    def pipeline(self, llm: LLMClient | None) -> Pipeline:
        """A pipeline of its own for one conversation: ``base`` with another model client
        and a new translator (the one stage that keeps state: its cache). The translator
        is wired as ``Pipeline.build`` wires it; building a whole pipeline per conversation
        would cost half a second each (handoff rules compiled in ``__init__``)."""
        base, cfg = self.base, self.base.config
        pipeline = copy.copy(base)
        pipeline.llm = llm
        pipeline.translator = Translator(
            base.knowledge,
            base.masker,
            base.translator.memory,
            llm,
            min_similarity=cfg.translate.memory_min_similarity,
            max_tokens=cfg.translate.max_tokens,
            language_of=lambda text: base.detector.detect(text).language,
        )
        return pipeline

    async def run(
        self,
        conv: Conversation,
        llm: LLMClient | None,
        *,
        on_turn: Callable[[int], None] | None = None,
    ) -> list[TurnOutcome]:
        """Every turn's outcome; a turn that fails is recorded with its error and the
        conversation goes on."""
        pipeline = self.pipeline(llm)
        state = _Conversation(
            language=self.texts.language_of(conv.locale),
            locale=conv.locale,
            market=conv.market or self.texts.market_of(conv.locale),
        )
        outcomes = []
        for n, turn in enumerate(conv.turns, 1):
            if on_turn is not None:
                on_turn(n)
            try:
                outcome = await self._turn(pipeline, state, turn, n)
            except BotError as exc:
                outcome = TurnOutcome(n, turn.kind, turn.text, error=str(exc))
            except Exception as exc:
                log.exception("%s failed", conv.where(n))
                outcome = TurnOutcome(n, turn.kind, turn.text, error=f"{type(exc).__name__}: {exc}")
            outcomes.append(outcome)
        return outcomes

    async def _turn(
        self, pipeline: Pipeline, state: _Conversation, turn: Turn, n: int
    ) -> TurnOutcome:
        if turn.kind == "agent":
            return self._agent(state, turn, n)
        if turn.kind == "action":
            return self._talk_to_human(state, turn, n)
        if turn.locale and turn.locale != state.locale:  # the page's language picker
            state.locale = turn.locale
            state.language = self.texts.language_of(turn.locale)
            state.market = self.texts.market_of(turn.locale)
        if turn.market:
            state.market = turn.market
        text = turn.text.strip()
        silent = TurnOutcome(n, "customer", text, handoff=True, handoff_reason=state.handoff_reason)
        if not self.bot_answers(state.status):
            state.history.append(("customer", text))
            state.asked.append((text, None))
            return silent
        result = await pipeline.answer(text, self.context(pipeline, state))
        if state.status == "queued" and not sent_while_queued(result):
            state.history.append(("customer", result.pivot or text))
            state.asked.append((text, None))
            silent.language, silent.pivot = result.language, result.pivot
            return silent
        state.language = result.language
        state.no_answer_streak = 0 if result.answered else state.no_answer_streak + 1
        state.history += [
            ("customer", result.pivot or text),
            ("bot", result.reply_pivot or result.reply),
        ]
        state.asked.append((text, result.faq_ids[0] if result.faq_ids else None))
        events: list[dict[str, object]] = [
            {"type": "reply", "lang": result.language, "faq_ids": list(result.faq_ids)}
        ]
        if result.handoff:
            state.status, state.handoff_reason = "queued", result.handoff_reason or "bot"
            events.append({"type": "handoff", "reason": state.handoff_reason})
        where = result.locality.language
        return TurnOutcome(
            n,
            "customer",
            text,
            language=result.language,
            pivot=result.pivot,
            faq_ids=list(result.faq_ids),
            source=result.source,
            reply=result.reply,
            reply_language=self.base.detector.detect(result.reply, hint=where).language,
            handoff=state.status != "bot",
            handoff_reason=state.handoff_reason,
            events=events,
        )

    def bot_answers(self, status: str) -> bool:
        """As the server decides it (bot/server/turns.py)."""
        while_queued = self.base.config.handoff.answer_while_queued
        return bot_answers(status, answer_while_queued=while_queued)

    @staticmethod
    def context(pipeline: Pipeline, state: _Conversation) -> TurnContext:
        """The ``TurnContext`` the server would build from its database."""
        return turn_context(
            pipeline,
            language=state.language,
            locale=state.locale,
            market=state.market,
            no_answer_streak=state.no_answer_streak,
            history=list(state.history),
            asked=list(state.asked),
        )

    def _talk_to_human(self, state: _Conversation, turn: Turn, n: int) -> TurnOutcome:
        """The widget's "talk to a human" button (``handoff.request``)."""
        events: list[dict[str, object]] = []
        if state.status == "bot":
            state.status, state.handoff_reason = "queued", CUSTOMER_HANDOFF
            note = self.texts.message("handoff_started", state.language, state.locale)
            events = [
                {"type": "handoff", "reason": CUSTOMER_HANDOFF},
                {"type": "system", "text": note},
            ]
        return TurnOutcome(
            n, "action", turn.text, handoff=True, handoff_reason=state.handoff_reason,
            events=events,
        )  # fmt: skip

    def _agent(self, state: _Conversation, turn: Turn, n: int) -> TurnOutcome:
        """An agent's message: the customer receives it; the bot stays out of the way."""
        name = turn.agent or DEFAULT_AGENT
        note = None
        if state.status == "bot":
            note = "the agent took over: the bot had not handed the conversation off"
        events: list[dict[str, object]] = []
        if state.status != "agent":
            events.append({"type": "agent.joined", "agent": name})
        state.status = "agent"
        events.append(
            {"type": "agent.message", "agent": name, "lang": state.language, "text": turn.text}
        )
        if turn.leave:
            events.append({"type": "agent.left", "agent": name})
            state.status, state.handoff_reason = "bot", None
        return TurnOutcome(
            n, "agent", turn.text, handoff=state.status != "bot",
            handoff_reason=state.handoff_reason, events=events, note=note,
        )  # fmt: skip

    # -- one conversation, checked ---------------------------------------------------------

    async def replay(
        self,
        conv: Conversation,
        *,
        mode: str,
        transport: httpx.AsyncBaseTransport | None = None,
        use_model: bool = True,
        recorded: Sequence[TurnOutcome] = (),
    ) -> ConversationResult:
        """Run and check one conversation. ``transport``: the model client's (cassette,
        recording, or None for the real engine); ``use_model=False``: no model client."""
        started = time.perf_counter()
        llm = LLMClient(self.base.config.model, transport=transport) if use_model else None

        def on_turn(n: int) -> None:
            if isinstance(transport, CassetteTransport | RecordingTransport):
                transport.turn = n

        try:
            outcomes = await self.run(conv, llm, on_turn=on_turn)
        finally:
            if llm is not None:
                await llm.aclose()
        result = ConversationResult(conv, mode, seconds=time.perf_counter() - started)
        for turn, outcome in zip(conv.turns, outcomes, strict=True):
            then = recorded[outcome.turn - 1] if outcome.turn <= len(recorded) else None
            result.verdicts.append(verdict(turn, outcome, recorded=then, pinned=mode == "pinned"))
        result.notes += changed_since_recording(conv, recorded)
        return result


def changed_since_recording(conv: Conversation, recorded: Sequence[TurnOutcome]) -> list[str]:
    if not recorded:
        return []
    notes = []
    if len(recorded) != len(conv.turns):
        notes.append(f"{len(conv.turns)} turns now, {len(recorded)} when recorded")
    for turn, then in zip(conv.turns, recorded, strict=False):
        if (turn.kind, turn.text.strip()) != (then.kind, then.text):
            notes.append(f"turn {then.turn} changed since recording (was {then.text[:60]!r})")
    if notes:
        notes.append("re-record it: bot replay record --update FILE")
    return notes


# -- files ----------------------------------------------------------------------------------


def load_cassette(file: ReplayFile) -> Cassette | None:
    try:
        return Cassette.load(file.cassette_path)
    except FileNotFoundError:
        return None


def recorded_outcomes(cassette: Cassette | None, conv_id: str) -> list[TurnOutcome]:
    if cassette is None or conv_id not in cassette.conversations:
        return []
    turns = cassette.conversations[conv_id].get("turns", [])
    return [TurnOutcome.from_dict(t) for t in turns]


def recorded_with(runner: InProcess, *, model: bool) -> dict[str, object]:
    """What a recording depends on, kept in its cassette (no URLs, no keys)."""
    cfg = runner.base.config
    return {
        "model": cfg.model.name if model else None,
        "request_model": cfg.model.request_model if model else None,
        "generate": {"mode": cfg.generate.mode, "language": cfg.generate.language},
        "knowledge": runner.base.knowledge.fingerprint,
    }


def file_notes(runner: InProcess, cassette: Cassette) -> list[str]:
    """How the bot differs from the one that recorded the file."""
    now = recorded_with(runner, model=cassette.uses_model)
    then = cassette.recorded_with
    notes = []
    if then.get("knowledge") != now["knowledge"]:
        notes.append(
            f"knowledge changed since recording ({then.get('knowledge')} -> {now['knowledge']})"
        )
    if then.get("generate") != now["generate"]:
        notes.append(f"generate settings changed since recording ({then.get('generate')})")
    if cassette.uses_model and then.get("model") != now["model"]:
        notes.append(
            f"recorded with model {then.get('model')}, configured now: {now['model']} "
            "(pinned runs answer from the recording)"
        )
    return notes


async def run_pinned(
    runner: InProcess, file: ReplayFile, conversations: Sequence[Conversation]
) -> FileResult:
    """Model calls answered from the file's cassette; a request it lacks fails its turn."""
    cassette = load_cassette(file)
    out = FileResult(file, [])
    if cassette is None:
        hint = f"no cassette {file.cassette_path.name}: bot replay record --update {file.path}"
        out.conversations = [ConversationResult(c, "pinned", error=hint) for c in conversations]
        return out
    out.notes = file_notes(runner, cassette)
    used: set[str] = set()
    for conv in conversations:
        if conv.id not in cassette.conversations:
            error = f"not recorded yet: bot replay record --update {file.path}"
            out.conversations.append(ConversationResult(conv, "pinned", error=error))
            continue
        transport = CassetteTransport(cassette, conv.id)
        result = await runner.replay(
            conv,
            mode="pinned",
            transport=transport,
            use_model=cassette.uses_model,
            recorded=recorded_outcomes(cassette, conv.id),
        )
        used |= transport.used
        out.conversations.append(result)
    unused = set(cassette.calls) - used
    if unused and len(conversations) == len(file.conversations):
        out.notes.append(
            f"{len(unused)} recorded model call(s) were not asked for: the turns take other "
            "paths now; re-record to drop them"
        )
    return out


async def run_live(
    runner: InProcess, file: ReplayFile, conversations: Sequence[Conversation]
) -> FileResult:
    """The configured model engine answers (it must be serving: ``serving_engine``)."""
    cassette = load_cassette(file)
    out = FileResult(file, [], file_notes(runner, cassette) if cassette else [])
    for conv in conversations:
        result = await runner.replay(
            conv, mode="live", recorded=recorded_outcomes(cassette, conv.id)
        )
        out.conversations.append(result)
    return out


async def record(
    runner: InProcess,
    file: ReplayFile,
    *,
    model: bool,
    transport: Callable[[], httpx.AsyncBaseTransport] = httpx.AsyncHTTPTransport,
) -> tuple[FileResult, Cassette]:
    """Run every conversation of ``file`` through the engine (``model``) and record a new
    cassette: the model's answers and what each turn did."""
    cassette = Cassette(recorded_with=recorded_with(runner, model=model))
    out = FileResult(file, [])
    for conv in file.conversations:
        recorder = RecordingTransport(transport(), cassette, conv.id) if model else None
        result = await runner.replay(conv, mode="record", transport=recorder, use_model=model)
        cassette.conversations[conv.id] = {
            "locale": conv.locale,
            "turns": [o.as_dict() for o in result.outcomes],
        }
        out.conversations.append(result)
    return out, cassette


@contextlib.asynccontextmanager
async def serving_engine(cfg: ModelConfig) -> AsyncIterator[None]:
    """The configured URL, an engine already serving, or the embedded one started for the
    duration (as ``bot.models.engines.model_client``, for clients made per conversation)."""
    async with LLMClient(cfg) as probe:
        ready = bool(cfg.url) or await probe.health()
    if ready:
        yield
        return
    from bot.models.engines import start_from_config

    print("bot: starting the embedded model engine...", file=sys.stderr)
    async with start_from_config(cfg):
        yield


def select(
    files: Sequence[ReplayFile], only: Sequence[str] = ()
) -> list[tuple[ReplayFile, list[Conversation]]]:
    """The conversations to run (``only``: id globs), refusing ids used twice."""
    import fnmatch

    seen: dict[str, ReplayFile] = {}
    out = []
    for file in files:
        for conv in file.conversations:
            if conv.id in seen:
                raise ReplayError(
                    f"conversation id {conv.id!r} is in {seen[conv.id].path} and {file.path}"
                )
            seen[conv.id] = file
        chosen = [
            c for c in file.conversations if not only or any(fnmatch.fnmatch(c.id, p) for p in only)
        ]
        if chosen:
            out.append((file, chosen))
    return out
