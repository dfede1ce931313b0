"""The server's lifespan: every shared resource, opened in order and closed in reverse.

    async with App(config) as app:      # store (schema checked), Redis bus (if any), model
        await stop.wait()               # client, embedded engine, pipeline, server

On exit: stop accepting, let turns in flight finish for ``grace`` seconds (then cancel
them: their messages are answered when the customer resumes), close sockets with 1001,
then the engine, the model client and the database.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.frames import CloseCode

from bot.config import Config
from bot.errors import ModelError
from bot.llm import LLMClient
from bot.logcontent import keep_content_out_of_logs
from bot.pipeline import Pipeline
from bot.replay.runner import InProcess
from bot.server.admission import Admission
from bot.server.agent import AGENT_PATH, AgentHandler, Desk
from bot.server.chat import ChatHandler
from bot.server.console import ConsoleRoutes, load_console
from bot.server.console_translate import TranslationModel
from bot.server.http import CHAT_PATH, Routes, load_static
from bot.server.metrics import Metrics
from bot.server.rooms import Hub
from bot.server.texts import Texts
from bot.server.turns import Turns
from bot.store import Store

if TYPE_CHECKING:
    from bot.models.supervisor import EmbeddedEngine

log = logging.getLogger(__name__)
_DAY = 24 * 3600.0

SHUTDOWN_GRACE = 5.0


class App:
    store: Store
    pipeline: Pipeline
    turns: Turns
    admission: Admission
    llm: LLMClient | None

    def __init__(
        self,
        config: Config,
        *,
        engine: bool = True,
        pipeline: Pipeline | None = None,
        grace: float = SHUTDOWN_GRACE,
    ) -> None:
        """``engine=False``: never start the embedded engine. ``pipeline``: use this one
        (already built, with its own model client) instead of building one."""
        self.config = config
        self.engine = engine
        self.grace = grace
        self._given_pipeline = pipeline
        self._stack = contextlib.AsyncExitStack()
        self._server: Server | None = None
        self._engine: EmbeddedEngine | None = None
        self._engine_error: str | None = None
        self.metrics = Metrics()
        self.hub = Hub()

    async def __aenter__(self) -> App:
        await self._stack.__aenter__()
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stack.aclose()

    async def _start(self) -> None:
        stack, config = self._stack, self.config
        keep_content_out_of_logs(config.privacy.log_content)
        store = Store(config.database, log_content=config.privacy.log_content)
        self.store = await stack.enter_async_context(store)
        await self.store.check_schema()
        if config.bus.redis_url:  # several processes: events and turn locks through Redis
            from bot.server.bus import RedisBus

            self.hub.bus = await stack.enter_async_context(RedisBus(config.bus, self.hub.receive))
            self.hub.numbered_elsewhere = self.store.numbered_elsewhere
        self.llm = None
        if self._given_pipeline is not None:
            self.pipeline = self._given_pipeline
            self.llm = self.pipeline.llm
        else:
            if config.model.url or self.engine:
                self.llm = await stack.enter_async_context(LLMClient(config.model))
            if self.llm is not None and self.engine and config.model.embedded:
                await self._start_engine(self.llm)
            agents_llm = None
            translate_model = config.console.translation_model(config.model)
            if translate_model is not None:  # its engine starts with the first translation
                agents_llm = await stack.enter_async_context(
                    TranslationModel(translate_model, start=self.engine)
                )
            self.pipeline = await asyncio.to_thread(
                Pipeline.build, config, self.llm, agents_llm=agents_llm
            )
        await self._load_translation_memory()

        texts = Texts(self.pipeline)
        self.turns = Turns(
            store=self.store,
            pipeline=self.pipeline,
            hub=self.hub,
            texts=texts,
            metrics=self.metrics,
            answer_while_queued=config.handoff.answer_while_queued,
        )
        admission = self.admission = Admission(config.server, self.metrics)
        handler = ChatHandler(
            config=config.server,
            store=self.store,
            hub=self.hub,
            turns=self.turns,
            texts=texts,
            metrics=self.metrics,
            admission=admission,
            redact_stored=not config.privacy.keep_original,
        )
        desk = self.desk = Desk(
            store=self.store, hub=self.hub, texts=texts, queue_timeout=config.handoff.queue_timeout
        )
        agents = AgentHandler(
            config=config, store=self.store, hub=self.hub, desk=desk,
            pipeline=self.pipeline, texts=texts, replayer=partial(InProcess, self.pipeline),
        )  # fmt: skip
        console = ConsoleRoutes(
            config=config.console,
            store=self.store,
            admission=admission,
            static=await asyncio.to_thread(load_console),
        )
        routes = Routes(
            config=config.server,
            store=self.store,
            pipeline=self.pipeline,
            llm=self.llm,
            metrics=self.metrics,
            static=await asyncio.to_thread(load_static),
            engine_failure=lambda: self.engine_failure,
            console=console,
        )

        async def route(ws: ServerConnection) -> None:
            if ws.request is not None and urlsplit(ws.request.path).path == AGENT_PATH:
                admission.handshake_ended(ws)
                await agents(ws)
            else:
                await handler(ws)

        desk_task = asyncio.create_task(desk.run(), name="agent desk")
        stack.push_async_callback(_cancel, desk_task)
        if config.privacy.retention_days:
            purge_task = asyncio.create_task(self._purge_daily(), name="retention purge")
            stack.push_async_callback(_cancel, purge_task)
        self._server = await serve(
            route,
            config.server.host,
            config.server.port,
            process_request=routes,
            create_connection=admission.connection_class(),
            open_timeout=config.server.handshake_timeout,
            max_size=config.server.max_frame_bytes,
            compression=None,  # short JSON frames: not worth a deflate context per socket
            server_header=None,
        )
        stack.push_async_callback(self._shutdown)
        log.info("chat server listening on %s", self.url)

    async def _purge_daily(self) -> None:
        """Delete conversations past privacy.retention_days: at start, then once a day."""
        from bot.store.retention import purge

        while True:
            try:
                deleted = await purge(self.store, self.config.privacy.retention_days)
            except Exception:
                log.exception("retention purge failed; trying again tomorrow")
            else:
                if deleted:
                    log.info("retention: purged %d conversation(s)", deleted)
            await asyncio.sleep(_DAY)

    async def _start_engine(self, llm: LLMClient) -> None:
        if await llm.health():
            log.info("a model engine is already serving %s", self.config.model.base_url)
            return
        from bot.models.engines import start_from_config

        try:
            self._engine = await self._stack.enter_async_context(
                start_from_config(self.config.model)
            )
        except ModelError as exc:  # reported once, clearly; the bot serves curated answers
            self._engine_error = str(exc).split("\n")[0]
            log.error("the embedded model engine did not start: %s; serving curated answers", exc)
        except Exception:
            self._engine_error = "the embedded model engine did not start (see the log)"
            log.exception("the embedded model engine did not start: serving curated answers")

    @property
    def engine_failure(self) -> str | None:
        """Why the embedded engine is not serving, for /healthz; None when it is (or none)."""
        if self._engine is not None:
            return self._engine.failure
        return self._engine_error

    async def _load_translation_memory(self) -> None:
        entries = await self.store.approved_translations()
        for source, target, text, translation in entries:
            self.pipeline.remember_translation(source, target, text, translation)
        if entries:
            log.info("loaded %d approved translations", len(entries))

    async def _shutdown(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        log.info("shutting down: %d turn(s) in flight", len(self.turns))
        server.close(close_connections=False)  # stop accepting, keep the open sockets
        await self.turns.drain(self.grace)
        while True:  # again for a socket whose handshake was finishing meanwhile
            closing = [
                ws.close(CloseCode.GOING_AWAY, "server shutting down") for ws in server.connections
            ]
            await asyncio.gather(*closing, return_exceptions=True)
            try:
                await asyncio.wait_for(asyncio.shield(server.wait_closed()), timeout=1.0)
            except TimeoutError:
                continue
            break
        log.info("chat server stopped")

    # -- for callers and tests --------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the server is not running")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def url(self) -> str:
        host = self.config.server.host
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}"

    @property
    def chat_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + CHAT_PATH

    @property
    def agent_url(self) -> str:
        return self.url.replace("http://", "ws://", 1) + AGENT_PATH


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
