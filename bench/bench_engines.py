"""Both embedded engines side by side: start-up, first token, decode speed, 4 streams, memory.

    python bench/bench_engines.py [--model qwen2.5-0.5b] [--engines llama.cpp,vllm]
                                  [--tokens 64] [--repeat 3] [--vllm-python PATH]

Engines run one after the other, never together. vLLM is skipped when its venv is absent.
The machine's load average is printed: other work on the same cores skews every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil  # type: ignore[import-untyped]

from bot.config import load_config
from bot.models.engines import DEFAULT_VLLM_PYTHON, engine_from_config
from bot.models.supervisor import EmbeddedEngine

# Each request names a different order, so no engine answers from a cached prompt.
PROMPT = (
    "Order #{n}: write a long, detailed story about how this parcel got lost on its way "
    "from Hamburg to Lisbon, and how customer service found it."
)
_counter = iter(range(48000, 10**6))


@dataclass
class Stream:
    ttft: float
    tokens: int
    decode_tps: float  # tokens after the first, per second after the first


@dataclass
class Result:
    engine: str
    start_s: float
    single: list[Stream]
    four: list[Stream]
    four_wall: float
    rss_gb: float
    load: float  # 1-minute load average at the end: other work skews the figures


async def stream_once(client: httpx.AsyncClient, model: str, max_tokens: int) -> Stream:
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT.format(n=next(_counter))}],
        "stream": True,
        "temperature": 0,
        "max_tokens": max_tokens,
    }
    began = time.monotonic()
    first = last = 0.0
    tokens = 0
    async with client.stream("POST", "/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
            if not delta:
                continue
            last = time.monotonic()
            first = first or last
            tokens += 1  # both servers send one token per chunk
    decode = (tokens - 1) / (last - first) if tokens > 1 and last > first else 0.0
    return Stream(ttft=first - began, tokens=tokens, decode_tps=decode)


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants (vLLM runs several)."""
    try:
        root = psutil.Process(pid)
        procs = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += proc.memory_info().rss
    return total


async def bench(engine_name: str, engine: EmbeddedEngine, args: argparse.Namespace) -> Result:
    began = time.monotonic()
    async with engine:
        start_s = time.monotonic() - began
        assert engine.pid is not None
        peak = tree_rss(engine.pid)
        async with httpx.AsyncClient(
            base_url=engine.base_url, timeout=600, trust_env=False
        ) as client:
            await stream_once(client, "meridian", 8)  # warm-up
            single = []
            for _ in range(args.repeat):
                single.append(await stream_once(client, "meridian", args.tokens))
                peak = max(peak, tree_rss(engine.pid))
            wall = time.monotonic()
            four = await asyncio.gather(
                *(stream_once(client, "meridian", args.tokens) for _ in range(4))
            )
            wall = time.monotonic() - wall
            peak = max(peak, tree_rss(engine.pid))
    load = os.getloadavg()[0]
    return Result(engine_name, start_s, single, list(four), wall, peak / 2**30, load)


def print_table(results: list[Result], tokens: int) -> None:
    head = (
        f"{'engine':10} {'start s':>8} {'TTFT s':>7} {'tok/s 1':>8} "
        f"{'TTFT s 4':>9} {'tok/s/strm 4':>12} {'tok/s sum 4':>11} {'RSS GB':>7}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        med = statistics.median
        total4 = sum(s.tokens for s in r.four)
        print(
            f"{r.engine:10} {r.start_s:8.1f} {med(s.ttft for s in r.single):7.2f} "
            f"{med(s.decode_tps for s in r.single):8.1f} "
            f"{statistics.mean(s.ttft for s in r.four):9.2f} "
            f"{statistics.mean(s.decode_tps for s in r.four):12.1f} "
            f"{total4 / r.four_wall:11.1f} {r.rss_gb:7.2f} {r.load:5.1f}"
        )
    print(
        f"\n{tokens} tokens per stream (greedy); 'tok/s 1': decode speed of one stream after "
        "its first token (median);\n'4': four streams at once: mean time to first token, "
        "mean per-stream decode rate, total tokens / wall time.\nstart: process start until "
        "GET /v1/models answers. RSS: engine process tree, peak of samples. load: 1-min load\n"
        "average after the run; above the core count, other work was competing for the CPUs."
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="default: model.name from config.toml")
    parser.add_argument("--engines", default="llama.cpp,vllm")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--port", type=int, default=8299)
    parser.add_argument("--threads", type=int, help="engine threads (default: model.threads)")
    parser.add_argument("--vllm-python", default=DEFAULT_VLLM_PYTHON)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")

    base = load_config().model
    results = []
    print(f"load average before: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs")
    for name in args.engines.split(","):
        if name == "vllm" and not Path(args.vllm_python).exists():
            print(f"vllm: skipped, no interpreter at {args.vllm_python}", file=sys.stderr)
            continue
        cfg = dataclasses.replace(
            base,
            url="",
            engine=name,
            name=args.model or base.name,
            port=args.port,
            adapter="",
            threads=args.threads or base.threads,
        )
        python = args.vllm_python if name == "vllm" else None
        engine = engine_from_config(cfg, python=python, progress=True)
        print(f"{name}: starting ...", file=sys.stderr, flush=True)
        results.append(asyncio.run(bench(name, engine, args)))
        print(f"load average now: {os.getloadavg()[0]:.2f}", file=sys.stderr)
    print()
    print(f"model: {args.model or base.name}, threads: {args.threads or base.threads}")
    print_table(results, args.tokens)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
