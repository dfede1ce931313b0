"""``bot replay run|record|diff|list``: registered on the main parser by ``bot.cli``.

    bot replay run PATH... [--pinned | --live | --url WS_URL] [--junit FILE] [--out FILE]
    bot replay record CONVERSATION_ID... --out FILE [--pin]     from the database
    bot replay record --from-text FILE --out FILE [--locale L] [--pin]
    bot replay record --update FILE...                           new cassettes, YAML untouched
    bot replay diff OLD NEW                                      exit 1 when something changed
    bot replay list [--limit N]                                  recent conversations

The format and the workflow: docs/replay.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import Config
from bot.replay import ReplayError
from bot.replay.format import Conversation, ReplayFile, load, replay_files

if TYPE_CHECKING:  # the pipeline's imports are heavy: only the commands that run load them
    from bot.replay.cassette import Cassette
    from bot.replay.results import TurnOutcome
    from bot.replay.runner import FileResult, InProcess

DEFAULT_TIMEOUT = 60.0  # seconds for one reply over --url


def register(sub: Any) -> None:
    """Add ``replay`` and its subcommands to the ``bot`` parser."""
    replay = sub.add_parser("replay", help="conversation replay tests (docs/replay.md)")
    rsub = replay.add_subparsers(dest="replay_command", required=True, metavar="COMMAND")

    p = rsub.add_parser("run", help="replay conversations and check their expectations")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH", help="replay files or dirs")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument(
        "--pinned", dest="mode", action="store_const", const="pinned",
        help="model calls answered from each file's cassette (default)",
    )  # fmt: skip
    mode.add_argument(
        "--live", dest="mode", action="store_const", const="live",
        help="the configured model engine answers (started if none is serving)",
    )  # fmt: skip
    mode.add_argument("--url", metavar="WS_URL", help="drive a running server's /ws/chat")
    p.set_defaults(mode="pinned")
    p.add_argument("--junit", type=Path, metavar="FILE", help="write JUnit XML here")
    p.add_argument("--out", type=Path, metavar="FILE", help="write the results (JSON) here")
    p.add_argument("--only", action="append", default=[], metavar="GLOB", help="ids to run")
    p.add_argument("--quiet", action="store_true", help="report only what did not pass")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="--url: per reply")
    p.set_defaults(func=cmd_run)

    p = rsub.add_parser("record", help="record conversations and their model calls")
    p.add_argument("conversations", nargs="*", metavar="CONVERSATION_ID")
    p.add_argument("--out", type=Path, metavar="FILE", help="the replay file to write")
    p.add_argument("--from-text", type=Path, metavar="FILE", help="one message per line")
    p.add_argument("--update", type=Path, nargs="+", metavar="FILE", help="re-record files")
    p.add_argument("--locale", default="en-US", help="--from-text: the page's locale")
    p.add_argument("--market", help="--from-text: the market (EU, US, JP...)")
    p.add_argument("--id", dest="conversation_id", help="--from-text: conversation id")
    p.add_argument("--pin", action="store_true", help="write what the bot did as expectations")
    p.add_argument(
        "--engine", choices=["auto", "none"], default="auto",
        help="auto: record the model's answers (engine started if needed); none: no model",
    )  # fmt: skip
    p.add_argument("--db", metavar="URL", help="database URL (default: database.url)")
    p.add_argument("--force", action="store_true", help="overwrite an existing --out file")
    p.set_defaults(func=cmd_record)

    p = rsub.add_parser("diff", help="what changed between two runs or recordings")
    p.add_argument("old", type=Path, metavar="OLD", help="results file, cassette or replay file")
    p.add_argument("new", type=Path, metavar="NEW")
    p.set_defaults(func=cmd_diff)

    p = rsub.add_parser("list", help="recent conversations in the database (ids for record)")
    p.add_argument("--limit", type=int, default=20)
    p.add_argument("--db", metavar="URL", help="database URL (default: database.url)")
    p.set_defaults(func=cmd_list)


# -- run --------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace, config: Config) -> int:
    from bot.replay import report, runner
    from bot.replay.results import results_json

    files = [load(p) for p in replay_files(args.paths)]
    chosen = runner.select(files, args.only)
    if not chosen:
        raise ReplayError("no conversations to run")
    mode = "wire" if args.url else args.mode
    started = time.perf_counter()
    if args.url:
        results = asyncio.run(_run_wire(args, config, chosen))
    else:
        results = asyncio.run(_run_in_process(mode, config, chosen))
    seconds = time.perf_counter() - started
    sys.stdout.write(report.text_report(results, quiet=args.quiet, seconds=seconds))
    if args.junit:
        args.junit.write_text(report.junit_xml(results), encoding="utf-8")
    if args.out:
        conversations = [r for f in results for r in f.conversations]
        args.out.write_text(results_json(conversations, mode), encoding="utf-8")
    return 1 if report.failed(results) else 0


async def _run_in_process(
    mode: str, config: Config, chosen: Sequence[tuple[ReplayFile, list[Conversation]]]
) -> list[FileResult]:
    from bot.pipeline import Pipeline
    from bot.replay import runner

    base = await asyncio.to_thread(Pipeline.build, config, None)
    replayer = runner.InProcess(base)
    if mode == "pinned":
        return [await runner.run_pinned(replayer, f, convs) for f, convs in chosen]
    async with runner.serving_engine(config.model):
        return [await runner.run_live(replayer, f, convs) for f, convs in chosen]


async def _run_wire(
    args: argparse.Namespace,
    config: Config,
    chosen: Sequence[tuple[ReplayFile, list[Conversation]]],
) -> list[FileResult]:
    from bot.replay import runner
    from bot.replay.wire import WireRunner

    detector = await asyncio.to_thread(_detector, config)
    wire = WireRunner(
        args.url, lambda text, hint: detector.detect(text, hint=hint).language, timeout=args.timeout
    )
    out = []
    for file, convs in chosen:
        cassette = runner.load_cassette(file)
        result = runner.FileResult(file, [])
        for conv in convs:
            replayed = await wire.replay(conv)
            recorded = runner.recorded_outcomes(cassette, conv.id)
            for v in replayed.verdicts:
                v.recorded = (
                    recorded[v.outcome.turn - 1] if v.outcome.turn <= len(recorded) else None
                )
            result.conversations.append(replayed)
        out.append(result)
    return out


def _detector(config: Config) -> Any:
    from bot.detect import LanguageDetector, load_lexicon
    from bot.knowledge import load_knowledge
    from bot.mask import Masker

    knowledge = load_knowledge(config.shop.knowledge_dir)
    return LanguageDetector(
        config.shop.languages,
        config.detect,
        lexicon=load_lexicon(config.shop.knowledge_dir / "lexicon.toml"),
        masker=Masker(knowledge.glossary),
        default=config.shop.default_language,
    )


# -- record -----------------------------------------------------------------------------------


def cmd_record(args: argparse.Namespace, config: Config) -> int:
    sources = [bool(args.conversations), bool(args.from_text), bool(args.update)]
    if sum(sources) != 1:
        raise ReplayError("record: give CONVERSATION_ID..., or --from-text FILE, or --update FILE")
    if not args.update and not args.out:
        raise ReplayError("record: --out FILE is needed")
    if args.out and args.out.suffix not in (".yaml", ".yml"):
        raise ReplayError("record: --out names a .yaml file")
    return asyncio.run(_record(args, config))


async def _record(args: argparse.Namespace, config: Config) -> int:
    from bot.pipeline import Pipeline
    from bot.replay import record, report, runner

    replayer = runner.InProcess(await asyncio.to_thread(Pipeline.build, config, None))
    model = args.engine != "none"
    if args.out:
        record.ensure_new(args.out, force=args.force)
    files: list[FileResult] = []
    async with runner.serving_engine(config.model) if model else _nothing():
        if args.update:
            for path in args.update:
                result, cassette = await runner.record(replayer, load(path), model=model)
                cassette.save(result.file.cassette_path)
                files.append(result)
                _warn_failed_calls(cassette, path)
        else:
            conversations, stored = await _sources(args, config, replayer)
            result, cassette, text = await record.record_new(
                replayer, args.out, conversations,
                stored=stored, model=model, pin_expectations=args.pin,
            )  # fmt: skip
            record.save(args.out, text, cassette)
            files.append(result)
            _warn_failed_calls(cassette, args.out)
            print(f"bot: wrote {args.out} and {result.file.cassette_path}", file=sys.stderr)
    sys.stdout.write(report.text_report(files))
    return 1 if any(r.status == "error" for f in files for r in f.conversations) else 0


async def _sources(
    args: argparse.Namespace, config: Config, replayer: InProcess
) -> tuple[list[Conversation], dict[str, list[TurnOutcome]]]:
    """The conversations to record: from a text file, or exported from the database with
    what each turn showed the customer."""
    from bot.replay import record

    if args.from_text:
        text = args.from_text.read_text(encoding="utf-8")
        conv_id = args.conversation_id or args.from_text.stem
        conv = record.from_text(
            text, conversation_id=conv_id, locale=args.locale, market=args.market
        )
        return [conv], {}
    conversations, stored = [], {}
    async with _store(args, config) as store:
        for cid in args.conversations:
            conv, outcomes = await record.export(store, replayer, cid)
            conversations.append(conv)
            stored[cid] = outcomes
    return conversations, stored


def _warn_failed_calls(cassette: Cassette, path: Path) -> None:
    if cassette.failed_calls:
        print(
            f"bot: warning: {cassette.failed_calls} model call(s) failed while recording {path}; "
            "the cassette replays those failures: re-record when the engine is healthy",
            file=sys.stderr,
        )


@contextlib.asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield


@contextlib.asynccontextmanager
async def _store(args: argparse.Namespace, config: Config) -> AsyncIterator[Any]:
    from bot.store import Store, resolve_url

    url = resolve_url(args.db or config.database.url, config.root)
    async with Store(config.replace(database={"url": url}).database) as store:
        await store.check_schema()
        yield store


# -- diff and list ------------------------------------------------------------------------------


def cmd_diff(args: argparse.Namespace, config: Config) -> int:
    from bot.replay.diff import diff, load_side

    lines = diff(load_side(args.old), load_side(args.new))
    print("\n".join(lines) if lines else "no changes")
    return 1 if lines else 0


def cmd_list(args: argparse.Namespace, config: Config) -> int:
    async def recent() -> list[dict[str, Any]]:
        async with _store(args, config) as store:
            rows: list[dict[str, Any]] = await store.recent_conversations(limit=args.limit)
            return rows

    rows = asyncio.run(recent())
    for row in rows:
        updated = row["updated_at"].strftime("%Y-%m-%d %H:%M") if row["updated_at"] else "?"
        print(
            f"{row['id']}  {updated}  {row['locale'] or '-':8} {row['language']:3} "
            f"{row['status']:7} {row['customer_messages']} message(s)"
        )
    if not rows:
        print("no conversations", file=sys.stderr)
    return 0
