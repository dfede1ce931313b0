"""The agent console's HTTP side: the page, login, logout, and the agent socket's gate.

GET  /console                 the console (bot/static/console.html, .js, .css; no CORS)
POST /console/login           ``Authorization: Basic`` name:password, empty body -> JSON
                              {agent, role, csrf} and the session cookie
GET  /console/session         the logged-in agent and CSRF token, or 401
POST /console/logout          needs ``X-CSRF-Token``: the session row is revoked
GET  /ws/agent                the agent socket: session cookie and same Origin required

Credentials travel in a header because websockets' HTTP parser takes no request body. Every
POST must come from the console's own origin (``Origin`` equals the ``Host``); a custom
header also forces a CORS preflight that this server never grants. Failed logins spend
from two token buckets, per client address and per name.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from dataclasses import dataclass, field
from datetime import timedelta
from http import HTTPStatus
from pathlib import Path
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response

from bot.auth import same, verify_password
from bot.config import ConsoleConfig
from bot.server.admission import Admission
from bot.server.agent import AGENT_PATH, COOKIE, session_cookie
from bot.server.http import STATIC_DIR, response, text_response
from bot.server.ratelimit import Buckets
from bot.store import Store

log = logging.getLogger(__name__)

CONSOLE_FILES = {
    "/console": ("console.html", "text/html; charset=utf-8"),
    "/console.js": ("console.js", "text/javascript; charset=utf-8"),
    "/console.css": ("console.css", "text/css; charset=utf-8"),
}
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; media-src 'self' data:; base-uri 'none'; form-action 'self'; "
    "frame-ancestors 'none'"
)
_JSON = "application/json; charset=utf-8"


def load_console(directory: Path = STATIC_DIR) -> dict[str, bytes]:
    """The console's files by route (blocking: call in a thread)."""
    return {route: (directory / name).read_bytes() for route, (name, _) in CONSOLE_FILES.items()}


@dataclass
class ConsoleRoutes:
    config: ConsoleConfig
    store: Store
    admission: Admission
    static: dict[str, bytes]
    by_address: Buckets = field(init=False)
    by_name: Buckets = field(init=False)

    def __post_init__(self) -> None:
        self.by_address = Buckets(self.config.login_attempts, self.config.login_window)
        self.by_name = Buckets(self.config.login_attempts, self.config.login_window)

    def handles(self, path: str) -> bool:
        return path in CONSOLE_FILES or path.startswith("/console/") or path == AGENT_PATH

    async def __call__(
        self, connection: ServerConnection, request: Request, path: str
    ) -> Response | None:
        if path == AGENT_PATH:
            return await self.gate(request)
        if path in CONSOLE_FILES and request.method == "GET":
            res = response(HTTPStatus.OK, self.static[path], CONSOLE_FILES[path][1])
            res.headers["Content-Security-Policy"] = CSP
            res.headers["X-Frame-Options"] = "DENY"
            res.headers["Referrer-Policy"] = "no-referrer"
            return res
        if path == "/console/login" and request.method == "POST":
            return await self.login(connection, request)
        if path == "/console/logout" and request.method == "POST":
            return await self.logout(request)
        if path == "/console/session" and request.method == "GET":
            return await self.session(request)
        return text_response(HTTPStatus.NOT_FOUND, "not found")

    async def gate(self, request: Request) -> Response | None:
        """The agent socket's handshake: same origin and a live session, else 403/401."""
        if not same_origin(request):
            return text_response(HTTPStatus.FORBIDDEN, "origin not allowed")
        token = session_cookie(request.headers)
        if token is None or await self.store.session_agent(token) is None:
            return text_response(HTTPStatus.UNAUTHORIZED, "log in first")
        return None

    async def login(self, connection: ServerConnection, request: Request) -> Response:
        if not same_origin(request):
            return text_response(HTTPStatus.FORBIDDEN, "origin not allowed")
        credentials = _basic(request.headers.get("Authorization"))
        if credentials is None:
            return _json(HTTPStatus.BAD_REQUEST, {"error": "bad_request"})
        name, password = credentials
        address = self.admission.address_of(connection)
        per_address, per_name = self.by_address[address], self.by_name[name.casefold()]
        if not (per_address.ready() and per_name.ready()):
            res = _json(HTTPStatus.TOO_MANY_REQUESTS, {"error": "rate_limited"})
            res.headers["Retry-After"] = str(int(self.config.login_window))
            return res
        found = await self.store.agent_login(name)
        agent, stored = found if found else (None, None)
        # verify_password costs one scrypt even for an unknown name (no timing oracle).
        ok = verify_password(password, stored) and agent is not None and agent.active
        if not ok or agent is None:
            per_address.spend()
            per_name.spend()
            log.info("console login refused for %r from %s", name[:80], address)
            return _json(HTTPStatus.UNAUTHORIZED, {"error": "bad_credentials"})
        lifetime = timedelta(hours=self.config.session_hours)
        token, csrf = await self.store.create_session(agent.id, lifetime)
        res = _json(HTTPStatus.OK, {"agent": agent.name, "role": agent.role, "csrf": csrf})
        res.headers["Set-Cookie"] = self.cookie(request, token, int(lifetime.total_seconds()))
        log.info("agent %s logged in from %s", agent.name, address)
        return res

    async def session(self, request: Request) -> Response:
        token = session_cookie(request.headers)
        found = await self.store.session_agent(token) if token else None
        if found is None:
            return _json(HTTPStatus.UNAUTHORIZED, {"error": "not_logged_in"})
        agent, csrf = found
        return _json(HTTPStatus.OK, {"agent": agent.name, "role": agent.role, "csrf": csrf})

    async def logout(self, request: Request) -> Response:
        if not same_origin(request):
            return text_response(HTTPStatus.FORBIDDEN, "origin not allowed")
        token = session_cookie(request.headers)
        found = await self.store.session_agent(token) if token else None
        if token is None or found is None:
            return _json(HTTPStatus.UNAUTHORIZED, {"error": "not_logged_in"})
        if not same(request.headers.get("X-CSRF-Token", ""), found[1]):
            return _json(HTTPStatus.FORBIDDEN, {"error": "bad_csrf"})
        await self.store.revoke_session(token)
        res = _json(HTTPStatus.OK, {"ok": True})
        res.headers["Set-Cookie"] = self.cookie(request, "", 0)
        return res

    def cookie(self, request: Request, value: str, max_age: int) -> str:
        secure = self.config.secure_cookie == "always" or (
            self.config.secure_cookie == "auto"
            and request.headers.get("X-Forwarded-Proto", "").lower() == "https"
        )
        cookie = f"{COOKIE}={value}; Path=/; Max-Age={max_age}; HttpOnly; SameSite=Strict"
        return cookie + ("; Secure" if secure else "")


def same_origin(request: Request) -> bool:
    """``Origin`` names this server (the ``Host`` it was reached at)."""
    origin, host = request.headers.get("Origin"), request.headers.get("Host")
    if not origin or not host:
        return False
    return origin in (f"http://{host}", f"https://{host}")


def _basic(header: str | None) -> tuple[str, str] | None:
    if not header or not header.startswith("Basic "):
        return None
    try:
        name, sep, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    if not sep or not name or len(name) > 80 or len(password) > 1024:
        return None
    return name, password


def _json(status: HTTPStatus, body: dict[str, Any]) -> Response:
    return response(status, json.dumps(body).encode(), _JSON)
