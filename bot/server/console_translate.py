"""The model that translates agents' replies, when it is not the reply model.

``[console] translate_model`` names it (bot/config.py): a URL is called as it is; a registry
name is served by a second embedded engine (``translate_port``), started by the first
translation rather than at start-up, so a server whose agents never write pays nothing for
it. The App enters the client in its exit stack; closing it stops that engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from bot.config import ModelConfig
from bot.errors import EngineUnavailable, ModelError
from bot.llm import Completion, LLMClient, Message

log = logging.getLogger(__name__)


class TranslationModel(LLMClient):
    """An ``LLMClient`` whose first call starts its embedded engine (``start``) unless
    something already serves there. A failed start is an ``EngineUnavailable`` for that call
    and every later one: the console shows "no translation", the reply model is untouched."""

    def __init__(self, config: ModelConfig, *, start: bool = True) -> None:
        super().__init__(config)
        self._start = start and config.embedded
        self._ready = not self._start
        self._lock = asyncio.Lock()
        self._engines = contextlib.AsyncExitStack()
        self.failure: str | None = None

    @property
    def started(self) -> bool:
        """True once this client started (or found) its engine."""
        return self._start and self._ready

    async def chat(self, messages: Sequence[Message], **options: Any) -> Completion:
        await self._ensure_engine()
        return await super().chat(messages, **options)

    async def aclose(self) -> None:
        try:
            await self._engines.aclose()
        finally:
            await super().aclose()

    async def _ensure_engine(self) -> None:
        if self._ready:
            return
        async with self._lock:
            if self._ready:
                return
            if self.failure is not None:
                raise EngineUnavailable(self.failure)
            if await self.health():
                log.info("a model engine already serves %s", self.config.base_url)
            else:
                from bot.models.engines import start_from_config

                log.info("starting %s for agents' replies", self.config.name)
                try:
                    await self._engines.enter_async_context(
                        start_from_config(self.config, progress=False)
                    )
                except ModelError as exc:
                    self.failure = f"the translation engine did not start: {exc}".split("\n")[0]
                    log.error("%s", self.failure)
                    raise EngineUnavailable(self.failure) from exc
            self._ready = True
