"""Shared fixtures: the real config, knowledge base, FAQ index and pipeline.

Everything is real: the FAISS index is built from knowledge/ with the packaged embedding
model (once per session, reused when it is current), the detectors are the real ones.
Timeouts in tests scale with BOT_TEST_TIMEOUT_FACTOR on slow machines.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config, DatabaseConfig, load_config
from bot.knowledge import Knowledge, load_knowledge
from bot.pipeline import Pipeline
from bot.retrieve import Embedder, build_index, index_is_current
from bot.server.app import App
from bot.store import Store

pytest_plugins = ["tests.engine_plugin"]

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data"
TIMEOUT_FACTOR = float(os.environ.get("BOT_TEST_TIMEOUT_FACTOR", "1"))
LANGUAGES = ("en", "zh", "es", "fr", "de", "ja", "ko", "pt", "it", "ru", "ar", "nl")


def questions(language: str) -> dict[str, Any]:
    """Held-out evaluation data for one language (tests/data/questions/LL.toml)."""
    with (DATA / "questions" / f"{language}.toml").open("rb") as f:
        return tomllib.load(f)


@pytest.fixture(scope="session")
def config() -> Config:
    return load_config(ROOT / "config.toml", environ={})


@pytest.fixture(scope="session")
def knowledge(config: Config) -> Knowledge:
    return load_knowledge(config.shop.knowledge_dir)


@pytest.fixture(scope="session")
def index_dir(config: Config, knowledge: Knowledge) -> Path:
    """The FAQ index for the current knowledge; built here if `bot index` was not run."""
    directory = config.retrieve.index_dir
    if not index_is_current(directory, knowledge):
        build_index(knowledge, directory, Embedder(config.model.cache_dir), progress=False)
    return directory


@pytest.fixture(scope="session")
def pipeline(config: Config, index_dir: Path) -> Pipeline:
    """The real pipeline without a model engine (curated, composed and retrieval paths)."""
    return Pipeline.build(config, None)


@pytest.fixture
async def db_url(tmp_path: Path) -> str:
    """A fresh SQLite database file with the migrations applied."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'bot.db'}"
    async with Store(DatabaseConfig(url=url)) as store:
        await store.upgrade()
    return url


@pytest.fixture
def start(config: Config, pipeline: Pipeline, db_url: str) -> Any:
    """``async with start(**server_settings) as app``: a server on port 0."""

    @asynccontextmanager
    async def start_app(*, grace: float = 5.0, **server: Any) -> AsyncIterator[App]:
        cfg = config.replace(
            database={"url": db_url}, server={"host": "127.0.0.1", "port": 0, **server}
        )
        async with App(cfg, pipeline=pipeline, grace=grace) as app:
            yield app

    return start_app
