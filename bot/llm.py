"""Async client for an OpenAI-compatible chat-completions server (vLLM, llama.cpp).

The only module that talks HTTP to the model. It streams, and it fails fast:

- connect and read timeouts, plus a first-token deadline;
- bounded retries with exponential backoff, for connection failures only (a request
  the server received is never sent twice);
- admission control: at most ``concurrency`` calls in flight, at most ``queue_size``
  waiting, each for at most ``queue_wait`` seconds; a call refused here raises
  ``EngineBusy`` at once (the turn answers from the curated FAQ) and is *not* an engine
  failure. Without it, four simultaneous turns queued inside llama.cpp (which serves one
  request at a time) timed out waiting for their first token and opened the breaker for
  everyone;
- a circuit breaker: after ``breaker_failures`` consecutive engine failures (refused
  connections, 5xx, malformed or stalled streams; not 4xx answers, not admission refusals)
  every call raises ``EngineUnavailable`` at once, until ``breaker_reset_seconds`` have
  passed and one trial call succeeds. A dead engine costs a turn microseconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from bot.config import ModelConfig
from bot.errors import EngineBusy, EngineRejected, EngineTimeout, EngineUnavailable, LLMError

log = logging.getLogger(__name__)

Message = dict[str, str]
OnDelta = Callable[[str], Awaitable[None]]


@dataclass
class Completion:
    text: str
    model: str
    finish_reason: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    first_token_ms: float | None = None
    total_ms: float = 0.0
    attempts: int = 1

    def usage(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "first_token_ms": None
            if self.first_token_ms is None
            else round(self.first_token_ms, 1),
            "total_ms": round(self.total_ms, 1),
            "finish_reason": self.finish_reason,
            "attempts": self.attempts,
        }


@dataclass
class CircuitBreaker:
    failures_to_open: int = 3
    reset_seconds: float = 20.0
    clock: Callable[[], float] = time.monotonic
    failures: int = 0
    opened_at: float | None = None
    _trial: bool = field(default=False, repr=False)

    @property
    def state(self) -> str:
        if self.opened_at is None:
            return "closed"
        return "half-open" if self.clock() - self.opened_at >= self.reset_seconds else "open"

    def before_call(self) -> None:
        state = self.state
        if state == "open" or (state == "half-open" and self._trial):
            raise EngineUnavailable("model engine unavailable (circuit open)")
        if state == "half-open":
            self._trial = True

    def success(self) -> None:
        self.failures, self.opened_at, self._trial = 0, None, False

    def failure(self) -> None:
        self.failures += 1
        self._trial = False
        if self.failures >= self.failures_to_open or self.opened_at is not None:
            self.opened_at = self.clock()


class LLMClient:
    """``async with LLMClient(cfg) as llm: await llm.chat(messages)``."""

    def __init__(
        self, config: ModelConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self.breaker = CircuitBreaker(config.breaker_failures, config.breaker_reset_seconds)
        self._slots = asyncio.Semaphore(config.concurrency)
        self.waiting = 0  # calls waiting for a slot now
        self.refused = 0  # calls refused by admission control since start
        timeout = httpx.Timeout(config.read_timeout, connect=config.connect_timeout)
        self._http = httpx.AsyncClient(
            base_url=config.base_url,
            timeout=timeout,
            transport=transport,
            headers={"Authorization": f"Bearer {config.api_key}"},
            limits=httpx.Limits(max_connections=32, max_keepalive_connections=8),
        )

    async def __aenter__(self) -> LLMClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    @property
    def available(self) -> bool:
        return self.breaker.state != "open"

    async def health(self) -> bool:
        try:
            response = await self._http.get("/models", timeout=self.config.connect_timeout)
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    async def chat(
        self,
        messages: Sequence[Message],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        stop: Sequence[str] | None = None,
        model: str | None = None,
        on_delta: OnDelta | None = None,
    ) -> Completion:
        """One streamed chat completion; ``on_delta`` receives each piece of text."""
        self.breaker.before_call()
        body: dict[str, Any] = {
            "model": model or self.config.request_model,
            "messages": list(messages),
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if stop:
            body["stop"] = list(stop)
        async with self._admitted():
            return await self._call(body, on_delta)

    @contextlib.asynccontextmanager
    async def _admitted(self) -> AsyncIterator[None]:
        """A slot for one call, or EngineBusy at once (queue full) or after queue_wait."""
        if self._slots.locked() and self.waiting >= self.config.queue_size:
            self.refused += 1
            raise EngineBusy(f"model engine busy: {self.waiting} calls already waiting")
        self.waiting += 1
        try:
            async with asyncio.timeout(self.config.queue_wait):
                await self._slots.acquire()
        except TimeoutError as exc:
            self.refused += 1
            raise EngineBusy(
                f"model engine busy: no slot within {self.config.queue_wait:.1f} s"
            ) from exc
        finally:
            self.waiting -= 1
        try:
            yield
        finally:
            self._slots.release()

    async def _call(self, body: dict[str, Any], on_delta: OnDelta | None) -> Completion:
        attempts = 0
        while True:
            attempts += 1
            try:
                completion = await self._stream(body, on_delta)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                if attempts <= self.config.retries:
                    await asyncio.sleep(0.1 * 2**attempts)
                    continue
                self.breaker.failure()
                raise EngineUnavailable(f"cannot reach the model engine: {exc}") from exc
            except EngineRejected:
                raise  # our request's fault, not the engine's
            except LLMError:
                self.breaker.failure()
                raise
            except httpx.HTTPError as exc:
                self.breaker.failure()
                raise LLMError(f"model engine request failed: {exc!r}") from exc
            self.breaker.success()
            completion.attempts = attempts
            return completion

    async def _stream(self, body: dict[str, Any], on_delta: OnDelta | None) -> Completion:
        started = time.perf_counter()
        completion = Completion(text="", model=str(body["model"]))
        pieces: list[str] = []
        async with self._http.stream("POST", "/chat/completions", json=body) as response:
            if response.status_code != 200:
                detail = (await response.aread())[:300].decode("utf-8", "replace")
                error = EngineRejected if 400 <= response.status_code < 500 else LLMError
                raise error(f"model engine answered HTTP {response.status_code}: {detail}")
            events = _sse_data(response.aiter_lines())
            deadline = self.config.first_token_timeout
            while True:
                try:
                    async with asyncio.timeout(deadline):
                        data = await anext(events, None)
                except TimeoutError as exc:
                    what = "first token" if completion.first_token_ms is None else "next token"
                    raise EngineTimeout(f"model engine stalled waiting for the {what}") from exc
                if data is None or data == "[DONE]":
                    break
                deadline = self.config.read_timeout
                chunk = _parse_chunk(data)
                usage = chunk.get("usage")
                if usage:
                    completion.prompt_tokens = usage.get("prompt_tokens")
                    completion.completion_tokens = usage.get("completion_tokens")
                for choice in chunk.get("choices") or ():
                    delta = (choice.get("delta") or {}).get("content") or ""
                    if choice.get("finish_reason"):
                        completion.finish_reason = choice["finish_reason"]
                    if delta:
                        if completion.first_token_ms is None:
                            completion.first_token_ms = (time.perf_counter() - started) * 1000
                        pieces.append(delta)
                        if on_delta is not None:
                            await on_delta(delta)
        if completion.finish_reason is None and not pieces:
            raise LLMError("model engine closed the stream without an answer")
        completion.text = "".join(pieces)
        if completion.completion_tokens is None:
            completion.completion_tokens = len(pieces)
        completion.total_ms = (time.perf_counter() - started) * 1000
        return completion


async def _sse_data(lines: AsyncIterator[str]) -> AsyncIterator[str]:
    async for line in lines:
        if line.startswith("data:"):
            yield line[5:].strip()


def _parse_chunk(data: str) -> dict[str, Any]:
    try:
        chunk = json.loads(data)
    except json.JSONDecodeError as exc:
        raise LLMError(f"malformed stream event from the model engine: {data[:80]!r}") from exc
    if not isinstance(chunk, dict):
        raise LLMError("malformed stream event from the model engine")
    if "error" in chunk:
        raise LLMError(f"model engine error: {str(chunk['error'])[:200]}")
    return chunk
