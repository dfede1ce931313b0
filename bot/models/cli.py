"""``bot model list | pull | serve``: acquire models and run an engine in the foreground."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.config import Config, ModelConfig
from bot.errors import ModelError
from bot.models.engines import ENGINES, start_from_config
from bot.models.pull import find_model, pull_model
from bot.models.registry import MODELS, get_spec

Handler = Callable[[argparse.Namespace, Config], int]


def register(subparsers: Any) -> dict[str, Handler]:
    """Add ``model`` and its subcommands to ``subparsers``; each leaf sets ``func``."""
    model = subparsers.add_parser("model", help="model acquisition and engines")
    sub = model.add_subparsers(dest="model_command", required=True, metavar="ACTION")

    p = sub.add_parser("list", help="known models and whether they are pulled")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("pull", help="install, join and verify a model (idempotent)")
    p.add_argument("name", nargs="?", help="model name (default: model.name)")
    p.add_argument(
        "--no-hf", action="store_true", help="skip the Hugging Face dir (only vLLM needs it)"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_pull)

    p = sub.add_parser("path", help="print the pulled model's GGUF file (for scripts)")
    p.add_argument("name", nargs="?", help="model name (default: model.name)")
    p.set_defaults(func=cmd_path)

    p = sub.add_parser("serve", help="run an engine in the foreground until Ctrl-C")
    p.add_argument("--engine", choices=ENGINES, help="default: model.engine")
    p.add_argument("--model", dest="name", help="model name (default: model.name)")
    p.add_argument("--host", help="default: model.host")
    p.add_argument("--port", type=int, help="default: model.port")
    p.add_argument(
        "--lora",
        action="append",
        default=[],
        metavar="NAME=DIR",
        type=_adapter,
        help="serve a PEFT LoRA adapter under NAME (repeatable)",
    )
    p.add_argument("--python", help="engine interpreter (vLLM: its own venv's python)")
    p.set_defaults(func=cmd_serve)
    return {"list": cmd_list, "pull": cmd_pull, "path": cmd_path, "serve": cmd_serve}


def cmd_list(args: argparse.Namespace, config: Config) -> int:
    cache_dir = config.model.cache_dir
    print(f"{'name':14} {'size':>8}  {'pulled':8} title")
    for spec in MODELS.values():
        try:
            files = find_model(spec, cache_dir)
            pulled = "gguf+hf" if files.hf_dir else "gguf"
        except ModelError:
            pulled = "-"
        mark = "*" if spec.name == config.model.name else " "
        print(f"{spec.name:13}{mark} {spec.size / 1e6:6.0f}MB  {pulled:8} {spec.title}")
    print(f"\n* = model.name; cache: {cache_dir}")
    return 0


def cmd_pull(args: argparse.Namespace, config: Config) -> int:
    spec = get_spec(args.name or config.model.name)
    files = pull_model(
        spec, config.model.cache_dir, want_hf=not args.no_hf, progress=not args.quiet
    )
    print(f"{spec.name}: {files.gguf}")
    if files.hf_dir:
        print(f"{spec.name}: {files.hf_dir}")
    return 0


def cmd_path(args: argparse.Namespace, config: Config) -> int:
    print(find_model(get_spec(args.name or config.model.name), config.model.cache_dir).gguf)
    return 0


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    changes = {
        key: value
        for key, value in {
            "engine": args.engine,
            "name": args.name,
            "host": args.host,
            "port": args.port,
        }.items()
        if value is not None
    }
    # model.adapter names what the bot requests; here --lora says what to serve
    cfg = dataclasses.replace(config.model, url="", adapter="", **changes)
    return asyncio.run(_serve(cfg, dict(args.lora), args.python))


async def _serve(cfg: ModelConfig, adapters: dict[str, Path], python: str | None) -> int:
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # also while the engine is still starting
        loop.add_signal_handler(sig, main.cancel)
    try:
        async with start_from_config(cfg, adapters=adapters, python=python) as engine:
            names = ", ".join([cfg.served_name, *adapters])
            print(f"serving {cfg.name} with {cfg.engine} at {engine.base_url} as: {names}")
            print(f"engine log: {engine.log_path}; Ctrl-C to stop", flush=True)
            await engine.wait()
            print(f"{engine.failure or 'the engine kept failing'}; log: {engine.log_path}")
            return 1
    except asyncio.CancelledError:
        print("stopped")
        return 0


def _adapter(value: str) -> tuple[str, Path]:
    name, sep, path = value.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"expected NAME=DIR, got {value!r}")
    return name, Path(path).expanduser()
