"""Creating the async engine: SQLite (WAL) by default, PostgreSQL through asyncpg."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy import create_engine as sa_create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from bot.errors import ConfigError

SQLITE_BUSY_TIMEOUT_MS = 5000
SUPPORTED_DRIVERS = ("sqlite+aiosqlite", "postgresql+asyncpg")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def resolve_url(url: str, root: Path) -> str:
    """Make a relative SQLite path relative to ``root`` (the config file's folder)."""
    parsed = make_url(url)
    if parsed.drivername not in SUPPORTED_DRIVERS:
        raise ConfigError(
            f"database.url: use one of {', '.join(SUPPORTED_DRIVERS)}, not {parsed.drivername!r}"
        )
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return url
    path = Path(database)
    if not path.is_absolute():
        path = root / path
    return parsed.set(database=str(path)).render_as_string(hide_password=False)


def create_engine(
    url: str, *, echo: bool = False, synchronous: str = "NORMAL", log_content: bool = False
) -> AsyncEngine:
    """An engine with the per-connection settings each backend needs. Its errors and echo
    never show bound parameters (customer text) unless ``log_content`` (bot/logcontent.py)."""
    hide = not log_content
    if not is_sqlite(url):
        return create_async_engine(url, echo=echo, pool_pre_ping=True, hide_parameters=hide)
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_async_engine(url, echo=echo, hide_parameters=hide)
    event.listen(engine.sync_engine, "connect", _pragmas(synchronous))
    return engine


def create_sqlite_thread_engine(
    url: str, *, synchronous: str = "NORMAL", log_content: bool = False
) -> Engine:
    """The same SQLite database through the plain ``sqlite3`` driver, for statements run
    in the store's own thread (bot/store/store.py ``Store._step``)."""
    plain = make_url(url).set(drivername="sqlite+pysqlite")
    engine = sa_create_engine(plain, hide_parameters=not log_content)
    event.listen(engine, "connect", _pragmas(synchronous))
    return engine


def _pragmas(synchronous: str) -> Callable[[Any, Any], None]:
    def pragmas(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL (WAL): every commit survives a crash of the process; FULL also survives a
        # power cut, at an fsync per commit (p95 turn latency 131 -> 224 ms under load).
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    return pragmas
