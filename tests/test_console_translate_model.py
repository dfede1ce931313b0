"""``[console] translate_model``: agents' replies translated by another model than the bot's
replies. A real server on port 0 building its own pipeline, migrated SQLite, real agent and
customer sockets; the two models are OpenAI-compatible stand-ins on real ports."""

from __future__ import annotations

import json
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from bot.config import Config, load_config
from bot.errors import ConfigError
from bot.server.app import App
from tests.fake_openai import FakeOpenAI
from tests.test_console import agent_socket, handed_off
from tests.test_server import chat

ROOT = Path(__file__).resolve().parent.parent
REPLY = "Sorry for the wait, I am checking with the warehouse."
SPANISH = "Perdona la espera, lo estoy consultando con el almacén."


def test_config_toml_translates_agents_replies_with_the_reply_model() -> None:
    """As shipped, the console translates with the model that writes the bot's replies."""
    config = load_config(ROOT / "config.toml", environ={})
    assert config.console.translate_model == ""
    assert config.console.translation_model(config.model) is None


def test_a_registry_name_gets_its_own_engine_settings() -> None:
    """A model name: a second embedded engine beside the first (next port), same timeouts,
    without the reply model's LoRA adapter; a URL: that server."""
    env = {"BOT_CONSOLE__TRANSLATE_MODEL": "qwen2.5-1.5b", "BOT_MODEL__ADAPTER": "support"}
    config = load_config(ROOT / "config.toml", environ=env)
    model = config.console.translation_model(config.model)
    assert model is not None
    assert (model.name, model.url, model.port) == ("qwen2.5-1.5b", "", config.model.port + 1)
    assert (model.adapter, model.adapter_dir) == ("", None)
    assert (model.read_timeout, model.threads) == (config.model.read_timeout, config.model.threads)
    env.update(BOT_CONSOLE__TRANSLATE_PORT="9311", BOT_CONSOLE__TRANSLATE_THREADS="1")
    again = load_config(ROOT / "config.toml", environ=env)
    own = again.console.translation_model(again.model)
    assert own is not None and (own.port, own.threads) == (9311, 1)
    url = "http://mt.internal:8000/v1"
    remote = load_config(ROOT / "config.toml", environ={"BOT_CONSOLE__TRANSLATE_MODEL": url})
    assert remote.console.translation_model(remote.model).base_url == url  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "value", ["qwen9-7b", "ftp://mt.internal/v1", "gpt-4o"], ids=["unknown", "ftp", "hosted"]
)
def test_a_translate_model_that_cannot_work_stops_start_up(value: str) -> None:
    """A name the registry does not know, or a URL that is not http(s), is refused, named."""
    with pytest.raises(ConfigError, match=r"console\.translate_model"):
        load_config(ROOT / "config.toml", environ={"BOT_CONSOLE__TRANSLATE_MODEL": value})


@asynccontextmanager
async def serving(config: Config, db_url: str, **console: Any) -> AsyncIterator[App]:
    """The server as `bot serve` starts it (its own pipeline) with the reply model at
    ``config.model.url``."""
    cfg = config.replace(
        database={"url": db_url}, server={"host": "127.0.0.1", "port": 0}, console=console
    )
    async with App(cfg) as app:
        yield app


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _asked(fake: FakeOpenAI, text: str) -> bool:
    return any(text in json.dumps(r, ensure_ascii=False) for r in fake.requests)


@pytest.mark.usefixtures("index_dir")  # builds the FAQ index when it is missing
async def test_the_preview_comes_from_the_translate_model(config: Config, db_url: str) -> None:
    """With translate_model set to a translation server, Marta's preview shows its Spanish;
    the model that writes the bot's replies is never asked to translate her reply."""
    async with (
        FakeOpenAI(reply="Respuesta del modelo de respuestas, que no traduce.") as replies,
        FakeOpenAI(reply=SPANISH) as translation,
    ):
        cfg = config.replace(model={"url": replies.url})
        async with (
            serving(cfg, db_url, translate_model=translation.url) as app,
            chat(app) as client,
            agent_socket(app, "marta") as agent,
        ):
            cid = await handed_off(client)
            await agent.send(type="claim", conversation=cid)
            await agent.expect("transcript", conversation=cid)
            await agent.send(type="preview", conversation=cid, text=REPLY, id="p1")
            preview = await agent.expect("preview", id="p1")
        assert (preview["delivered"], preview["lang"]) == (SPANISH, "es")
        assert _asked(translation, REPLY) and not _asked(replies, REPLY)


@pytest.mark.usefixtures("index_dir")
async def test_without_translate_model_the_reply_model_translates(
    config: Config, db_url: str
) -> None:
    """As shipped (translate_model empty), the reply model translates Marta's reply."""
    async with FakeOpenAI(reply=SPANISH) as replies:
        cfg = config.replace(model={"url": replies.url})
        async with (
            serving(cfg, db_url) as app,
            chat(app) as client,
            agent_socket(app, "marta") as agent,
        ):
            cid = await handed_off(client)
            await agent.send(type="claim", conversation=cid)
            await agent.expect("transcript", conversation=cid)
            await agent.send(type="preview", conversation=cid, text=REPLY, id="p1")
            preview = await agent.expect("preview", id="p1")
        assert preview["delivered"] == SPANISH and _asked(replies, REPLY)


@pytest.mark.usefixtures("index_dir")
async def test_the_second_engine_waits_for_the_first_translation(
    config: Config, db_url: str
) -> None:
    """A registry name does not start a second engine with the server: until an agent's
    reply needs translating nothing listens on translate_port, and customers are answered."""
    port = _free_port()
    async with FakeOpenAI() as replies:
        cfg = config.replace(model={"url": replies.url})
        async with (
            serving(cfg, db_url, translate_model="qwen2.5-1.5b", translate_port=port) as app,
            chat(app) as client,
        ):
            await handed_off(client)
            assert not _listening(port)
