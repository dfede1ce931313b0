"""Memory over many turns: the bot process and its model engine after 500 turns.

    python bench/bench_soak.py [--turns 500] [--mode auto]

Runs the held-out questions of every language in a loop through the real pipeline and the
configured engine (started here when none answers), printing the resident memory of this
process and of the engine every 100 turns. Growth after the first 100 turns (warm caches)
is what a leak would show.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.cli import _llm  # noqa: E402
from bot.config import GENERATE_MODES, load_config  # noqa: E402
from bot.pipeline import Pipeline, TurnContext  # noqa: E402

LANGS = ("en", "zh", "es", "fr", "de", "ja", "ko", "pt", "it", "ru", "ar", "nl")


def rss_mib(pid: int | str = "self") -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def engine_pid(port: int) -> int | None:
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        engine = "llama_cpp.server" in cmd or "vllm.entrypoints" in cmd
        if engine and str(port) in cmd:
            return int(proc.name)
    return None


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--turns", type=int, default=500)
    parser.add_argument("--mode", default="auto", choices=GENERATE_MODES)
    args = parser.parse_args()
    config = load_config().replace(generate={"mode": args.mode})
    cases = []
    for lang in LANGS:
        data = tomllib.loads((ROOT / "tests/data/questions" / f"{lang}.toml").read_text("utf-8"))
        cases += [(lang, c["text"]) for c in data["case"]]
    async with _llm(argparse.Namespace(engine="auto"), config) as llm:
        pipeline = await asyncio.to_thread(Pipeline.build, config, llm)
        pid = engine_pid(config.model.port)
        print(f"engine pid {pid}; {args.turns} turns, generate.mode={args.mode}")
        print(f"{'turns':>6} {'bot MiB':>9} {'engine MiB':>11} {'s/turn':>7} sources")
        started, sources = time.perf_counter(), {}
        baseline = None
        for n in range(1, args.turns + 1):
            lang, text = cases[(n * 7) % len(cases)]
            result = await pipeline.answer(text, TurnContext(locale_hint=lang))
            sources[result.source] = sources.get(result.source, 0) + 1
            if n % 100 == 0:
                bot, engine = rss_mib(), rss_mib(pid) if pid else 0.0
                baseline = baseline or (bot, engine)
                rate = (time.perf_counter() - started) / n
                print(f"{n:>6} {bot:>9.1f} {engine:>11.1f} {rate:>7.2f} {sources}")
        if baseline:
            bot, engine = rss_mib(), rss_mib(pid) if pid else 0.0
            print(
                f"growth after turn 100: bot {bot - baseline[0]:+.1f} MiB, "
                f"engine {engine - baseline[1]:+.1f} MiB"
            )


if __name__ == "__main__":
    asyncio.run(main())
