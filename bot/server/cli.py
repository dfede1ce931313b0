"""``bot serve`` and ``bot db``: registered on the main parser by ``bot.cli``.

bot serve [--host H] [--port N] [--db URL] [--no-engine]
bot db upgrade [--db URL] [--revision REV]
bot db current [--db URL]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import resource
import signal
import sys
from collections.abc import Callable
from typing import Any

from bot.config import Config

log = logging.getLogger("bot.server")


def register(sub: Any) -> None:
    """Add the server's commands to the ``bot`` parser."""
    p = sub.add_parser("serve", help="run the chat server (widget, chat socket, metrics)")
    p.add_argument("--host", help="address to listen on (default: server.host, 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default: server.port, 8080; 0: any free)")
    _db_flag(p)
    p.add_argument(
        "--no-engine",
        action="store_true",
        help="do not start the embedded model engine (curated answers, or model.url if set)",
    )
    p.set_defaults(func=cmd_serve)

    db = sub.add_parser("db", help="database migrations")
    db_sub = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    p = db_sub.add_parser("upgrade", help="apply the migrations (creates the database)")
    _db_flag(p)
    p.add_argument("--revision", default="head", help="target revision (default: head)")
    p.set_defaults(func=cmd_db_upgrade)
    p = db_sub.add_parser("current", help="show the database's schema revision")
    _db_flag(p)
    p.set_defaults(func=cmd_db_current)


def _db_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--db", metavar="URL", help="database URL (default: database.url)")


def _with_overrides(args: argparse.Namespace, config: Config) -> Config:
    from bot.store import resolve_url

    url = resolve_url(getattr(args, "db", None) or config.database.url, config.root)
    server: dict[str, Any] = {}
    if getattr(args, "host", None):
        server["host"] = args.host
    if getattr(args, "port", None) is not None:
        server["port"] = args.port
    return config.replace(database={"url": url}, server=server)


# -- serve ---------------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace, config: Config) -> int:
    if not args.verbose:  # INFO from the server itself, not every socket and library
        for name in ("websockets", "alembic", "faiss", "httpx"):
            logging.getLogger(name).setLevel(logging.WARNING)
    raise_open_files_limit()
    one_blas_thread()
    with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
        return runner.run(serve(_with_overrides(args, config), engine=not args.no_engine))


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (Linux and macOS): its sockets, timers
    and thread hand-offs cost a turn less CPU than asyncio's own loop (docs/server.md);
    None (asyncio's) elsewhere."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def one_blas_thread() -> None:
    """A turn's vector products (one query against every indexed variant) are small and
    many turns run at once: a second BLAS thread spinning on each cost more CPU than it
    saved (search 10.2 -> 6.5 ms of CPU a turn; docs/server.md)."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1, user_api="blas")


def raise_open_files_limit() -> int:
    """One socket is one file: let the process use as many as the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        target = 1 << 20 if hard == resource.RLIM_INFINITY else hard
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft
        return target
    return soft


async def serve(config: Config, *, engine: bool = True) -> int:
    """Serve until SIGTERM or SIGINT, then shut down cleanly; 0 when it did."""
    from bot.server.app import App

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        async with App(config, engine=engine) as app:
            # What start-up loaded (knowledge, index, detectors: ~160,000 objects) lives as
            # long as the process: out of the collector's full passes, which took ~100 ms
            # each and stalled every socket in a burst of turns.
            gc.collect()
            gc.freeze()
            print(f"bot: serving {app.url}/ (chat socket {app.chat_url})", file=sys.stderr)
            await stop.wait()
            log.info("signal received: shutting down")
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
    return 0


# -- db ------------------------------------------------------------------------------------


def cmd_db_upgrade(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_db_upgrade(_with_overrides(args, config), args.revision))


async def _db_upgrade(config: Config, revision: str) -> int:
    from bot.store import Store
    from bot.store.schema import head_revision

    async with Store(config.database) as store:
        before = await store.current_revision()
        await store.upgrade(revision)
        after = await store.current_revision()
    state = "head" if after == head_revision() else "not head"
    print(f"bot: database at revision {after} ({state}; was {before or 'empty'})", file=sys.stderr)
    return 0


def cmd_db_current(args: argparse.Namespace, config: Config) -> int:
    return asyncio.run(_db_current(_with_overrides(args, config)))


async def _db_current(config: Config) -> int:
    from bot.store import Store
    from bot.store.schema import head_revision

    async with Store(config.database) as store:
        current = await store.current_revision()
    head = head_revision()
    if current == head:
        print(f"{current} (head)")
        return 0
    print(f"{current or '(empty)'} (out of date: head is {head}; run `bot db upgrade`)")
    return 1
