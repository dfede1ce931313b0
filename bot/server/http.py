"""Plain HTTP routes, answered from websockets' ``process_request`` hook.

GET /                       the demo storefront (bot/static/index.html)
GET /widget.js, /widget.css the widget (CORS: any origin)
GET /widget/i18n/LL.json    the widget's UI strings (CORS: any origin)
GET /healthz                JSON: database, model engine, FAQ index fingerprint
GET /metrics                Prometheus text format
GET /ws/chat                the chat socket (origin checked; bot.server.chat)
/console, /console/*, /ws/agent   the agent console (bot.server.console)
anything else               404
"""

from __future__ import annotations

import email.utils
import ipaddress
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from bot.config import ServerConfig
from bot.llm import LLMClient
from bot.server import metrics as metrics_module
from bot.server.metrics import Metrics
from bot.server.protocol import encode
from bot.server.ratelimit import LogThrottle
from bot.service import BotService
from bot.store import Store

if TYPE_CHECKING:
    from bot.server.console import ConsoleRoutes

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
CHAT_PATH = "/ws/chat"
STATIC_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/widget.js": ("widget.js", "text/javascript; charset=utf-8"),
    "/widget.css": ("widget.css", "text/css; charset=utf-8"),
}
_I18N_RE = re.compile(r"^/widget/i18n/([a-z]{2,3})\.json$")
_JSON = "application/json; charset=utf-8"


def load_static(directory: Path = STATIC_DIR) -> dict[str, bytes]:
    """The static files by route (blocking: call in a thread)."""
    return {route: (directory / name).read_bytes() for route, (name, _) in STATIC_FILES.items()}


def response(status: HTTPStatus, body: bytes, content_type: str, *, cors: bool = False) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
            ("Content-Type", content_type),
            ("Cache-Control", "no-cache"),
            ("X-Content-Type-Options", "nosniff"),
            ("Referrer-Policy", "strict-origin-when-cross-origin"),
        ]
    )
    if cors:
        headers["Access-Control-Allow-Origin"] = "*"
    return Response(status.value, status.phrase, headers, body)


def text_response(status: HTTPStatus, text: str) -> Response:
    return response(status, (text + "\n").encode(), "text/plain; charset=utf-8")


@dataclass
class Routes:
    config: ServerConfig
    store: Store
    pipeline: BotService
    llm: LLMClient | None
    metrics: Metrics
    static: dict[str, bytes]
    engine_failure: Callable[[], str | None] = lambda: None  # why the embedded engine is down
    console: ConsoleRoutes | None = None
    _i18n: dict[str, bytes] = field(default_factory=dict)
    _quiet: LogThrottle = field(default_factory=LogThrottle)

    async def __call__(self, connection: ServerConnection, request: Request) -> Response | None:
        path = urlsplit(request.path).path
        if path == CHAT_PATH:
            return self.check_origin(request)  # None: go on with the WebSocket handshake
        if self.console is not None and self.console.handles(path):
            return await self.console(connection, request, path)
        if path in self.static:
            content_type = STATIC_FILES[path][1]
            res = response(HTTPStatus.OK, self.static[path], content_type, cors=path != "/")
            if path == "/":  # the demo storefront: not to be framed by other sites
                res.headers["Content-Security-Policy"] = "frame-ancestors 'self'"
            return res
        match = _I18N_RE.match(path)
        if match:
            return self.i18n(match.group(1))
        if path == "/healthz":
            return await self.health()
        if path == "/metrics":
            if not self.may_read_metrics(connection):
                self.metrics.refusals.labels("metrics").inc()
                return text_response(HTTPStatus.FORBIDDEN, "forbidden")
            return response(HTTPStatus.OK, self.metrics.render(), metrics_module.CONTENT_TYPE)
        return text_response(HTTPStatus.NOT_FOUND, "not found")

    def may_read_metrics(self, connection: ServerConnection) -> bool:
        """``server.metrics_allow`` against the socket's peer (behind a proxy, that is the
        proxy: restrict /metrics there too)."""
        allowed = self.config.metrics_networks
        if not allowed:
            return True
        try:
            peer = ipaddress.ip_address(str(connection.remote_address[0]))
        except (TypeError, ValueError, IndexError):
            return False
        return any(peer in network for network in allowed)

    def check_origin(self, request: Request) -> Response | None:
        allowed = self.config.allowed_origins
        origin = request.headers.get("Origin")
        if allowed and origin not in allowed:
            self._quiet.log(
                log, logging.INFO, "origin", "refused chat socket from origin %r", origin
            )
            self.metrics.errors.labels("origin").inc()
            return text_response(HTTPStatus.FORBIDDEN, "origin not allowed")
        return None

    def i18n(self, lang: str) -> Response:
        if lang not in self.pipeline.languages:
            return text_response(HTTPStatus.NOT_FOUND, "unknown language")
        body = self._i18n.get(lang)
        if body is None:
            direction, ui = self.pipeline.ui_strings(lang)
            body = encode({"lang": lang, "dir": direction, "ui": ui}).encode()
            self._i18n[lang] = body
        return response(HTTPStatus.OK, body, _JSON, cors=True)

    async def health(self) -> Response:
        db = await self.store.ping()
        failure = self.engine_failure()
        engine = "ok" if self.llm is not None and await self.llm.health() else "unavailable"
        report: dict[str, object] = {
            "status": "ok" if db else "error",
            "db": "ok" if db else "error",
            "engine": "failed" if failure and engine != "ok" else engine,
            "index": self.pipeline.index_fingerprint,
            "model": self.llm.config.request_model if self.llm is not None else None,
            "connections": self.metrics.open_connections,
        }
        if failure and engine != "ok":
            report["engine_failure"] = failure  # e.g. "the engine crashes on this CPU: ..."
        status = HTTPStatus.OK if db else HTTPStatus.SERVICE_UNAVAILABLE
        return response(status, json.dumps(report).encode(), _JSON)
