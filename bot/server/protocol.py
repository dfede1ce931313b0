"""The customer chat protocol, version 1 (docs/protocol.md): client frames parsed into
values. No I/O here.

Client frames (``->``): ``hello``, ``message``, ``handoff.request``, ``handoff.cancel``,
``ticket``, ``typing``.
Server events (``<-``) are built in one place, bot/frames.py (``welcome``, ``ack``,
``typing``, ``reply.delta``, ``reply``, ``handoff``, ... ``error``), and encoded here.
The widget (bot/static/widget.js) mirrors both.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from bot.errors import ProtocolError
from bot.frames import STORED_EVENTS, TRANSIENT_EVENTS, VERSION, error, welcome

__all__ = [
    "STORED_EVENTS",
    "TRANSIENT_EVENTS",
    "VERSION",
    "ClientFrame",
    "encode",
    "error",
    "parse",
    "welcome",
]

MAX_ID_CHARS = 64
MAX_LOCALE_CHARS = 35
MAX_TOKEN_CHARS = 100
MAX_SEQ = 2**63 - 1  # a database BIGINT

# A lone surrogate ("\ud800" in the JSON) cannot be encoded, stored or sent back.
_SURROGATE = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
# Removed from stored text: NUL and the other control characters but newline and tab, and
# the bidi embeddings, overrides and isolates that make text display other than it reads.
_UNSTORED = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

ERROR_CODES = (
    "bad_frame",
    "unknown_type",
    "too_long",
    "rate_limited",
    "unsupported_version",
    "not_ready",
    "bad_resume",
    "internal",
)


@dataclass(frozen=True)
class Hello:
    locale: str
    resume: str | None = None
    last_seq: int = 0


@dataclass(frozen=True)
class Message:
    id: str
    text: str
    choice: str | None = None  # the FAQ id of a clarify button (one of the reply's choices)


@dataclass(frozen=True)
class HandoffRequest:
    pass


@dataclass(frozen=True)
class HandoffCancel:
    pass


@dataclass(frozen=True)
class TicketFrame:
    """A message left for the team when no agent claimed the handoff in time."""

    text: str


@dataclass(frozen=True)
class Typing:
    pass


ClientFrame = Hello | Message | HandoffRequest | HandoffCancel | TicketFrame | Typing


def parse(data: str | bytes) -> ClientFrame:
    """One client frame; ``ProtocolError`` (``bad_frame``, ``unknown_type``,
    ``unsupported_version``) when it breaks the protocol."""
    if not isinstance(data, str):
        raise ProtocolError("binary frames are not part of the protocol")
    try:
        frame = json.loads(data)
    except ValueError:
        raise ProtocolError("frame is not JSON") from None
    except RecursionError:  # "[[[[..." deeper than the interpreter's recursion limit
        raise ProtocolError("frame is nested too deeply") from None
    if not isinstance(frame, dict):
        raise ProtocolError("frame is not a JSON object")
    kind = frame.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("frame has no string 'type'")
    if kind == "hello":
        return _hello(frame)
    if kind == "message":
        message_id = _string(frame, "id", max_chars=MAX_ID_CHARS)
        if _CONTROL.search(message_id):
            raise ProtocolError("'id' holds control characters")
        text = clean_text(_string(frame, "text", allow_empty=True))
        if frame.get("choice") is None:
            return Message(id=message_id, text=text)
        choice = _string(frame, "choice", max_chars=MAX_ID_CHARS)
        if _CONTROL.search(choice):
            raise ProtocolError("'choice' holds control characters")
        return Message(id=message_id, text=text, choice=choice)
    if kind == "handoff.request":
        return HandoffRequest()
    if kind == "handoff.cancel":
        return HandoffCancel()
    if kind == "ticket":
        return TicketFrame(clean_text(_string(frame, "text")))
    if kind == "typing":
        return Typing()
    raise ProtocolError(f"unknown frame type {kind[:40]!r}", code="unknown_type")


def _hello(frame: dict[str, Any]) -> Hello:
    version = frame.get("v")
    if not _is_int(version):
        raise ProtocolError("hello needs an integer 'v'")
    if version != VERSION:
        raise ProtocolError(
            f"protocol version {version} is not supported", code="unsupported_version"
        )
    locale = _string(frame, "locale", max_chars=MAX_LOCALE_CHARS)
    resume = frame.get("resume")
    if resume is None:
        return Hello(locale)
    if not isinstance(resume, str) or not 0 < len(resume) <= MAX_TOKEN_CHARS:
        raise ProtocolError("'resume' must be a token string", code="bad_resume")
    if _SURROGATE.search(resume):  # its hash is the lookup key: it must encode
        raise ProtocolError("'resume' must be a token string", code="bad_resume")
    last_seq = frame.get("last_seq", 0)
    if not _is_int(last_seq) or not 0 <= last_seq <= MAX_SEQ:
        raise ProtocolError("'last_seq' must be a non-negative integer")
    return Hello(locale, resume, last_seq)


def _string(
    frame: dict[str, Any], key: str, *, max_chars: int = 0, allow_empty: bool = False
) -> str:
    value = frame.get(key)
    if not isinstance(value, str) or (not value and not allow_empty):
        raise ProtocolError(f"'{frame['type']}' needs a string '{key}'")
    if max_chars and len(value) > max_chars:
        raise ProtocolError(f"'{key}' is longer than {max_chars} characters")
    if _SURROGATE.search(value):
        raise ProtocolError(f"'{key}' holds a lone surrogate")
    return value


def clean_text(text: str) -> str:
    """Message text as stored: line breaks as ``\\n``, without NUL, the other control
    characters (tab stays) and bidi overrides."""
    return _UNSTORED.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# -- server frames (built in bot/frames.py) ---------------------------------------------------


def encode(frame: Mapping[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))
