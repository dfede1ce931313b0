"""``bot finetune data | train | export | eval`` (docs/finetune.md)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bot.config import Config

Handler = Callable[[argparse.Namespace, Config], int]
DEFAULT_DATA = Path("var/finetune/data")
DEFAULT_RUN = Path("var/finetune/run")
DEFAULT_NAME = "support"


def register(subparsers: Any) -> dict[str, Handler]:
    """Add ``finetune`` and its subcommands to ``subparsers``."""
    from bot.finetune.train import TrainConfig

    defaults = TrainConfig(base="")
    group = subparsers.add_parser("finetune", help="fine-tune the reply model (LoRA)")
    sub = group.add_subparsers(dest="finetune_command", required=True, metavar="STEP")

    p = sub.add_parser("data", help="build the dataset (JSONL per split + data card)")
    p.add_argument("--out", type=Path, default=DEFAULT_DATA, help=f"default {DEFAULT_DATA}")
    p.add_argument("--no-conversations", action="store_true", help="skip the database")
    p.set_defaults(func=cmd_data)

    p = sub.add_parser("train", help="train a LoRA adapter (resumes from --out's checkpoint)")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--out", type=Path, default=DEFAULT_RUN)
    p.add_argument("--base", type=Path, help="HF causal-LM dir (default: the embedded model's)")
    for name in ("steps", "tokens_per_step", "max_length", "rank", "alpha", "layers",
                 "eval_every", "eval_examples", "patience", "checkpoint_every", "seed",
                 "threads"):  # fmt: skip
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=int, default=getattr(defaults, name))
    for name in ("lr", "weight_decay", "warmup", "dropout", "clip"):
        p.add_argument("--" + name.replace("_", "-"), type=float, default=getattr(defaults, name))
    p.add_argument("--target-modules", default=",".join(defaults.target_modules))
    p.add_argument("--device", default=defaults.device, help="auto | cpu | cuda")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("export", help="PEFT + GGUF LoRA + merged checkpoint into var/adapters")
    p.add_argument("--run", type=Path, default=DEFAULT_RUN, help="a `train` output dir")
    p.add_argument("--name", default=DEFAULT_NAME, help="the adapter's served name")
    p.add_argument("--dest", type=Path, help="default: var/adapters/NAME")
    p.add_argument("--no-merged", action="store_true", help="skip the merged checkpoint")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("eval", help="base vs adapter on the test split, through the pipeline")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA)
    p.add_argument("--adapter", type=Path, help="PEFT dir (default: var/adapters/NAME)")
    p.add_argument("--name", default=DEFAULT_NAME)
    p.add_argument("--run", type=Path, default=DEFAULT_RUN, help="for the loss curves")
    p.add_argument("--per-language", type=int, default=0, metavar="N",
                   help="at most N test cases per language and source (0: all)")  # fmt: skip
    p.add_argument("--lang", action="append", help="only these languages (repeatable)")
    p.add_argument("--out", type=Path, default=Path("docs/finetune"))
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval)
    return {"data": cmd_data, "train": cmd_train, "export": cmd_export, "eval": cmd_eval}


def _root(config: Config, path: Path) -> Path:
    return path if path.is_absolute() else config.root / path


def cmd_data(args: argparse.Namespace, config: Config) -> int:
    from bot.finetune.conversations import approved_turns
    from bot.finetune.data import build_dataset, write_dataset
    from bot.store import resolve_url

    approved = None
    if not args.no_conversations:
        database = config.replace(
            database={"url": resolve_url(config.database.url, config.root)}
        ).database
        approved = asyncio.run(approved_turns(database))
    dataset = build_dataset(config, approved)
    out = _root(config, args.out)
    for path in write_dataset(dataset, out):
        print(f"wrote {path}", file=sys.stderr)
    card = dataset.card()
    print(json.dumps({k: card[k] for k in ("examples", "per_split", "dropped_duplicates",
                                           "skipped")}))  # fmt: skip
    return 0


def base_hf_dir(config: Config) -> Path:
    """The embedded model's Hugging Face dir (pulled and converted on first use)."""
    from bot.models.pull import pull_model
    from bot.models.registry import get_spec

    files = pull_model(get_spec(config.model.name), config.model.cache_dir, want_hf=True)
    assert files.hf_dir is not None
    return files.hf_dir


def cmd_train(args: argparse.Namespace, config: Config) -> int:
    from bot.finetune.data import read_split
    from bot.finetune.plots import plot_loss
    from bot.finetune.train import TrainConfig, train

    base = args.base or base_hf_dir(config)
    settings = TrainConfig(
        base=str(base),
        target_modules=tuple(m.strip() for m in args.target_modules.split(",") if m.strip()),
        device=args.device,
        **{name: getattr(args, name) for name in (
            "steps", "tokens_per_step", "max_length", "rank", "alpha", "layers", "eval_every",
            "eval_examples", "patience", "checkpoint_every", "seed", "threads", "lr",
            "weight_decay", "warmup", "dropout", "clip")},
    )  # fmt: skip
    data = _root(config, args.data)
    out = _root(config, args.out)
    history = train(
        settings,
        read_split(data, "train"),
        read_split(data, "validation"),
        out,
        progress=not args.quiet,
    )
    png = plot_loss(history, out / "loss.png")
    seconds = sum(history.step_seconds)
    cpu = sum(history.step_cpu_seconds)
    steps = len(history.step_seconds)
    print(
        f"{steps} steps in {seconds:.0f} s ({seconds / max(1, steps):.1f} s/step, "
        f"{cpu / max(1, steps):.1f} CPU-s/step, {history.tokens} tokens); best validation loss "
        f"{history.best_loss:.4f} at step {history.best_step}; stopped: {history.stopped}; "
        f"adapter -> {out / 'adapter'}; loss curves -> {png}",
        file=sys.stderr,
    )
    return 0


def cmd_export(args: argparse.Namespace, config: Config) -> int:
    from bot.config import ADAPTERS_DIR
    from bot.finetune.export import export_adapter
    from bot.models.pull import find_model
    from bot.models.registry import get_spec

    run = _root(config, args.run)
    dest = _root(config, args.dest) if args.dest else config.root / ADAPTERS_DIR / args.name
    history = run / "history.json"
    provenance: dict[str, Any] = {"name": args.name}
    if history.is_file():
        raw = json.loads(history.read_text())
        provenance.update(
            base=raw["config"]["base"], config=raw["config"], best_step=raw["best_step"],
            best_validation_loss=raw["best_loss"], stopped=raw["stopped"],
        )  # fmt: skip
    base_hf = Path(provenance.get("base") or base_hf_dir(config))
    files = find_model(get_spec(config.model.name), config.model.cache_dir)
    export_adapter(
        run / "adapter",
        dest,
        base_hf=base_hf,
        base_gguf=files.gguf if files.gguf.is_file() else None,
        merged=not args.no_merged,
        provenance=provenance,
    )
    print(f"installed {args.name!r} in {dest}", file=sys.stderr)
    return 0


def cmd_eval(args: argparse.Namespace, config: Config) -> int:
    from bot.config import ADAPTERS_DIR
    from bot.finetune.evaluate import run_eval

    adapter = _root(config, args.adapter) if args.adapter else (
        config.root / ADAPTERS_DIR / args.name
    )  # fmt: skip
    report = asyncio.run(
        run_eval(
            config,
            _root(config, args.data),
            adapter,
            name=args.name,
            out=_root(config, args.out),
            run=_root(config, args.run),
            per_language=args.per_language,
            languages=args.lang,
            progress=not args.quiet,
        )
    )
    print(report)
    return 0
