"""Alembic from code: upgrade, current revision, schema check, drift between models and
migrations. The migration scripts live in ``migrations/`` beside ``alembic.ini``."""

from __future__ import annotations

from typing import Any

from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from bot.config import PROJECT_ROOT
from bot.errors import SchemaOutOfDate, StoreError
from bot.store.models import Base

ALEMBIC_INI = PROJECT_ROOT / "alembic.ini"
MIGRATIONS_DIR = PROJECT_ROOT / "migrations"


def alembic_config(
    *, url: str | None = None, connection: Connection | None = None
) -> AlembicConfig:
    """Alembic's config; ``connection`` makes env.py migrate on it instead of connecting."""
    cfg = AlembicConfig(str(ALEMBIC_INI)) if ALEMBIC_INI.exists() else AlembicConfig()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["configure_logger"] = False  # the bot's logging is already set up
    if url is not None:
        cfg.attributes["url"] = url
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    if head is None:
        raise StoreError(f"no migrations found in {MIGRATIONS_DIR}")
    return head


async def current_revision(engine: AsyncEngine) -> str | None:
    async with engine.connect() as conn:
        return await conn.run_sync(_current)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_upgrade, revision)


async def downgrade(engine: AsyncEngine, revision: str) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_downgrade, revision)


async def check_schema(engine: AsyncEngine) -> None:
    """Raise ``SchemaOutOfDate`` unless the database is at the code's head revision."""
    current, head = await current_revision(engine), head_revision()
    if current != head:
        raise SchemaOutOfDate(
            f"the database schema is at revision {current or '(empty)'} but this version needs "
            f"{head}: run `bot db upgrade` (with the same --db / database.url)"
        )


async def drift(engine: AsyncEngine) -> list[Any]:
    """Differences between the models and the migrated database (empty when in sync)."""
    async with engine.connect() as conn:
        return await conn.run_sync(_compare)


def _current(connection: Connection) -> str | None:
    return MigrationContext.configure(connection).get_current_revision()


def _upgrade(connection: Connection, revision: str) -> None:
    command.upgrade(alembic_config(connection=connection), revision)


def _downgrade(connection: Connection, revision: str) -> None:
    command.downgrade(alembic_config(connection=connection), revision)


def _compare(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))
