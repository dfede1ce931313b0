"""``bot eval replies|retrieval``: evaluations that print figures and write a JSON report."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import GENERATE_MODES, Config

if TYPE_CHECKING:
    from bot.store import Pick
from bot.evals import translate_cli

Handler = Callable[[argparse.Namespace, Config], int]
DEFAULT_REPLY_CASES = Path("tests/data/replies")
DEFAULT_RETRIEVAL_CASES = (
    Path("tests/data/questions"),
    Path("tests/data/replies"),
    Path("tests/data/retrieval_dev"),
)


def register(subparsers: Any) -> dict[str, Handler]:
    """Add ``eval`` and its subcommands to ``subparsers``."""
    evals = subparsers.add_parser("eval", help="evaluations (reply faithfulness, retrieval)")
    sub = evals.add_subparsers(dest="eval_command", required=True, metavar="WHAT")

    p = sub.add_parser("replies", help="faithfulness of replies to turn-specific questions")
    p.add_argument("--cases", type=Path, default=DEFAULT_REPLY_CASES, help="dir of LL.toml")
    p.add_argument("--lang", action="append", help="only these languages (repeatable)")
    p.add_argument("--subset", type=int, metavar="N", help="the first N cases per language")
    p.add_argument("--generate", choices=GENERATE_MODES, help="override generate.mode")
    p.add_argument(
        "--engine", choices=["auto", "none"], default="auto", help="none: no model at all"
    )
    p.add_argument("--out", type=Path, help="write the scores as JSON here")
    p.add_argument("--examples", type=int, default=12, help="failing examples to print")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_replies)

    p = sub.add_parser("retrieval", help="top-1/top-3, confidently wrong, abstain per language")
    p.add_argument(
        "--cases", type=Path, action="append", help="dir of LL.toml (repeatable; default: "
        + ", ".join(str(d) for d in DEFAULT_RETRIEVAL_CASES) + ")",
    )  # fmt: skip
    p.add_argument("--lang", action="append", help="only these languages (repeatable)")
    p.add_argument(
        "--picks", action="store_true", help="also the customers' clarify picks (database)"
    )
    p.add_argument("--out", type=Path, help="write retrieval.json and retrieval_curve.png here")
    p.add_argument("--examples", type=int, default=10, help="confidently wrong cases to print")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_retrieval)

    p = sub.add_parser("picks", help="customers' clarify picks as labelled retrieval cases")
    p.add_argument("--out", type=Path, help="write them as LL.toml case files in this folder")
    p.set_defaults(func=cmd_picks)
    handlers = {"replies": cmd_replies, "retrieval": cmd_retrieval, "picks": cmd_picks}
    return handlers | translate_cli.register(sub)


def cmd_replies(args: argparse.Namespace, config: Config) -> int:
    if args.generate:
        config = config.replace(generate={"mode": args.generate})
    return asyncio.run(_replies(args, config))


async def _replies(args: argparse.Namespace, config: Config) -> int:
    from bot.evals import replies
    from bot.models.engines import model_client
    from bot.pipeline import Pipeline

    cases = replies.load_cases(args.cases, args.lang)
    if args.subset:
        cases = replies.subset(cases, args.subset)
    if args.engine == "none":
        pipeline = await asyncio.to_thread(Pipeline.build, config, None)
        scores = await replies.run(pipeline, cases, progress=not args.quiet)
    else:
        async with model_client(config.model) as llm:
            pipeline = await asyncio.to_thread(Pipeline.build, config, llm)
            scores = await replies.run(pipeline, cases, progress=not args.quiet)
    print(f"generate.mode = {config.generate.mode}; {len(cases)} cases", file=sys.stderr)
    print(replies.report(scores, examples=args.examples))
    if args.out:
        replies.write_json(scores, args.out)
    return 0 if all(s.harmless for s in scores) else 1


def cmd_retrieval(args: argparse.Namespace, config: Config) -> int:
    from bot.evals import retrieval
    from bot.retrieve import Embedder, Retriever

    cases = retrieval.load_cases(args.cases or DEFAULT_RETRIEVAL_CASES, args.lang)
    if args.picks:
        picked = retrieval.pick_cases(asyncio.run(_picks(config)))
        cases += [c for c in picked if not args.lang or c.language in args.lang]
    retriever = Retriever(config.retrieve.index_dir, Embedder(config.model.cache_dir))
    outcomes = retrieval.run(retriever, cases, progress=not args.quiet)
    print(f"{len(cases)} cases; index {retriever.fingerprint}", file=sys.stderr)
    print(retrieval.report(outcomes, examples=args.examples))
    if args.out:
        for path in retrieval.write(outcomes, args.out):
            print(f"wrote {path}", file=sys.stderr)
    return 0


def cmd_picks(args: argparse.Namespace, config: Config) -> int:
    from bot.evals import retrieval

    picks = asyncio.run(_picks(config))
    for pick in picks:
        print(f"[{pick.language}] {pick.question[:70]!r} -> {pick.faq_id}  (of {pick.offered})")
    print(f"{len(picks)} picks", file=sys.stderr)
    if args.out:
        for path in retrieval.write_picks(picks, args.out):
            print(f"wrote {path}", file=sys.stderr)
    return 0


async def _picks(config: Config) -> list[Pick]:
    from bot.store import Store

    async with Store(config.database) as store:
        return await store.clarify_picks()
