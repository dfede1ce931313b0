"""Prometheus metrics, in the server's own registry (served at ``/metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from bot.pipeline import TurnResult

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_STAGE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.turns = Counter("bot_turns", "Bot turns answered", ["language", "source"], registry=r)
        self.turn_seconds = Histogram(
            "bot_turn_seconds", "Whole bot turn, typing to reply stored", buckets=_STAGE_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.stage_seconds = Histogram(
            "bot_stage_seconds", "Pipeline stage latency, from the turn trace", ["stage"],
            buckets=_STAGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.handoffs = Counter(
            "bot_handoffs", "Conversations queued for a human", ["reason"], registry=r
        )
        self.errors = Counter("bot_errors", "Error events sent to clients", ["code"], registry=r)
        self.connections = Gauge("bot_open_connections", "Open chat sockets", registry=r)
        self.messages = Counter("bot_messages_stored", "Messages stored", ["role"], registry=r)
        self.refusals = Counter(
            "bot_refusals", "Frames and connections refused by a limit", ["reason"], registry=r
        )
        self.handshakes = Gauge(
            "bot_handshakes_in_flight", "Connections in their opening handshake", registry=r
        )
        self.open_connections = 0

    def connected(self) -> None:
        self.open_connections += 1
        self.connections.inc()

    def disconnected(self) -> None:
        self.open_connections -= 1
        self.connections.dec()

    def turn(self, result: TurnResult, seconds: float) -> None:
        self.turns.labels(result.language, result.source).inc()
        self.turn_seconds.observe(seconds)
        for stage in result.trace.stages:
            self.stage_seconds.labels(stage.stage).observe(stage.ms / 1000)
        self.messages.labels("bot").inc()
        if result.handoff:
            self.handoffs.labels(result.handoff_reason or "unknown").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
