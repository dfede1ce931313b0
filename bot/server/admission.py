"""Who may come in, and how fast: client addresses and the server's limits.

    client address  the peer's, or, when the peer is a trusted proxy, the rightmost
                    entry of ``client_ip_header`` that is not one; IPv6 per /64 (what one
                    host usually gets)
    handshakes      connections not yet past their opening handshake, whole server: past
                    ``max_handshakes`` a new one is answered HTTP 503 and closed
    connections     open chat sockets per address: past ``max_connections_per_ip`` a new
                    one is closed with 1013 (try again later)
    messages        ``message`` and ``handoff.request`` spend a token of their
                    conversation's bucket and of their address's; a new conversation
                    spends one of its address's; an empty bucket raises ``RateLimited``

Every refusal is counted in ``bot_refusals_total{reason}`` and logged, a few per window.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from collections import Counter
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers

from bot.config import IPNetwork, ServerConfig
from bot.errors import RateLimited
from bot.server.metrics import Metrics
from bot.server.ratelimit import Buckets, Clock, LogThrottle, TokenBucket, take_all

log = logging.getLogger(__name__)

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
UNKNOWN = "unknown"
LINGER = 1.0  # seconds a refused connection may take to read its 503 and close
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 5\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\nContent-Length: 12\r\n\r\nserver busy\n"
)


class Admission:
    def __init__(
        self, config: ServerConfig, metrics: Metrics, *, clock: Clock = time.monotonic
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._trusted = config.trusted_networks
        window = config.rate_limit_window
        self._conversations = Buckets(config.rate_limit_messages, window, clock=clock)
        self._addresses = Buckets(config.ip_rate_limit_messages, window, clock=clock)
        self._connections: Counter[str] = Counter()
        self._handshaking: set[ServerConnection] = set()
        self.quiet = LogThrottle(clock=clock)

    # -- addresses --------------------------------------------------------------------------

    def address_of(self, ws: ServerConnection) -> str:
        headers = ws.request.headers if ws.request is not None else Headers()
        peer = ws.remote_address[0] if isinstance(ws.remote_address, tuple) else None
        forwarded = ",".join(headers.get_all(self.config.client_ip_header))
        return client_address(peer, forwarded or None, self._trusted)

    # -- handshakes -------------------------------------------------------------------------

    def connection_class(self) -> type[ServerConnection]:
        """websockets' connection, counted from accept to the end of its handshake; past
        ``max_handshakes``, answered 503 and closed before websockets sees it."""
        admission = self

        class AdmittedConnection(ServerConnection):
            _refused: asyncio.TimerHandle | None = None

            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                if admission.handshake_started(self):
                    super().connection_made(transport)
                else:
                    self._refused = _answer_busy(transport)

            def data_received(self, data: bytes) -> None:
                if self._refused is None:
                    super().data_received(data)

            def eof_received(self) -> None:  # refused: the transport closes itself
                if self._refused is None:
                    super().eof_received()

            def connection_lost(self, exc: Exception | None) -> None:
                if self._refused is not None:
                    self._refused.cancel()
                    return
                admission.handshake_ended(self)
                super().connection_lost(exc)

        return AdmittedConnection

    @property
    def handshakes(self) -> int:
        """Connections accepted and not yet past their opening handshake."""
        return len(self._handshaking)

    def handshake_started(self, ws: ServerConnection) -> bool:
        if len(self._handshaking) >= self.config.max_handshakes:
            count = len(self._handshaking)
            self.refuse("handshakes", "", "refused a connection: %d handshakes in flight", count)
            return False
        self._handshaking.add(ws)
        self.metrics.handshakes.set(len(self._handshaking))
        return True

    def handshake_ended(self, ws: ServerConnection) -> None:
        if ws in self._handshaking:
            self._handshaking.discard(ws)
            self.metrics.handshakes.set(len(self._handshaking))

    # -- connections ------------------------------------------------------------------------

    def connect(self, address: str) -> bool:
        """Count a chat socket of ``address``; False (refused) past the limit."""
        limit = self.config.max_connections_per_ip
        if limit and self._connections[address] >= limit:
            count = self._connections[address]
            self.refuse("connections", address, "refused a socket from %s: %d open", address, count)
            return False
        self._connections[address] += 1
        return True

    def disconnect(self, address: str) -> None:
        self._connections[address] -= 1
        if self._connections[address] <= 0:
            del self._connections[address]

    # -- messages ---------------------------------------------------------------------------

    def spend(self, conversation: str, address: str) -> None:
        """A ``message`` or ``handoff.request``: one token of each bucket, or RateLimited."""
        buckets = {"conversation": self._conversations[conversation]}
        buckets.update(self._address_bucket(address))
        empty = take_all(buckets)
        if empty is not None:
            self.refuse(empty, address, "rate limited %s (%s)", address, empty)
            raise RateLimited(f"too many messages for this {empty}", reason=empty)

    def new_conversation(self, address: str) -> None:
        """A ``hello`` that starts a conversation: one token of the address's bucket."""
        empty = take_all(self._address_bucket(address))
        if empty is not None:
            self.refuse(empty, address, "rate limited %s (new conversations)", address)
            raise RateLimited("too many new conversations", reason=empty)

    def _address_bucket(self, address: str) -> dict[str, TokenBucket]:
        return {"address": self._addresses[address]} if self.config.ip_rate_limit_messages else {}

    def refuse(self, reason: str, address: str, message: str, *args: Any) -> None:
        self.metrics.refusals.labels(reason).inc()
        self.quiet.log(log, logging.WARNING, f"{reason} {address}", message, *args)


def _answer_busy(transport: asyncio.BaseTransport) -> asyncio.TimerHandle:
    """HTTP 503, then read and drop whatever the client sends until it closes, for at most
    ``LINGER`` s: closing with its request unread would reset the connection, and the
    client could lose the 503."""
    assert isinstance(transport, asyncio.Transport)
    transport.write(_BUSY)
    if transport.can_write_eof():
        transport.write_eof()
    return asyncio.get_running_loop().call_later(LINGER, transport.abort)


def client_address(peer: str | None, forwarded: str | None, trusted: tuple[IPNetwork, ...]) -> str:
    """The address limits count: ``peer``, or from a trusted peer's ``forwarded`` header.

    The header's entries are read from the right (each proxy appends the address it got
    the request from), skipping trusted proxies: entries further left were written by the
    client and prove nothing. A malformed entry stops the walk at the last good one.
    """
    address = _parse(peer)
    if address is None:
        return peer or UNKNOWN
    if forwarded and _is_trusted(address, trusted):
        for entry in reversed(forwarded.split(",")):
            hop = _parse(entry)
            if hop is None:
                break
            address = hop
            if not _is_trusted(hop, trusted):
                break
    return _key(address)


def _parse(text: str | None) -> IPAddress | None:
    """``1.2.3.4``, ``1.2.3.4:5678``, ``::1``, ``[::1]:80``; None if it is none of those."""
    text = (text or "").strip()
    if text.startswith("["):
        text = text[1:].partition("]")[0]
    elif text.count(":") == 1:
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _is_trusted(address: IPAddress, trusted: tuple[IPNetwork, ...]) -> bool:
    return any(address in network for network in trusted)


def _key(address: IPAddress) -> str:
    if isinstance(address, ipaddress.IPv6Address):
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)
