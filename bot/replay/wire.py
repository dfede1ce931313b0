"""Replay against a running server over the chat protocol (docs/protocol.md): ``--url``.

One new conversation per replayed conversation: ``hello`` with its locale, then per turn

- customer: ``message`` (id ``<conversation>-<turn>``), its ``ack``, then the ``reply`` to it
  and a ``handoff`` right behind; once a person has the conversation the bot must stay
  silent, so the turn waits ``quiet`` seconds for nothing to come;
- a turn with a new ``locale``: reconnect with the resume token and that locale, as the
  widget does when the customer picks another language;
- ``action: talk_to_human``: ``handoff.request``, then ``handoff`` and ``system``;
- agent: skipped: there is no agent socket yet to speak through.

The wire carries the reply's text, ``lang`` (the customer message's detected language) and
FAQ ids, and the handoff reason; not the reply's source (that expectation is reported as
unchecked) nor the pivot. A message refused with ``rate_limited`` is sent again, same id,
after a pause.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

from bot.replay import ReplayError
from bot.replay.checks import verdict
from bot.replay.format import Conversation, Turn
from bot.replay.results import SKIP, ConversationResult, TurnOutcome, TurnVerdict

Detect = Callable[[str, str | None], str | None]  # (text, hint) -> language
RATE_LIMIT_PAUSE = 2.0


class WireRunner:
    def __init__(
        self, url: str, detect: Detect, *, timeout: float = 60.0, quiet: float = 1.0
    ) -> None:
        self.url = url
        self.detect = detect
        self.timeout = timeout
        self.quiet = quiet

    async def replay(self, conv: Conversation) -> ConversationResult:
        started = time.perf_counter()
        result = ConversationResult(conv, "wire")
        try:
            session = await _Session.open(self.url, conv.locale, self.timeout)
        except (OSError, TimeoutError, ReplayError) as exc:
            result.error = f"cannot start a conversation at {self.url}: {exc}"
            return result
        try:
            for n, turn in enumerate(conv.turns, 1):
                result.verdicts.append(await self._turn(session, turn, n))
        finally:
            await session.ws.close()
            result.seconds = time.perf_counter() - started
        return result

    async def _turn(self, session: _Session, turn: Turn, n: int) -> TurnVerdict:
        if turn.kind == "agent":
            note = "not sent: agent turns need the agent console, which does not exist yet"
            outcome = TurnOutcome(n, "agent", turn.text, note=note)
            return TurnVerdict(turn, outcome, SKIP)
        try:
            if turn.kind == "action":
                outcome = await self._talk_to_human(session, turn, n)
            else:
                outcome = await self._customer(session, turn, n)
        except (OSError, TimeoutError, ReplayError) as exc:
            outcome = TurnOutcome(n, turn.kind, turn.text, error=f"{type(exc).__name__}: {exc}")
        return verdict(turn, outcome, wire=True)

    async def _customer(self, session: _Session, turn: Turn, n: int) -> TurnOutcome:
        if turn.locale and turn.locale != session.locale:
            await session.reconnect(turn.locale)
        note = "market not sent: the protocol takes it from the locale" if turn.market else None
        text = turn.text.strip()
        message_id = f"{session.conversation}-{n}"
        for _ in range(int(self.timeout / RATE_LIMIT_PAUSE) + 1):
            await session.send(type="message", id=message_id, text=text)
            ack = await session.until(lambda f: f.get("id") == message_id, self.timeout)
            if ack["type"] != "error" or ack.get("code") != "rate_limited":
                break
            await asyncio.sleep(RATE_LIMIT_PAUSE)
        if ack["type"] == "error":
            raise ReplayError(f"the server refused the message: {ack.get('code')}")
        if session.handed_off:
            got = await session.collect(self.quiet)
            replies = [f for f in got if f["type"] == "reply"]
            if not replies:
                return TurnOutcome(
                    n, "customer", text, handoff=True, handoff_reason=session.reason,
                    events=_events(got), note=note,
                )  # fmt: skip
            reply, events = replies[-1], got
        else:
            reply = await session.until(
                lambda f: (
                    f.get("reply_to") == message_id
                    or (f.get("type") == "error" and f.get("id") == message_id)
                ),
                self.timeout,
            )
            if reply["type"] == "error":
                raise ReplayError(f"the server failed the turn: {reply.get('code')}")
            events = [reply, *await session.collect(0.2)]  # a handoff comes right behind
        text_out = str(reply.get("text", ""))
        lang = reply.get("lang")
        return TurnOutcome(
            n,
            "customer",
            text,
            language=lang,
            faq_ids=list(reply.get("faq_ids") or []),
            reply=text_out,
            reply_language=self.detect(text_out, lang),
            handoff=session.handed_off,
            handoff_reason=session.reason,
            events=_events(events),
            note=note,
        )

    async def _talk_to_human(self, session: _Session, turn: Turn, n: int) -> TurnOutcome:
        await session.send(type="handoff.request")
        got = await session.collect(self.quiet)
        return TurnOutcome(
            n, "action", turn.text, handoff=session.handed_off, handoff_reason=session.reason,
            events=_events(got),
        )  # fmt: skip


class _Session:
    """One conversation's socket, its resume token and what it has received."""

    def __init__(self, url: str, ws: ClientConnection, timeout: float) -> None:
        self.url = url
        self.ws = ws
        self.timeout = timeout
        self.locale = ""
        self.conversation = ""
        self.resume = ""
        self.last_seq = 0
        self.handed_off = False
        self.reason: str | None = None

    @classmethod
    async def open(cls, url: str, locale: str, wait: float) -> _Session:
        ws = await connect(url, open_timeout=wait)
        session = cls(url, ws, wait)
        await session.hello(locale)
        return session

    async def hello(self, locale: str) -> None:
        frame: dict[str, Any] = {"type": "hello", "v": 1, "locale": locale}
        if self.resume:
            frame |= {"resume": self.resume, "last_seq": self.last_seq}
        await self.send(**frame)
        welcome = await self.recv(self.timeout)
        if welcome.get("type") != "welcome":
            raise ReplayError(f"expected welcome, got {welcome}")
        self.locale, self.resume = locale, str(welcome["resume"])
        self.conversation = str(welcome["conversation"])
        await self.collect(0.2)  # the replay of anything missed

    async def reconnect(self, locale: str) -> None:
        await self.ws.close()
        self.ws = await connect(self.url, open_timeout=self.timeout)
        await self.hello(locale)

    async def send(self, **frame: Any) -> None:
        await self.ws.send(json.dumps(frame, ensure_ascii=False))

    async def recv(self, wait: float) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.ws.recv(), wait))
        seq = frame.get("seq")
        if frame.get("type") != "welcome" and isinstance(seq, int):
            self.last_seq = max(self.last_seq, seq)
        if frame.get("type") == "handoff":
            self.handed_off, self.reason = True, str(frame.get("reason"))
        elif frame.get("type") == "agent.left":
            self.handed_off, self.reason = False, None
        return frame

    async def until(self, wanted: Callable[[dict[str, Any]], bool], wait: float) -> dict[str, Any]:
        """The first frame ``wanted`` picks (or an error frame about it)."""
        deadline = time.monotonic() + wait
        while True:
            frame = await self.recv(max(0.01, deadline - time.monotonic()))
            if wanted(frame):
                return frame

    async def collect(self, quiet: float) -> list[dict[str, Any]]:
        """Frames until none comes for ``quiet`` seconds."""
        got = []
        while True:
            try:
                got.append(await self.recv(quiet))
            except TimeoutError:
                return got


def _events(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What the customer received, without transient frames and the reply's own text."""
    out = []
    for f in frames:
        kind = f.get("type")
        if kind == "reply":
            out.append({"type": "reply", "lang": f.get("lang"), "faq_ids": f.get("faq_ids")})
        elif kind in ("handoff", "system", "agent.joined", "agent.message", "agent.left"):
            out.append({k: v for k, v in f.items() if k not in ("seq", "reply_to")})
    return out
