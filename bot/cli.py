"""The ``bot`` command: tools in their own right and the way tests drive the product.

    bot index                       build the FAQ index (progress bar)
    bot detect [TEXT]               one JSON line per input line: language + confidence
    bot translate --to LL [TEXT]    one JSON line per input line: the translation
    bot ask [--lang LL] [--market MM] [TEXT]
                                    one JSON line per input line: the full turn with its trace
    bot model list|pull|serve       model acquisition and engines (docs/models.md)
    bot serve                       the chat server (widget, console, metrics)
    bot db upgrade|current          database migrations
    bot finetune data|train|export|eval
                                    the shop's LoRA adapter (docs/finetune.md)

Without TEXT, the commands read one message per line on stdin. Errors go to stderr, with a
non-zero exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

from bot.config import GENERATE_MODES, Config, load_config
from bot.errors import BotError
from bot.logcontent import keep_content_out_of_logs

log = logging.getLogger("bot")
Handler = Callable[[argparse.Namespace, Config], int]


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose
        else logging.INFO
        if args.command == "serve"
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        config = load_config(args.config)
        keep_content_out_of_logs(config.privacy.log_content)  # -v: no message text, no tokens
        handler: Handler = args.func
        return handler(args, config)
    except BotError as exc:
        print(f"bot: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bot", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--config", type=Path, default=None, help="config file (default: config.toml)"
    )
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("index", help="build the FAQ index from knowledge/ (if it changed)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--force", action="store_true", help="rebuild even if it is current")
    p.set_defaults(func=cmd_index)

    p = sub.add_parser("detect", help="detect the language of each message")
    p.add_argument("text", nargs="*")
    p.add_argument("--current", help="the conversation's current language")
    p.add_argument("--hint", help="locale hint, e.g. es-ES")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("translate", help="translate each message")
    p.add_argument("text", nargs="*")
    p.add_argument("--to", dest="target", required=True, help="target language (e.g. en, de)")
    p.add_argument("--from", dest="source", help="source language (default: detected)")
    p.add_argument("--market", help="market for amount formatting (EU, US, ...)")
    _engine_flags(p)
    p.set_defaults(func=cmd_translate)

    p = sub.add_parser("ask", help="answer each message as the bot would")
    p.add_argument("text", nargs="*")
    p.add_argument("--lang", help="language hint: locale of the page (es, es-MX)")
    p.add_argument("--market", help="market (EU, UK, US, JP, KR, CN, BR, GULF, INTL)")
    p.add_argument(
        "--conversation", action="store_true", help="treat stdin lines as one conversation"
    )
    p.add_argument("--generate", choices=GENERATE_MODES, help="override generate.mode")
    _engine_flags(p)
    p.set_defaults(func=cmd_ask)

    from bot.evals import cli as eval_cli
    from bot.models import cli as model_cli
    from bot.replay import cli as replay_cli
    from bot.server import cli as server_cli
    from bot.server import console_cli
    from bot.store import cli as store_cli

    model_cli.register(sub)
    server_cli.register(sub)
    eval_cli.register(sub)
    store_cli.register(sub)
    replay_cli.register(sub)
    console_cli.register(sub)
    from bot.finetune import cli as finetune_cli

    finetune_cli.register(sub)
    return parser


def _engine_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--engine",
        choices=["auto", "none"],
        default="auto",
        help="auto: use model.url, a running engine, or start the embedded one; none: no model",
    )


def _inputs(texts: list[str]) -> Iterator[str]:
    if texts:
        yield " ".join(texts)
        return
    for line in sys.stdin:
        line = line.rstrip("\n")
        if line.strip():
            yield line


def _emit(obj: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


# -- commands -----------------------------------------------------------------------------


def cmd_index(args: argparse.Namespace, config: Config) -> int:
    from bot.knowledge import load_knowledge
    from bot.retrieve import MISSES_FILE, Embedder, build_index, index_is_current

    knowledge = load_knowledge(config.shop.knowledge_dir)
    if not args.force and index_is_current(config.retrieve.index_dir, knowledge):
        print(
            f"the FAQ index in {config.retrieve.index_dir} is current (knowledge and embedder "
            "unchanged); --force rebuilds it",
            file=sys.stderr,
        )
        return 0
    info = build_index(
        knowledge,
        config.retrieve.index_dir,
        Embedder(config.model.cache_dir),
        progress=not args.quiet,
    )
    print(
        f"indexed {info.entries} FAQ entries as {info.vectors} vectors in {info.seconds:.1f} s "
        f"-> {config.retrieve.index_dir}; {info.misses} question variants rank under another "
        f"entry when left out of training (out-of-fold top-1 {info.heldout_top1:.1%}): "
        f"{config.retrieve.index_dir / MISSES_FILE}",
        file=sys.stderr,
    )
    return 0


def cmd_detect(args: argparse.Namespace, config: Config) -> int:
    from bot.detect import LanguageDetector, load_lexicon
    from bot.knowledge import load_knowledge
    from bot.localize import language_of
    from bot.mask import Masker

    knowledge = load_knowledge(config.shop.knowledge_dir)
    detector = LanguageDetector(
        config.shop.languages,
        config.detect,
        lexicon=load_lexicon(config.shop.knowledge_dir / "lexicon.toml"),
        masker=Masker(knowledge.glossary),
        default=config.shop.default_language,
    )
    hint = language_of(args.hint)
    current = args.current
    for text in _inputs(args.text):
        d = detector.detect(text, current=current, hint=hint)
        _emit(
            {
                "text": text,
                "language": d.language,
                "confidence": round(d.confidence, 3),
                "method": d.method,
            }
        )
    return 0


def cmd_translate(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_translate(args, config))


async def _translate(args: argparse.Namespace, config: Config) -> int:
    from bot.pipeline import Pipeline
    from bot.service import BotService

    if args.target not in config.shop.languages:
        raise BotError(f"unsupported target language {args.target!r}")
    async with _llm(args, config) as llm:
        bot: BotService = await asyncio.to_thread(Pipeline.build, config, llm)
        status = 0
        for text in _inputs(args.text):
            t = await bot.translate_for_customer(
                text, args.source or None, args.target, market=args.market
            )
            if t.delivered is None:
                print(f"bot: error: {text[:60]!r}: {t.error}", file=sys.stderr)
                status = 1
                continue
            _emit(
                {
                    "text": text,
                    "source": t.source,
                    "target": args.target,
                    "translation": t.delivered,
                    "engine": t.engine,
                }
            )
        return status


def cmd_ask(args: argparse.Namespace, config: Config) -> int:
    if args.generate:
        config = config.replace(generate={"mode": args.generate})
    return asyncio.run(_ask(args, config))


async def _ask(args: argparse.Namespace, config: Config) -> int:
    from bot.handoff import Asked
    from bot.pipeline import Pipeline, TurnContext
    from bot.service import BotService

    async with _llm(args, config) as llm:
        pipeline: BotService = await asyncio.to_thread(Pipeline.build, config, llm)
        context = TurnContext(locale_hint=args.lang, market=args.market)
        for text in _inputs(args.text):
            if not args.conversation:
                context = TurnContext(locale_hint=args.lang, market=args.market)
            result = await pipeline.answer(text, context)
            _emit(result.as_json())
            context.language = result.language
            context.no_answer_streak = 0 if result.answered else context.no_answer_streak + 1
            context.history += [
                ("customer", result.pivot or text),
                ("bot", result.reply_pivot or result.reply),
            ]
            context.offer_pending = pipeline.offers_human(result.reply)
            context.earlier.append(Asked(text, result.faq_ids[0] if result.faq_ids else None))
    return 0


@contextlib.asynccontextmanager
async def _llm(args: argparse.Namespace, config: Config) -> AsyncIterator[Any]:
    """The model client for a CLI command: configured URL, running engine, or a fresh one."""
    if args.engine == "none":
        yield None
        return
    from bot.models.engines import model_client

    async with model_client(config.model) as client:
        yield client


if __name__ == "__main__":
    raise SystemExit(main())
