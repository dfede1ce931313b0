"""The store's share of a bot turn, on SQLite: its steps in the store's own thread against
the same steps through aiosqlite, in one process on the same database file.

    .venv/bin/python bench/bench_store.py [--rooms 50] [--turns 8] [--repeat 3]

A turn's store calls, as bot/server/turns.py and bot/server/chat.py make them: accept the
customer message (and its ``ack``), read the turn's context (``turn_records``), a seq for
the ``typing`` event, record the reply (with a trace the size of a curated turn's). ``--rooms``
conversations at once, ``--turns`` each, one after the other; the process's CPU time per
turn and turns per second, best of ``--repeat`` runs, for both paths alternately.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.config import DatabaseConfig  # noqa: E402
from bot.store import Reply, Store  # noqa: E402

REPLY = Reply(
    text="Entra en tu cuenta, abre Pedidos y elige «Devolver un artículo».",
    language="es",
    faq_ids=["returns.start"],
    source="curated",
    answered=True,
    pivot="How do I return an item?",
    reply_pivot="Sign in, open Orders and choose Return an item.",
    trace=[{"stage": f"stage{i}", "ms": 1.5, "output": {"language": "es"}} for i in range(8)],
    sources=[{"id": "returns.start", "title": "Devolver un artículo"}],
)


async def run(url: str, *, own_thread: bool, rooms: int, turns: int) -> tuple[float, float]:
    """(ms of CPU per turn, turns per second) of one run on a fresh set of conversations."""
    async with Store(DatabaseConfig(url=url), own_thread=own_thread) as store:
        convs = [(await store.create_conversation(language="es"))[0] for _ in range(rooms)]

        async def customer(cid: str) -> None:
            for i in range(turns):
                accepted = await store.accept_message(cid, f"m{i}", "¿Cómo devuelvo algo?")
                await store.turn_records(cid, before_seq=accepted.message.seq or 0)
                await store.next_seq(cid)
                await store.record_reply(cid, accepted.message.id, f"m{i}", REPLY)

        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.gather(*(customer(c.id) for c in convs))
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = rooms * turns
    return 1000 * cpu / n, n / wall


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rooms", type=int, default=50)
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{tmp}/bench.db"
        async with Store(DatabaseConfig(url=url)) as store:
            await store.upgrade()
        results: dict[str, list[tuple[float, float]]] = {"aiosqlite": [], "own thread": []}
        await run(url, own_thread=True, rooms=args.rooms, turns=2)  # warm-up: imports, caches
        await run(url, own_thread=False, rooms=args.rooms, turns=2)
        for _ in range(args.repeat):
            for name, own in (("aiosqlite", False), ("own thread", True)):
                results[name].append(
                    await run(url, own_thread=own, rooms=args.rooms, turns=args.turns)
                )
    print(f"{args.rooms} conversations x {args.turns} turns, best of {args.repeat}")
    print(f"{'path':<12} {'CPU ms/turn':>12} {'turns/s':>9}")
    best = {name: (min(r[0] for r in rs), max(r[1] for r in rs)) for name, rs in results.items()}
    for name, (cpu, rate) in best.items():
        print(f"{name:<12} {cpu:>12.2f} {rate:>9.0f}")
    base, own = best["aiosqlite"], best["own thread"]
    print(f"ratio        {base[0] / own[0]:>11.1f}x {own[1] / base[1]:>8.1f}x")


if __name__ == "__main__":
    asyncio.run(main())
