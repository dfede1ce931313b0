"""Alembic environment (async): SQLite through aiosqlite, PostgreSQL through asyncpg.

The URL comes from ``-x url=...``, else the caller (``bot db upgrade --db URL`` passes it, or
passes an open connection to migrate on), else the bot's configuration
(``BOT_DATABASE__URL`` or ``database.url`` in config.toml).
"""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from bot.config import load_config
from bot.store.engine import create_engine, is_sqlite, resolve_url
from bot.store.models import Base

config = context.config
target_metadata = Base.metadata

if config.config_file_name and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def database_url() -> str:
    url = context.get_x_argument(as_dictionary=True).get("url") or config.attributes.get("url")
    if url:
        return str(url)
    bot_config = load_config()
    return resolve_url(bot_config.database.url, bot_config.root)


def do_run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite cannot ALTER constraints
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_async_migrations(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.connect() as connection:
            await connection.run_sync(do_run_migrations)
            await connection.commit()
    finally:
        await engine.dispose()


def run_migrations_offline(url: str) -> None:
    context.configure(
        url=url,
        target_metadata=target_metadata,
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
        render_as_batch=is_sqlite(url),
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        do_run_migrations(connection)
    elif context.is_offline_mode():
        run_migrations_offline(database_url())
    else:
        asyncio.run(run_async_migrations(database_url()))


main()
