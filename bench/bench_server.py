"""Chat server capacity on this machine: one `bot serve` process, curated path, no model.

    .venv/bin/python bench/bench_server.py [--idle 2000] [--customers 200] [--turns 5]

1. Idle sockets: ``--idle`` customers connect and finish hello/welcome, then stay idle;
   the server's extra resident memory (VmRSS from /proc/PID/status) per socket.
2. Turns: ``--customers`` customers at once, each asking ``--turns`` questions one after
   the other, with ``--think`` seconds (mean) of reading and typing between turns (a
   realistic chat, default 10 s) and without (a burst: the saturation point); each
   question is a curated FAQ question in the customer's language (a
   translation-memory hit, answered with the curated localized text: no model call).
   Latency is from sending the message to receiving its final ``reply``. A customer whose
   conversation the pipeline hands to a human stops there (the bot no longer answers).
   A curated question is an indexed variant, whose vector the retriever already has: no
   embedding-model call. With ``--typed`` each question is sent lower-cased and without
   its final punctuation ("how do i return an item"), as customers type: no longer a
   variant, so every distinct one goes through the embedding model (concurrent turns'
   texts batched into one call).

The server runs as a subprocess (``python -m bot.cli serve --no-engine``) on a fresh SQLite
database in a temporary folder; this process and the server both raise their open-files
limit. Prints a table; exit status 1 if a turn got an error or the server did not exit 0.
("answered_other_faq" counts curated questions the retriever mapped to another entry.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from websockets.asyncio.client import ClientConnection, connect

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.knowledge import load_knowledge  # noqa: E402

OUT = ROOT / "bench" / "out"
LANGUAGES = ("es", "de", "fr", "it", "pt", "nl", "ja", "zh", "ko", "ru", "ar", "en")


def raise_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", text, re.M)
    assert match, text
    return int(match.group(1))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def typed(text: str) -> str:
    """A curated question as a customer types it: lower case, no final punctuation."""
    return text.rstrip(" ?？!.。؟").lower()


def questions() -> list[tuple[str, str, str]]:
    """(language, FAQ id, curated question) for every localized FAQ entry."""
    knowledge = load_knowledge(ROOT / "knowledge")
    out = []
    for lang in LANGUAGES:
        if lang == "en":
            out += [("en", fid, e.questions[0]) for fid, e in knowledge.entries.items()]
        elif lang in knowledge.i18n:
            loc = knowledge.i18n[lang]
            out += [(lang, fid, entry.questions[0]) for fid, entry in loc.faq.items()]
    return out


def start_server(db: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BOT_")}
    # Every simulated customer comes from 127.0.0.1: no per-address limits here.
    env |= {"BOT_SERVER__MAX_CONNECTIONS_PER_IP": "0", "BOT_SERVER__IP_RATE_LIMIT_MESSAGES": "0"}
    cli = [sys.executable, "-m", "bot.cli"]
    subprocess.run([*cli, "db", "upgrade", "--db", db], cwd=ROOT, env=env, check=True)
    with log.open("wb") as out:
        return subprocess.Popen(
            [*cli, "serve", "--no-engine", "--port", str(port), "--db", db],
            cwd=ROOT,
            env=env,
            stderr=out,
        )


async def wait_ready(proc: subprocess.Popen[bytes], log: Path) -> str:
    """The server's base URL, once it says where it listens."""
    for _ in range(600):
        text = await asyncio.to_thread(log.read_text, errors="replace")
        match = re.search(r"serving (http://\S+)/ ", text)
        if match:
            return match.group(1)
        if proc.poll() is not None:
            break
        await asyncio.sleep(0.2)
    raise SystemExit(f"the server did not start; see {log}")


async def hello(url: str, locale: str) -> tuple[ClientConnection, dict[str, Any]]:
    ws = await connect(url, open_timeout=60, max_queue=64)
    await ws.send(json.dumps({"type": "hello", "v": 1, "locale": locale}))
    welcome = json.loads(await ws.recv())
    assert welcome["type"] == "welcome", welcome
    return ws, welcome


async def idle_sockets(url: str, pid: int, count: int) -> dict[str, float]:
    await asyncio.sleep(1)
    before = rss_kib(pid)
    started = time.perf_counter()
    sockets: list[ClientConnection] = []
    for start in range(0, count, 200):  # batches: the listen backlog is 100
        batch = await asyncio.gather(
            *(
                hello(url, LANGUAGES[i % len(LANGUAGES)])
                for i in range(start, min(count, start + 200))
            )
        )
        sockets += [ws for ws, _ in batch]
    seconds = time.perf_counter() - started
    await asyncio.sleep(2)  # let the server settle
    after = rss_kib(pid)
    for ws in sockets:
        await ws.close()
    return {
        "sockets": count,
        "rss_before_mib": before / 1024,
        "rss_after_mib": after / 1024,
        "extra_mib": (after - before) / 1024,
        "per_socket_kib": (after - before) / count,
        "connect_hello_per_s": count / seconds,
    }


async def customer(
    url: str,
    lang: str,
    asks: list[tuple[str, str, str]],
    latencies: list[float],
    outcomes: dict[str, list[str]],
    think: float = 0.0,
    rng: random.Random | None = None,
) -> None:
    """One customer asking questions one after the other, until done or handed over.

    ``think``: mean seconds a customer reads and types between turns (exponentially
    distributed, and before the first turn too, so customers do not all start at once).
    """
    ws, _ = await hello(url, lang)
    handed_over = False
    rng = rng or random.Random()
    try:
        for n, (_, faq_id, text) in enumerate(asks):
            if think:
                await asyncio.sleep(rng.expovariate(1 / think))
            mid = f"q{n}-{random.getrandbits(48):x}"
            sent = time.perf_counter()
            await ws.send(json.dumps({"type": "message", "id": mid, "text": text}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 120))
                if frame["type"] == "handoff":  # a human owns it now: the bot stays silent
                    handed_over = True
                    # The handoff event follows the reply of the turn that caused it.
                    asked = asks[n - 1][2] if n else text
                    outcomes["handoff"].append(f"{frame.get('reason')}: after {asked!r}")
                elif frame["type"] == "error":
                    outcomes["error"].append(f"{frame['code']}: {text}")
                    break
                elif frame["type"] == "ack" and frame["id"] == mid and handed_over:
                    return
                elif frame["type"] == "reply" and frame.get("reply_to") == mid:
                    latencies.append(time.perf_counter() - sent)
                    if faq_id not in frame["faq_ids"]:
                        outcomes["other_faq"].append(f"{text!r} -> {frame['faq_ids']} ({faq_id})")
                    break
    finally:
        await ws.close()


async def turns(
    url: str, pid: int, customers: int, per_customer: int, think: float = 0.0, *, as_typed: bool
) -> dict[str, float]:
    pool = [(lang, faq, typed(q) if as_typed else q) for lang, faq, q in questions()]
    by_lang: dict[str, list[tuple[str, str, str]]] = {}
    for item in pool:
        by_lang.setdefault(item[0], []).append(item)
    for lang, items in by_lang.items():  # first use of each language loads its detectors
        await customer(url, lang, items[:1], [], {"handoff": [], "error": [], "other_faq": []})
    latencies: list[float] = []
    outcomes: dict[str, list[str]] = {"handoff": [], "error": [], "other_faq": []}
    rng = random.Random(7)
    plans = []
    for i in range(customers):
        lang = LANGUAGES[i % len(LANGUAGES)]
        plans.append((lang, rng.sample(by_lang[lang], per_customer)))
    cpu_before, client_before = cpu_seconds(pid), time.process_time()
    started = time.perf_counter()
    await asyncio.gather(
        *(
            customer(url, lang, asks, latencies, outcomes, think, random.Random(rng.random()))
            for lang, asks in plans
        )
    )
    wall = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before
    client_cpu = time.process_time() - client_before
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(len(latencies) - 1, int(p / 100 * len(latencies)))] * 1000

    for kind, lines in outcomes.items():
        for line in lines[:5]:
            print(f"  {kind}: {line}", file=sys.stderr)
    return {
        "customers": customers,
        "think_s": think,
        "turns_answered": len(latencies),
        "handed_over": len(outcomes["handoff"]),
        "errors": len(outcomes["error"]),
        "answered_other_faq": len(outcomes["other_faq"]),
        "p50_ms": pct(50),
        "p95_ms": pct(95),
        "p99_ms": pct(99),
        "mean_ms": statistics.fmean(latencies) * 1000,
        "max_ms": latencies[-1] * 1000,
        "turns_per_s": len(latencies) / wall,
        "server_cpu_ms_per_turn": cpu * 1000 / max(len(latencies), 1),
        # The simulated customers share the machine's cores with the server.
        "client_cpu_ms_per_turn": client_cpu * 1000 / max(len(latencies), 1),
        "wall_s": wall,
    }


def table(title: str, rows: dict[str, float]) -> None:
    print(f"\n{title}")
    print("-" * 44)
    for key, value in rows.items():
        shown = f"{value:,.0f}" if isinstance(value, int) else f"{value:,.2f}"
        print(f"{key:<26}{shown:>18}")


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--idle", type=int, default=2000)
    parser.add_argument("--customers", type=int, default=200)
    parser.add_argument("--turns", type=int, default=5)
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument(
        "--think",
        type=float,
        action="append",
        help="mean seconds between a customer's turns (repeatable; default: 10 and 0 = burst)",
    )
    parser.add_argument(
        "--typed", action="store_true", help="questions lower-cased, no final punctuation"
    )
    args = parser.parse_args()
    nofile = raise_nofile()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-server-") as tmp:
        db = f"sqlite+aiosqlite:///{tmp}/bench.db"
        log = OUT / "bench-server.log"
        proc = start_server(db, args.port, log)
        try:
            base = await wait_ready(proc, log)
            health = await asyncio.to_thread(get_json, base + "/healthz")
            url = base.replace("http://", "ws://") + "/ws/chat"
            print(f"server pid {proc.pid} at {base}; open files limit {nofile}; {health}")
            idle = await idle_sockets(url, proc.pid, args.idle)
            table(f"{args.idle} idle customer sockets (hello/welcome done)", idle)
            busy = {"errors": 0.0}
            for think in args.think or [10.0, 0.0]:
                result = await turns(
                    url, proc.pid, args.customers, args.turns, think, as_typed=args.typed
                )
                busy["errors"] += result["errors"]
                label = f"thinking {think:g} s between turns" if think else "all at once (burst)"
                asked = "typed questions" if args.typed else "curated questions"
                table(
                    f"{args.customers} concurrent customers x {args.turns} turns, {label} "
                    f"({asked}, curated path)",
                    result,
                )
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=60)
        print(f"\nserver exit status after SIGTERM: {code}")
    return 0 if code == 0 and not busy["errors"] else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
