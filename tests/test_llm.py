"""The model client fails fast and clearly: timeouts, retries, circuit breaker.

Error paths run against a protocol-level fake server (real HTTP, real SSE on a real port);
the real engines are exercised in test_models.py and test_pipeline_engine.py.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections import deque

import pytest

from bot.config import Config
from bot.errors import EngineBusy, EngineRejected, EngineTimeout, EngineUnavailable, LLMError
from bot.llm import CircuitBreaker, LLMClient
from tests.fake_openai import FakeOpenAI

MESSAGES = [{"role": "user", "content": "hi"}]


def client_for(config: Config, url: str, **model: object) -> LLMClient:
    settings = {"url": url, "first_token_timeout": 0.5, "read_timeout": 0.5, "connect_timeout": 0.5}
    settings.update(model)
    return LLMClient(config.replace(model=settings).model)


async def test_streams_deltas_and_records_usage(config: Config) -> None:
    """Pieces arrive in order through on_delta; usage and latency are recorded."""
    async with FakeOpenAI() as fake, client_for(config, fake.url) as llm:
        pieces: list[str] = []

        async def on_delta(text: str) -> None:
            pieces.append(text)

        completion = await llm.chat(MESSAGES, on_delta=on_delta)
    assert completion.text.strip() == "Hello from the fake engine."
    assert "".join(pieces) == completion.text and len(pieces) == 5
    assert completion.prompt_tokens == 12 and completion.completion_tokens == 5
    assert (
        completion.first_token_ms is not None and completion.total_ms >= completion.first_token_ms
    )
    assert fake.requests[0]["model"] == config.model.served_name
    assert fake.requests[0]["stream"] is True


async def test_adapter_name_is_sent_as_the_model(config: Config) -> None:
    """A configured LoRA adapter is requested by name."""
    async with FakeOpenAI() as fake, client_for(config, fake.url, adapter="support") as llm:
        await llm.chat(MESSAGES)
    assert fake.requests[0]["model"] == "support"


async def test_http_500_is_an_engine_error_and_not_retried(config: Config) -> None:
    """A server error is reported once; the request is not sent twice."""
    async with FakeOpenAI(script=deque(["http500"])) as fake, client_for(config, fake.url) as llm:
        with pytest.raises(LLMError, match="HTTP 500"):
            await llm.chat(MESSAGES)
    assert len(fake.requests) == 1


async def test_malformed_stream_is_rejected(config: Config) -> None:
    """Garbage in the event stream is an error, not a half answer."""
    async with FakeOpenAI(script=deque(["malformed"])) as fake, client_for(config, fake.url) as llm:
        with pytest.raises(LLMError, match="malformed"):
            await llm.chat(MESSAGES)


async def test_stall_mid_stream_times_out(config: Config) -> None:
    """A stream that stops sending is cut after the read timeout."""
    async with FakeOpenAI(script=deque(["stall"])) as fake, client_for(config, fake.url) as llm:
        started = time.monotonic()
        with pytest.raises(EngineTimeout, match="next token"):
            await llm.chat(MESSAGES)
    assert time.monotonic() - started < 5


async def test_no_first_token_times_out(config: Config) -> None:
    """An engine that accepts but never answers is cut after the first-token deadline."""
    async with (
        FakeOpenAI(script=deque(["slow_first"])) as fake,
        client_for(config, fake.url) as llm,
    ):
        with pytest.raises(EngineTimeout, match="first token"):
            await llm.chat(MESSAGES)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_refused_connection_retries_then_opens_the_circuit(config: Config) -> None:
    """A dead engine: bounded retries, then the breaker answers at once."""
    url = f"http://127.0.0.1:{_closed_port()}/v1"
    async with client_for(config, url, retries=1, breaker_failures=2) as llm:
        for _ in range(2):
            with pytest.raises(EngineUnavailable):
                await llm.chat(MESSAGES)
        assert llm.breaker.state == "open"
        started = time.perf_counter()
        with pytest.raises(EngineUnavailable, match="circuit open"):
            await llm.chat(MESSAGES)
        assert time.perf_counter() - started < 0.05


def test_breaker_half_opens_after_the_reset_time() -> None:
    """After the reset time one trial call goes through; success closes the circuit."""
    now = [0.0]
    breaker = CircuitBreaker(failures_to_open=1, reset_seconds=10, clock=lambda: now[0])
    breaker.failure()
    assert breaker.state == "open"
    with pytest.raises(EngineUnavailable):
        breaker.before_call()
    now[0] = 11
    breaker.before_call()  # the trial
    with pytest.raises(EngineUnavailable):
        breaker.before_call()  # only one trial at a time
    breaker.success()
    assert breaker.state == "closed"


async def test_a_4xx_answer_is_not_an_engine_failure(config: Config) -> None:
    """A request the engine refuses (HTTP 400) fails alone; the engine stays "up" for others."""
    script = deque(["http400"] * 5)
    async with FakeOpenAI(script=script) as fake, client_for(config, fake.url) as llm:
        for _ in range(5):
            with pytest.raises(EngineRejected, match="HTTP 400"):
                await llm.chat(MESSAGES)
        assert llm.breaker.state == "closed"
        assert (await llm.chat(MESSAGES)).text


async def test_admission_control_refuses_instead_of_queueing_into_timeouts(
    config: Config,
) -> None:
    """With one slot busy, a waiting call gives up after queue_wait, a call beyond the queue at
    once, and neither opens the breaker: six customers at once never take the engine "down"."""
    script = deque(["slow_ok"])
    async with (
        FakeOpenAI(script=script) as fake,
        client_for(
            config, fake.url, concurrency=1, queue_size=1, queue_wait=0.3,
            first_token_timeout=5.0, read_timeout=5.0, breaker_failures=1,
        ) as llm,
    ):  # fmt: skip
        first = asyncio.create_task(llm.chat(MESSAGES))
        await asyncio.sleep(0.05)
        waiting = asyncio.create_task(llm.chat(MESSAGES))
        await asyncio.sleep(0.05)
        with pytest.raises(EngineBusy, match="already waiting"):
            await llm.chat(MESSAGES)
        assert not waiting.done()  # refused at once, while the other still waits
        with pytest.raises(EngineBusy, match=r"no slot within 0\.3 s"):
            await waiting
        assert (await first).text
        assert llm.refused == 2
        assert llm.breaker.state == "closed"
        assert (await llm.chat(MESSAGES)).text  # the slot is free again
