"""Configuration: ``config.toml`` plus ``BOT_<SECTION>__<KEY>`` environment overrides.

Read once at start-up into frozen dataclasses that validate themselves, then passed down.
Nothing else in the package reads ``os.environ`` for settings.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bot.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = PROJECT_ROOT / "config.toml"
ENV_PREFIX = "BOT_"
ADAPTERS_DIR = "var/adapters"  # where `bot finetune export` installs adapters (relative to config)
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True)
class ShopConfig:
    knowledge_dir: Path
    languages: tuple[str, ...]
    pivot: str = "en"
    default_language: str = "en"

    def __post_init__(self) -> None:
        if self.pivot not in self.languages:
            raise ConfigError(f"shop.pivot {self.pivot!r} is not in shop.languages")
        if self.default_language not in self.languages:
            raise ConfigError(f"shop.default_language {self.default_language!r} is not supported")


@dataclass(frozen=True)
class DetectConfig:
    min_confidence: float = 0.45
    short_text_letters: int = 12
    switch_margin: float = 0.2


@dataclass(frozen=True)
class RetrieveConfig:
    index_dir: Path
    top_k: int = 3
    direct_threshold: float = 0.87
    direct_margin: float = 0.015
    second_probability: float = 0.1

    def __post_init__(self) -> None:
        if not 0 < self.direct_threshold <= 1 or not 0 <= self.direct_margin <= 1:
            raise ConfigError("retrieve: need 0 < direct_threshold <= 1, 0 <= direct_margin <= 1")
        if not 0 < self.second_probability <= 1:
            raise ConfigError("retrieve: need 0 < second_probability <= 1")


GENERATE_MODES = ("compose", "auto", "always", "never")


@dataclass(frozen=True)
class GenerateConfig:
    mode: str = "compose"
    language: str = "customer"
    max_tokens: int = 160
    temperature: float = 0.1

    def __post_init__(self) -> None:
        if self.mode not in GENERATE_MODES:
            raise ConfigError(
                f"generate.mode must be one of {', '.join(GENERATE_MODES)}, not {self.mode!r}"
            )
        if self.language not in {"customer", "pivot"}:
            raise ConfigError("generate.language must be customer or pivot")


@dataclass(frozen=True)
class TranslateConfig:
    memory_min_similarity: float = 0.92
    max_tokens: int = 400


@dataclass(frozen=True)
class ModelConfig:
    cache_dir: Path
    url: str = ""
    engine: str = "llama.cpp"
    name: str = "qwen2.5-0.5b"
    served_name: str = "meridian"
    # "auto": the shop's adapter in var/adapters/ when there is one (embedded engine only),
    # else the base model; "": always the base model; a name: that adapter.
    adapter: str = "auto"
    adapter_dir: Path | None = None  # PEFT adapter the embedded engine serves as `adapter`
    vllm_python: str = ""  # interpreter of the vLLM venv (default ~/.cache/.../vllm-venv)
    api_key: str = "local"
    host: str = "127.0.0.1"
    port: int = 8181
    threads: int = 2
    context: int = 4096
    connect_timeout: float = 2.0
    first_token_timeout: float = 8.0
    read_timeout: float = 30.0
    retries: int = 2
    breaker_failures: int = 3
    breaker_reset_seconds: float = 20.0
    start_timeout: float = 240.0
    concurrency: int = 1
    queue_size: int = 8
    queue_wait: float = 3.0

    def __post_init__(self) -> None:
        if self.engine not in {"llama.cpp", "vllm"}:
            raise ConfigError(f"model.engine must be llama.cpp or vllm, not {self.engine!r}")
        if self.concurrency < 1 or self.queue_size < 0 or self.queue_wait < 0:
            raise ConfigError("model: need concurrency >= 1, queue_size >= 0, queue_wait >= 0")

    @property
    def embedded(self) -> bool:
        """True when the bot runs its own engine instead of calling ``url``."""
        return not self.url

    @property
    def base_url(self) -> str:
        return self.url.rstrip("/") if self.url else f"http://{self.host}:{self.port}/v1"

    @property
    def request_model(self) -> str:
        """The model name sent with each request: the adapter when one is configured."""
        return self.adapter or self.served_name


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8080
    allowed_origins: tuple[str, ...] = ()
    max_frame_bytes: int = 65536
    max_message_chars: int = 2000
    rate_limit_messages: int = 20  # per conversation, whatever its sockets and reconnects
    rate_limit_window: float = 60.0
    ip_rate_limit_messages: int = 120  # per client address and window; 0: no limit
    max_connections_per_ip: int = 50  # 0: no limit
    max_handshakes: int = 200  # connections not yet past their opening handshake
    handshake_timeout: float = 10.0
    trusted_proxies: tuple[str, ...] = ()  # addresses or networks (CIDR)
    client_ip_header: str = "X-Forwarded-For"  # read only from a trusted proxy
    idle_timeout: float = 600.0
    metrics_allow: tuple[str, ...] = ()  # peers that may read /metrics (CIDR); empty: any
    # Resume tokens: a new one with every welcome; the replaced one still works for
    # resume_token_grace seconds; all expire after resume_token_ttl idle seconds (0: never).
    resume_token_ttl: float = 7 * 24 * 3600.0
    resume_token_grace: float = 60.0

    def __post_init__(self) -> None:
        for name in ("max_frame_bytes", "max_message_chars", "rate_limit_messages"):
            if getattr(self, name) < 1:
                raise ConfigError(f"server.{name} must be at least 1")
        for name in ("ip_rate_limit_messages", "max_connections_per_ip"):
            if getattr(self, name) < 0:
                raise ConfigError(f"server.{name} must be 0 (no limit) or more")
        if self.max_handshakes < 1:
            raise ConfigError("server.max_handshakes must be at least 1")
        for name in ("rate_limit_window", "handshake_timeout", "idle_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"server.{name} must be more than 0 seconds")
        for name in ("resume_token_ttl", "resume_token_grace"):
            if getattr(self, name) < 0:
                raise ConfigError(f"server.{name} must be 0 or more seconds")
        if not self.client_ip_header.strip():
            raise ConfigError("server.client_ip_header must name a header")
        _ = self.trusted_networks  # a bad address fails at start-up
        _ = self.metrics_networks

    @property
    def trusted_networks(self) -> tuple[IPNetwork, ...]:
        """``trusted_proxies`` parsed: ``10.0.0.0/8``, ``127.0.0.1``, ``::1``."""
        try:
            return tuple(
                ipaddress.ip_network(p.strip(), strict=False) for p in self.trusted_proxies
            )
        except ValueError as exc:
            raise ConfigError(f"server.trusted_proxies: {exc}") from exc

    @property
    def metrics_networks(self) -> tuple[IPNetwork, ...]:
        """``metrics_allow`` parsed; empty: /metrics is open to any peer."""
        try:
            return tuple(ipaddress.ip_network(p.strip(), strict=False) for p in self.metrics_allow)
        except ValueError as exc:
            raise ConfigError(f"server.metrics_allow: {exc}") from exc


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite+aiosqlite:///var/bot.db"
    echo: bool = False
    sqlite_synchronous: str = "NORMAL"

    def __post_init__(self) -> None:
        if self.sqlite_synchronous.upper() not in {"NORMAL", "FULL", "EXTRA"}:
            raise ConfigError("database.sqlite_synchronous must be NORMAL, FULL or EXTRA")


@dataclass(frozen=True)
class PrivacyConfig:
    # Card numbers, IBANs, e-mail addresses and phone numbers are marked out before a model
    # or the stored trace sees a turn's text (bot/redact.py).
    redact: bool = True
    # The stored customer message keeps the original text for agents; false: redacted too.
    keep_original: bool = True
    # Conversations idle longer than this many days are deleted (`bot data purge`, and the
    # server once a day); 0 keeps them.
    retention_days: float = 0
    # Debugging only: let logs carry message text, tokens and database parameters (socket
    # frames at DEBUG, SQL parameters in errors). Off, no level logs any of them.
    log_content: bool = False

    def __post_init__(self) -> None:
        if self.retention_days < 0:
            raise ConfigError("privacy.retention_days must be >= 0 (0 keeps conversations)")


@dataclass(frozen=True)
class HandoffConfig:
    # While a conversation waits for an agent the bot still answers FAQ questions (its
    # place in the queue is kept); false: the bot stays silent until an agent or release.
    answer_while_queued: bool = True
    # Seconds in the queue without a claim before the customer is offered to leave a
    # message or go back to the bot.
    queue_timeout: float = 300.0

    def __post_init__(self) -> None:
        if not self.queue_timeout > 0:
            raise ConfigError("handoff.queue_timeout must be more than 0 seconds")


@dataclass(frozen=True)
class ConsoleConfig:
    session_hours: float = 12.0  # a console login lasts this long (server-side session row)
    # Secure cookies: "auto" when the request came over https (X-Forwarded-Proto from a
    # proxy), "always", or "never" (plain-http development only).
    secure_cookie: str = "auto"
    login_attempts: int = 5  # failed logins per client address and per name, per window
    login_window: float = 300.0
    # The model that translates agents' replies: "" the reply model ([model]); a registry
    # name (`bot model list`): a second embedded engine on translate_port, started on first
    # use; an http(s) URL: an OpenAI-compatible server (its /v1 base).
    translate_model: str = ""
    translate_port: int = 0  # the second engine's port; 0: model.port + 1
    translate_threads: int = 0  # the second engine's threads; 0: model.threads

    def __post_init__(self) -> None:
        if not self.session_hours > 0:
            raise ConfigError("console.session_hours must be more than 0")
        if self.secure_cookie not in {"auto", "always", "never"}:
            raise ConfigError("console.secure_cookie must be auto, always or never")
        if self.login_attempts < 1:
            raise ConfigError("console.login_attempts must be at least 1")
        if not self.login_window > 0:
            raise ConfigError("console.login_window must be more than 0 seconds")
        if not 0 <= self.translate_port < 65536:
            raise ConfigError("console.translate_port must be 0 (model.port + 1) or a port")
        if self.translate_threads < 0:
            raise ConfigError("console.translate_threads must be 0 (model.threads) or more")
        model = self.translate_model.strip()
        if "://" in model:
            if model.partition("://")[0] not in {"http", "https"}:
                raise ConfigError("console.translate_model: a URL must be http:// or https://")
        elif model:
            from bot.models.registry import MODELS  # here: bot.models imports this module

            if model not in MODELS:
                raise ConfigError(
                    f"console.translate_model {model!r} is neither a URL nor a known model "
                    f"({', '.join(sorted(MODELS))})"
                )

    def translation_model(self, model: ModelConfig) -> ModelConfig | None:
        """The [model] settings of the engine that translates agents' replies, derived from
        the reply model's (timeouts, threads, cache); None: the reply model itself. The
        reply model's LoRA adapter is never applied: it was trained for another model."""
        value = self.translate_model.strip()
        if not value:
            return None
        if "://" in value:
            return dataclasses.replace(model, url=value, adapter="", adapter_dir=None)
        return dataclasses.replace(
            model, name=value, url="", port=self.translate_port or model.port + 1,
            threads=self.translate_threads or model.threads, adapter="", adapter_dir=None,
        )  # fmt: skip


@dataclass(frozen=True)
class BusConfig:
    # Redis for several `bot serve` processes sharing one PostgreSQL database: events fan
    # out through pub/sub, bot turns take a per-conversation lock. Empty: one process,
    # events stay in it. Secrets in the URL belong in BOT_BUS__REDIS_URL.
    redis_url: str = ""
    prefix: str = "bot"  # channel and key prefix: processes sharing it talk to each other
    timeout: float = 2.0  # seconds for one Redis command

    def __post_init__(self) -> None:
        scheme = self.redis_url.partition("://")[0] if "://" in self.redis_url else ""
        if self.redis_url and scheme not in {"redis", "rediss", "unix"}:
            raise ConfigError("bus.redis_url must be redis://, rediss:// or unix:// (or empty)")
        if not self.prefix or any(c.isspace() for c in self.prefix):
            raise ConfigError("bus.prefix must be a non-empty name without spaces")
        if not self.timeout > 0:
            raise ConfigError("bus.timeout must be more than 0 seconds")


@dataclass(frozen=True)
class Config:
    shop: ShopConfig
    detect: DetectConfig
    retrieve: RetrieveConfig
    generate: GenerateConfig
    translate: TranslateConfig
    model: ModelConfig
    server: ServerConfig
    database: DatabaseConfig
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    handoff: HandoffConfig = field(default_factory=HandoffConfig)
    console: ConsoleConfig = field(default_factory=ConsoleConfig)
    bus: BusConfig = field(default_factory=BusConfig)
    root: Path = field(default=PROJECT_ROOT)

    def replace(self, **sections: Any) -> Config:
        """A copy with some sections' fields changed: ``cfg.replace(model={"url": u})``."""
        changes = {
            name: dataclasses.replace(getattr(self, name), **fields)
            for name, fields in sections.items()
        }
        return dataclasses.replace(self, **changes)


_SECTIONS: dict[str, type[Any]] = {
    "shop": ShopConfig,
    "detect": DetectConfig,
    "retrieve": RetrieveConfig,
    "generate": GenerateConfig,
    "translate": TranslateConfig,
    "model": ModelConfig,
    "server": ServerConfig,
    "database": DatabaseConfig,
    "privacy": PrivacyConfig,
    "handoff": HandoffConfig,
    "console": ConsoleConfig,
    "bus": BusConfig,
}


def load_config(
    path: Path | str | None = None, *, environ: Mapping[str, str] | None = None
) -> Config:
    """Read ``config.toml`` (or ``path``), apply environment overrides, validate."""
    path = Path(path) if path else DEFAULT_CONFIG
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    _apply_env(raw, os.environ if environ is None else environ)
    base = path.resolve().parent
    sections = {name: _build(cls, raw.get(name, {}), name, base) for name, cls in _SECTIONS.items()}
    unknown = set(raw) - set(_SECTIONS)
    if unknown:
        raise ConfigError(f"{path}: unknown section(s) {sorted(unknown)}")
    sections["model"] = resolve_adapter(sections["model"], base / ADAPTERS_DIR)
    return Config(root=base, **sections)


def resolve_adapter(model: ModelConfig, directory: Path) -> ModelConfig:
    """``model.adapter = "auto"``: the newest complete PEFT adapter in ``directory`` (served
    by the embedded engine under its folder's name), else the base model. With ``model.url``
    the bot does not know what the remote engine serves: "auto" means the base model there.
    A named adapter without ``adapter_dir`` is looked for in ``directory`` too."""
    if model.adapter != "auto":
        if model.adapter and model.adapter_dir is None and _is_adapter(directory / model.adapter):
            return dataclasses.replace(model, adapter_dir=directory / model.adapter)
        return model
    if model.adapter_dir is not None:
        return dataclasses.replace(model, adapter=model.adapter_dir.name)
    found = [] if model.url or not directory.is_dir() else [
        d for d in directory.iterdir()
        if _is_adapter(d) and not d.name.startswith(".") and d.name != model.served_name
    ]  # fmt: skip
    if not found:
        return dataclasses.replace(model, adapter="")
    newest = max(found, key=lambda d: ((d / "adapter_model.safetensors").stat().st_mtime, d.name))
    return dataclasses.replace(model, adapter=newest.name, adapter_dir=newest)


def _is_adapter(path: Path) -> bool:
    return (path / "adapter_config.json").is_file() and (
        path / "adapter_model.safetensors"
    ).is_file()


def _apply_env(raw: dict[str, Any], environ: Mapping[str, str]) -> None:
    for key, value in environ.items():
        if not key.startswith(ENV_PREFIX) or "__" not in key:
            continue
        section, _, name = key[len(ENV_PREFIX) :].lower().partition("__")
        if section in _SECTIONS:
            raw.setdefault(section, {})[name] = value


def _build(cls: type[Any], values: dict[str, Any], section: str, base: Path) -> Any:
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - known
    if unknown:
        raise ConfigError(f"[{section}]: unknown key(s) {sorted(unknown)}")
    kwargs = {}
    for name, value in values.items():
        kwargs[name] = _coerce(value, hints[name], f"{section}.{name}", base)
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"[{section}]: {exc}") from exc


def _coerce(value: Any, hint: Any, where: str, base: Path) -> Any:
    """Convert TOML or environment-string values to the field's declared type."""
    try:
        if isinstance(hint, types.UnionType) and Path in typing.get_args(hint):
            return _coerce(value, Path, where, base) if str(value).strip() else None
        if hint is Path:
            p = Path(os.path.expanduser(str(value)))
            return p if p.is_absolute() else base / p
        if hint is bool:
            if isinstance(value, str):
                return value.strip().lower() in {"1", "true", "yes", "on"}
            return bool(value)
        if hint is int:
            return int(value)
        if hint is float:
            return float(value)
        if typing.get_origin(hint) is tuple:
            if isinstance(value, str):
                value = [v.strip() for v in value.split(",") if v.strip()]
            return tuple(str(v) for v in value)
        if hint is str or isinstance(hint, types.UnionType):
            return str(value)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: cannot use {value!r}: {exc}") from exc
    return value
