"""The bot's exception tree.

::

    BotError                    base; ``code`` is machine-readable, safe to show
    ├── ConfigError             bad or missing configuration
    ├── KnowledgeError          knowledge/ files invalid (duplicate id, unknown template...)
    ├── IndexMissingError       the FAISS index has not been built (run `bot index`)
    ├── ModelError              acquiring or serving a model failed
    │   ├── ChecksumError       a joined model file has the wrong SHA-256
    │   └── EngineCrashError    the engine process dies (e.g. SIGILL: built for another CPU)
    ├── LLMError                the OpenAI-compatible engine failed a request
    │   ├── EngineUnavailable   connection refused / circuit open: fail fast
    │   ├── EngineTimeout       no first token or stalled stream
    │   ├── EngineBusy          admission control: no slot within the wait budget
    │   └── EngineRejected      the engine refused the request (HTTP 4xx): not its failure
    ├── TranslationError        a translation lost a placeholder or came back unusable
    ├── ProtocolError           a client frame broke the wire protocol
    │   └── RateLimited         a limit refused it (``reason``: conversation, address)
    └── StoreError              the database refused or is out of date
        └── SchemaOutOfDate     migrations not applied (run `bot db upgrade`)

Catch at the boundary (connection handler, CLI command), log the traceback, and show the
user only ``code`` and a short localized message.
"""

from __future__ import annotations


class BotError(Exception):
    code = "internal"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class ConfigError(BotError):
    code = "config"


class KnowledgeError(BotError):
    code = "knowledge"


class IndexMissingError(BotError):
    code = "index_missing"


class ModelError(BotError):
    code = "model"


class ChecksumError(ModelError):
    code = "checksum"


class EngineCrashError(ModelError):
    code = "engine_crash"


class LLMError(BotError):
    code = "engine_error"


class EngineUnavailable(LLMError):
    code = "engine_unavailable"


class EngineBusy(LLMError):
    code = "engine_busy"


class EngineRejected(LLMError):
    code = "engine_rejected"


class EngineTimeout(LLMError):
    code = "engine_timeout"


class TranslationError(BotError):
    code = "translation"


class ProtocolError(BotError):
    code = "bad_frame"


class RateLimited(ProtocolError):
    code = "rate_limited"

    def __init__(self, message: str, *, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


class StoreError(BotError):
    code = "store"


class SchemaOutOfDate(StoreError):
    code = "schema_out_of_date"
