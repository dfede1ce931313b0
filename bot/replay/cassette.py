"""The model's answers, recorded once and replayed: a cassette and two httpx transports.

A model request is keyed by what decides the model's output: the SHA-256 of the canonical
JSON (sorted keys, no spaces) of ``model``, ``messages``, ``max_tokens``, ``temperature``
(and ``stop`` when given), first 16 hex digits. Streaming options are not part of the key.

- ``RecordingTransport`` wraps the real transport: each chat completion goes to the engine,
  and the answer (its text, finish reason, usage, or the HTTP error) is stored under the
  request's key together with the turn that asked (``conversation#turn``).
- ``CassetteTransport`` answers from the cassette, streamed as the engine would (SSE chunks);
  a request it does not hold raises ``CassetteMiss`` naming the turn and, when the turn
  asked something else when it was recorded, what changed (system prompt, examples,
  the text itself, max_tokens...).

The cassette file (``NAME.cassette.json`` beside ``NAME.yaml``) also keeps what each turn
did when it was recorded (``conversations``), for ``bot replay diff`` and ``--live`` runs.
Only a digest of each prompt message is stored, and the last message in full: the few-shot
examples of a translation prompt are the shop's own curated content, kilobytes per call.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bot.replay import CassetteMiss, ReplayError

VERSION = 1
KEY_FIELDS = ("model", "messages", "max_tokens", "temperature", "stop")
CHAT_PATH = "/chat/completions"


def canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def request_key(body: Mapping[str, Any]) -> str:
    """The cassette key of a chat-completions request body."""
    decisive = {k: body[k] for k in KEY_FIELDS if body.get(k) is not None}
    return hashlib.sha256(canonical(decisive).encode("utf-8")).hexdigest()[:16]


def summarize(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the cassette keeps of a request: enough to say what changed on a miss."""
    messages = list(body.get("messages") or [])
    last = messages[-1] if messages else {}
    return {
        "model": body.get("model"),
        "max_tokens": body.get("max_tokens"),
        "temperature": body.get("temperature"),
        "stop": body.get("stop"),
        "roles": " ".join(str(m.get("role", "?"))[:1] for m in messages),
        "digests": [hashlib.sha256(canonical(m).encode()).hexdigest()[:10] for m in messages],
        "last": str(last.get("content", "")),
    }


@dataclass
class Answer:
    """One recorded answer to a request."""

    at: str  # the turn that asked: "conversation#turn"
    status: int = 200
    text: str = ""
    finish_reason: str | None = "stop"
    usage: dict[str, Any] | None = None
    error: str | None = None  # the request failed below HTTP: "connect" | "timeout"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Answer:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


@dataclass
class Call:
    request: dict[str, Any]  # summarize()
    answers: list[Answer] = field(default_factory=list)


@dataclass
class Cassette:
    """Recorded model calls of one replay file, and what its turns did when recorded."""

    recorded_with: dict[str, Any] = field(default_factory=dict)
    conversations: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: dict[str, Call] = field(default_factory=dict)

    @property
    def uses_model(self) -> bool:
        """False when it was recorded without a model engine (``--engine none``)."""
        return self.recorded_with.get("model") is not None

    @property
    def failed_calls(self) -> int:
        """Recorded answers that are engine failures (HTTP errors, no connection)."""
        return sum(1 for c in self.calls.values() for a in c.answers if a.error or a.status != 200)

    def record(self, body: Mapping[str, Any], answer: Answer) -> str:
        key = request_key(body)
        call = self.calls.setdefault(key, Call(summarize(body)))
        call.answers.append(answer)
        return key

    @classmethod
    def load(cls, path: Path) -> Cassette:
        """The cassette at ``path``; FileNotFoundError when there is none."""
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise ReplayError(f"{path}: unreadable cassette: {exc}") from exc
        return cls.loads(text, str(path))

    @classmethod
    def loads(cls, text: str, name: str = "<cassette>") -> Cassette:
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise ReplayError(f"{name}: unreadable cassette: {exc}") from exc
        if not isinstance(data, dict) or data.get("version") != VERSION:
            raise ReplayError(f"{name}: not a version {VERSION} cassette")
        calls = {
            key: Call(c["request"], [Answer.from_dict(a) for a in c["answers"]])
            for key, c in data.get("calls", {}).items()
        }
        return cls(data.get("recorded_with", {}), data.get("conversations", {}), calls)

    def dumps(self) -> str:
        data = {
            "version": VERSION,
            "recorded_with": self.recorded_with,
            "conversations": self.conversations,
            "calls": {
                key: {"request": c.request, "answers": [_answer_dict(a) for a in c.answers]}
                for key, c in self.calls.items()
            },
        }
        return json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True) + "\n"

    def save(self, path: Path) -> None:
        path.write_text(self.dumps(), encoding="utf-8")


def _answer_dict(answer: Answer) -> dict[str, Any]:
    return {k: v for k, v in asdict(answer).items() if v is not None}


# -- transports ---------------------------------------------------------------------------


class _TurnAware(httpx.AsyncBaseTransport):
    """A transport that knows which turn of which conversation is asking."""

    def __init__(self, conversation: str) -> None:
        self.conversation = conversation
        self.turn = 0

    @property
    def at(self) -> str:
        return f"{self.conversation}#{self.turn}"


class CassetteTransport(_TurnAware):
    """Answers the model client from a cassette; never opens a connection."""

    def __init__(self, cassette: Cassette, conversation: str) -> None:
        super().__init__(conversation)
        self.cassette = cassette
        self.used: set[str] = set()
        self._served: Counter[tuple[str, str]] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method == "GET" and request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": []}, request=request)
        if not request.url.path.endswith(CHAT_PATH):
            raise CassetteMiss(f"turn {self.turn}: no recorded answer to {request.url.path}")
        body = json.loads(await request.aread())
        key = request_key(body)
        call = self.cassette.calls.get(key)
        if call is None:
            raise CassetteMiss(self._miss(body, key))
        self.used.add(key)
        answer = self._pick(key, call)
        if answer.error == "timeout":
            raise httpx.ReadTimeout("recorded: the engine timed out", request=request)
        if answer.error is not None:
            raise httpx.ConnectError("recorded: the engine was unreachable", request=request)
        if answer.status != 200:
            return httpx.Response(answer.status, text=answer.text, request=request)
        content = sse(answer, str(body.get("model", "")))
        headers = {"content-type": "text/event-stream"}
        return httpx.Response(200, headers=headers, content=content, request=request)

    def _pick(self, key: str, call: Call) -> Answer:
        """The answers recorded at this turn in order, else the request's first answers;
        the last one again once they are used up."""
        here = [a for a in call.answers if a.at == self.at] or call.answers
        n = self._served[(key, self.at)]
        self._served[(key, self.at)] += 1
        return here[min(n, len(here) - 1)]

    def _miss(self, body: Mapping[str, Any], key: str) -> str:
        now = summarize(body)
        last = _short(now["last"])
        head = (
            f"turn {self.turn}: model request not in the cassette (key {key}; "
            f"{len(now['digests'])} messages, last {last!r})"
        )
        recorded = [
            (k, c.request) for k, c in self.cassette.calls.items()
            if any(a.at == self.at for a in c.answers)
        ]  # fmt: skip
        if not recorded:
            return head + "; this turn made no model call when it was recorded"
        k, then = min(recorded, key=lambda kv: len(changes(kv[1], now)))
        return (
            head
            + f"; recorded for this turn: {k}, which differs in "
            + "; ".join(changes(then, now))
        )


class RecordingTransport(_TurnAware):
    """Sends each request to the engine through ``inner`` and records its answer."""

    def __init__(
        self, inner: httpx.AsyncBaseTransport, cassette: Cassette, conversation: str
    ) -> None:
        super().__init__(conversation)
        self.inner = inner
        self.cassette = cassette

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.method != "POST" or not request.url.path.endswith(CHAT_PATH):
            return await self.inner.handle_async_request(request)
        body = json.loads(await request.aread())
        try:
            response = await self.inner.handle_async_request(request)
        except httpx.TimeoutException:
            self.cassette.record(body, Answer(self.at, status=0, error="timeout"))
            raise
        except httpx.TransportError:
            self.cassette.record(body, Answer(self.at, status=0, error="connect"))
            raise
        try:
            raw = await response.aread()
        finally:
            await response.aclose()
        if response.status_code == 200:
            text, finish, usage = parse_sse(raw)
            answer = Answer(self.at, 200, text, finish, usage)
        else:
            answer = Answer(self.at, response.status_code, raw.decode("utf-8", "replace"))
        self.cassette.record(body, answer)
        headers = {
            k: v
            for k, v in response.headers.items()
            if k.lower() not in ("content-encoding", "content-length", "transfer-encoding")
        }
        return httpx.Response(response.status_code, headers=headers, content=raw, request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


# -- the wire format of a streamed answer ---------------------------------------------------


def sse(answer: Answer, model: str) -> bytes:
    """The answer as the engine streams it: word-sized content chunks, finish, usage."""
    chunks: list[dict[str, Any]] = [
        {
            "object": "chat.completion.chunk",
            "model": model,
            "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
        }
        for piece in re.findall(r"\S+\s*|\s+", answer.text)
    ]
    if answer.finish_reason is not None:
        chunks.append(
            {
                "object": "chat.completion.chunk",
                "model": model,
                "choices": [{"index": 0, "delta": {}, "finish_reason": answer.finish_reason}],
            }
        )
    if answer.usage:
        chunks.append({"object": "chat.completion.chunk", "choices": [], "usage": answer.usage})
    lines = [f"data: {json.dumps(c, ensure_ascii=False)}\n\n" for c in chunks]
    return ("".join(lines) + "data: [DONE]\n\n").encode("utf-8")


def parse_sse(raw: bytes) -> tuple[str, str | None, dict[str, Any] | None]:
    """Text, finish reason and usage of a streamed chat completion."""
    pieces: list[str] = []
    finish: str | None = None
    usage: dict[str, Any] | None = None
    for line in raw.decode("utf-8", "replace").splitlines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
        except ValueError:
            continue
        if not isinstance(chunk, dict):
            continue
        usage = chunk.get("usage") or usage
        for choice in chunk.get("choices") or ():
            pieces.append((choice.get("delta") or {}).get("content") or "")
            finish = choice.get("finish_reason") or finish
    return "".join(pieces), finish, usage


def changes(then: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """How a request differs from a recorded one, in words."""
    out = [
        f"{name}: recorded {then.get(name)!r}, now {now.get(name)!r}"
        for name in ("model", "max_tokens", "temperature", "stop")
        if then.get(name) != now.get(name)
    ]
    old, new = list(then.get("digests") or []), list(now.get("digests") or [])
    if len(old) != len(new):
        out.append(f"number of messages: recorded {len(old)}, now {len(new)}")
    roles = str(now.get("roles", "")).split()
    differing = [i for i, (a, b) in enumerate(zip(old, new, strict=False)) if a != b]
    last = min(len(old), len(new)) - 1
    if 0 in differing and roles[:1] == ["s"]:
        out.append("the system prompt")
    middle = [i for i in differing if 0 < i < last]
    if middle:
        out.append(f"messages {middle[0]}-{middle[-1]} (examples or history)")
    if last > 0 and last in differing:
        out.append(f"the last message: recorded {_short(then.get('last'))!r}")
    return out or ["nothing the cassette can tell (same digests)"]


def _short(text: object, limit: int = 80) -> str:
    value = " ".join(str(text or "").split())
    return value if len(value) <= limit else value[: limit - 1] + "…"
