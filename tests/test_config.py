"""Configuration: config.toml and BOT_<SECTION>__<KEY> overrides, validated at start-up."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest

from bot.config import load_config
from bot.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "config.toml"


def test_the_server_limits_shipped_in_config_toml() -> None:
    """Out of the box: 20 messages per conversation and 120 per address a minute, 50
    sockets per address, 200 handshakes in flight, no proxy trusted."""
    server = load_config(CONFIG, environ={}).server
    assert (server.rate_limit_messages, server.rate_limit_window) == (20, 60.0)
    assert server.ip_rate_limit_messages == 120
    assert server.max_connections_per_ip == 50
    assert (server.max_handshakes, server.handshake_timeout) == (200, 10.0)
    assert server.trusted_proxies == ()
    assert server.client_ip_header == "X-Forwarded-For"


def test_server_limits_from_the_environment() -> None:
    """An operator sets proxies as a comma-separated list and numbers as text."""
    environ = {
        "BOT_SERVER__TRUSTED_PROXIES": "10.0.0.0/8, 127.0.0.1,::1",
        "BOT_SERVER__CLIENT_IP_HEADER": "X-Real-IP",
        "BOT_SERVER__MAX_CONNECTIONS_PER_IP": "0",
        "BOT_SERVER__IP_RATE_LIMIT_MESSAGES": "600",
    }
    server = load_config(CONFIG, environ=environ).server
    assert server.trusted_networks == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("127.0.0.1/32"),
        ipaddress.ip_network("::1/128"),
    )
    assert server.client_ip_header == "X-Real-IP"
    assert (server.max_connections_per_ip, server.ip_rate_limit_messages) == (0, 600)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("MAX_SOCKETS", "5", r"unknown key\(s\) \['max_sockets'\]"),
        ("TRUSTED_PROXIES", "10.0.0.0/8,proxy.internal", "trusted_proxies"),
        ("MAX_CONNECTIONS_PER_IP", "-1", "max_connections_per_ip must be 0"),
        ("MAX_HANDSHAKES", "0", "max_handshakes must be at least 1"),
        ("RATE_LIMIT_MESSAGES", "0", "rate_limit_messages must be at least 1"),
        ("HANDSHAKE_TIMEOUT", "0", "handshake_timeout must be more than 0"),
        ("CLIENT_IP_HEADER", " ", "client_ip_header"),
        ("IDLE_TIMEOUT", "soon", "cannot use 'soon'"),
        ("METRICS_ALLOW", "monitoring-host", "metrics_allow"),
    ],
)
def test_a_bad_server_setting_stops_start_up(key: str, value: str, message: str) -> None:
    """A typo or an impossible limit is refused at start-up, naming the setting."""
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, environ={f"BOT_SERVER__{key}": value})


def test_the_handoff_and_console_settings_shipped_in_config_toml() -> None:
    """Out of the box the bot answers FAQ questions while a customer waits for an agent,
    offers a message after 5 minutes, and console logins last 12 hours."""
    config = load_config(CONFIG, environ={})
    assert config.handoff.answer_while_queued is True
    assert config.handoff.queue_timeout == 300.0
    console = config.console
    assert (console.session_hours, console.secure_cookie) == (12.0, "auto")
    assert (console.login_attempts, console.login_window) == (5, 300.0)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("BOT_HANDOFF__QUEUE_TIMEOUT", "0", "handoff.queue_timeout"),
        ("BOT_HANDOFF__WAIT", "1", r"unknown key\(s\) \['wait'\]"),
        ("BOT_CONSOLE__SECURE_COOKIE", "sometimes", "console.secure_cookie"),
        ("BOT_CONSOLE__LOGIN_ATTEMPTS", "0", "console.login_attempts"),
        ("BOT_CONSOLE__SESSION_HOURS", "-1", "console.session_hours"),
    ],
)
def test_a_bad_handoff_or_console_setting_stops_start_up(
    key: str, value: str, message: str
) -> None:
    """A console or handoff setting that cannot work is refused at start-up, named."""
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, environ={key: value})


@pytest.mark.parametrize(
    ("section", "key", "value", "message"),
    [
        ("GENERATE", "MODE", "sometimes", "generate.mode must be one of compose, auto"),
        ("MODEL", "CONCURRENCY", "0", "concurrency >= 1"),
        ("PRIVACY", "RETENTION_DAYS", "-1", "retention_days must be >= 0"),
        ("PRIVACY", "REDACTION", "true", r"unknown key\(s\) \['redaction'\]"),
    ],
)
def test_a_bad_reply_model_or_privacy_setting_stops_start_up(
    section: str, key: str, value: str, message: str
) -> None:
    """Generate modes, admission control and privacy settings are validated at start-up."""
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, environ={f"BOT_{section}__{key}": value})


def test_the_reply_and_privacy_defaults_shipped_in_config_toml() -> None:
    """Composed replies, redaction and one model call at a time are the shipped defaults."""
    config = load_config(CONFIG, environ={})
    assert config.generate.mode == "compose"
    assert (config.privacy.redact, config.privacy.keep_original) == (True, True)
    assert config.privacy.retention_days == 0
    assert (config.model.concurrency, config.model.queue_size) == (1, 8)
    assert config.server.metrics_allow == ()


def test_one_process_without_redis_is_the_shipped_default() -> None:
    """Out of the box no Redis is needed: events stay in the one server process."""
    bus = load_config(CONFIG, environ={}).bus
    assert (bus.redis_url, bus.prefix, bus.timeout) == ("", "bot", 2.0)
    shared = load_config(CONFIG, environ={"BOT_BUS__REDIS_URL": "redis://127.0.0.1:6379/0"})
    assert shared.bus.redis_url == "redis://127.0.0.1:6379/0"


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("REDIS_URL", "127.0.0.1:6379", "bus.redis_url must be redis://"),
        ("REDIS_URL", "http://cache:6379", "bus.redis_url must be redis://"),
        ("PREFIX", "my shop", "bus.prefix"),
        ("TIMEOUT", "0", "bus.timeout must be more than 0"),
        ("CHANNEL", "x", r"unknown key\(s\) \['channel'\]"),
    ],
)
def test_a_bad_bus_setting_stops_start_up(key: str, value: str, message: str) -> None:
    """A Redis address the client could not use is refused at start-up, named."""
    with pytest.raises(ConfigError, match=message):
        load_config(CONFIG, environ={f"BOT_BUS__{key}": value})
