"""``bot eval translate``: the command line of bot/evals/translate.py."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import sys
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bot.config import Config, ModelConfig
from bot.errors import ConfigError
from bot.llm import LLMClient

if TYPE_CHECKING:
    from bot.evals.translate import Systems

Handler = Callable[[argparse.Namespace, Config], int]
DEFAULT_CASES = Path("tests/data/translate")


def register(sub: Any) -> dict[str, Handler]:
    """Add ``translate`` to the ``eval`` subcommands."""
    from bot.evals.translate import SYSTEMS

    p = sub.add_parser("translate", help="chrF++ of agents' replies: raw model vs agent path")
    p.add_argument("--split", choices=["test", "dev"], default="test", help="default: test")
    p.add_argument("--cases", type=Path, default=DEFAULT_CASES, help="dir holding the splits")
    p.add_argument("--lang", action="append", help="only these languages (repeatable)")
    p.add_argument("--subset", type=int, metavar="N", help="the first N cases per language")
    p.add_argument(
        "--systems", default="raw,agent", help=f"comma-separated, of {', '.join(SYSTEMS)}"
    )
    p.add_argument(
        "--agent-model",
        metavar="NAME|URL",
        help="the agent system's model: a registry name (a second embedded engine on "
        "model.port + 1, or console.translate_port) or an OpenAI-compatible URL; "
        '"" the raw model; default: console.translate_model, as the console',
    )
    p.add_argument("--shots", type=int, default=4, help="few-shot examples per sentence")
    p.add_argument("--no-split", action="store_true", help="translate each reply whole")
    p.add_argument(
        "--no-memory", action="store_true", help="no dev-split pairs in the translation memory"
    )
    p.add_argument("--check", action="store_true", help="back-translate (the console warning)")
    p.add_argument("--out", type=Path, help="write translate.json, .md and .png here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_translate)
    return {"translate": cmd_translate}


def cmd_translate(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_translate(args, config))


async def _translate(args: argparse.Namespace, config: Config) -> int:
    from bot.evals import translate
    from bot.models.engines import model_client

    names = [s.strip() for s in args.systems.split(",") if s.strip()]
    unknown = sorted(set(names) - set(translate.SYSTEMS))
    if unknown or not names:
        print(f"--systems: unknown {unknown}; choose from {translate.SYSTEMS}", file=sys.stderr)
        return 2
    cases = translate.load_cases(args.cases / args.split, args.lang)
    if args.subset:
        cases = translate.subset(cases, args.subset)
    memory = [] if args.no_memory else translate.pairs(args.cases / "dev")
    # Leave-one-out on the dev split: a case never finds its own reference in the memory.
    own = {(c.language, c.text) for c in cases}
    memory = [p for p in memory if (p[0], p[1]) not in own]
    try:
        agent_cfg = agent_model(config, args.agent_model)
    except ConfigError as exc:
        print(f"--agent-model: {exc}", file=sys.stderr)
        return 2
    async with AsyncExitStack() as stack:
        llm = await stack.enter_async_context(model_client(config.model))
        agent_llm = None
        if agent_cfg is not None and "agent" in names:
            agent_llm = await stack.enter_async_context(model_client(agent_cfg))
        systems = await asyncio.to_thread(
            build_systems, config, llm, memory,
            shots=args.shots, split=not args.no_split, check=args.check, agent_llm=agent_llm,
        )  # fmt: skip
        outputs = await translate.run(
            {n: systems.get(n) for n in names}, cases, progress=not args.quiet
        )
    table = translate.rows(outputs)
    meta = {
        "split": args.split,
        "cases": len(cases),
        "model": _describe(config.model),
        "agent model": _describe(agent_cfg or config.model),
        "systems": ",".join(names),
        "shots": args.shots,
        "sentence split": not args.no_split,
        "approved pairs": len(memory),
    }
    print(", ".join(f"{k} = {v}" for k, v in meta.items()), file=sys.stderr)
    print(translate.report(table))
    if args.out:
        for path in translate.write(outputs, table, args.out, meta):
            print(f"wrote {path}", file=sys.stderr)
    if "raw" in names and "agent" in names:
        return 0 if translate.passed(table) else 1
    return 0


def agent_model(config: Config, value: str | None) -> ModelConfig | None:
    """The agent system's model settings (``--agent-model``, else the console's
    ``translate_model``); None: the raw model's. Raises ConfigError for a bad value."""
    console = config.console
    if value is not None:
        console = dataclasses.replace(console, translate_model=value)  # validates it
    return console.translation_model(config.model)


def _describe(model: ModelConfig) -> str:
    return model.url or f"{model.name} (embedded, port {model.port}, {model.threads} threads)"


def build_systems(
    config: Config,
    llm: LLMClient,
    approved: Sequence[tuple[str, str, str]],
    *,
    shots: int,
    split: bool,
    check: bool,
    agent_llm: LLMClient | None = None,
) -> Systems:
    """The three systems over one model client (the agent system over ``agent_llm`` when
    given); ``approved`` (language, English, reference) pairs join the translation memory
    as agent-approved ones. Blocking: call in a thread."""
    from bot.agent_translate import AgentTranslator
    from bot.detect import LanguageDetector, load_lexicon
    from bot.evals.translate import Systems
    from bot.knowledge import load_knowledge
    from bot.localize import Localizer, locality_for
    from bot.mask import Masker
    from bot.translate import TranslationMemory, Translator

    knowledge = load_knowledge(config.shop.knowledge_dir)
    masker = Masker(knowledge.glossary)
    detector = LanguageDetector(
        config.shop.languages,
        config.detect,
        lexicon=load_lexicon(config.shop.knowledge_dir / "lexicon.toml"),
        masker=masker,
        default=config.shop.default_language,
    )

    def language_of(text: str) -> str | None:
        return detector.detect(text).language

    memory = TranslationMemory.from_knowledge(knowledge)
    for language, text, translation in approved:
        memory.add("en", language, text, translation)
    translator = Translator(
        knowledge, masker, memory, llm,
        min_similarity=config.translate.memory_min_similarity,
        max_tokens=config.translate.max_tokens, language_of=language_of,
    )  # fmt: skip
    localizer = Localizer(knowledge)

    def renderer(language: str) -> Callable[[str, str], str]:
        where = locality_for(knowledge, language)

        def render(kind: str, span: str) -> str:
            return localizer.reformat_amount(span, where) if kind == "price" else span

        return render

    agent_translator = translator
    if agent_llm is not None:  # same memory and masker, the other model
        agent_translator = Translator(
            knowledge, masker, memory, agent_llm,
            min_similarity=config.translate.memory_min_similarity,
            max_tokens=config.translate.max_tokens, language_of=language_of,
        )  # fmt: skip
    agent = AgentTranslator(agent_translator, shots=shots, split=split, language_of=language_of)
    render = {lang: renderer(lang) for lang in config.shop.languages}
    return Systems(llm, translator, agent, render, check=check)
