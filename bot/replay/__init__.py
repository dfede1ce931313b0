"""Conversation replay tests: record real conversations, replay them deterministically.

    format.py    replay files (YAML): conversations, turns, expectations (docs/replay.md)
    cassette.py  the model's recorded answers, keyed by request; pinned and recording transports
    runner.py    one conversation through the real pipeline in-process, as the server runs it
    wire.py      one conversation against a running server over the chat protocol
    checks.py    expectations against what happened
    report.py    the per-turn text report, the JUnit XML, the results file
    diff.py      turn by turn, what changed between two runs or recordings
    record.py    export stored conversations, record new ones, re-record files
    cli.py       ``bot replay run|record|diff|list``

Errors (all ``BotError``; they belong in bot/errors.py's tree once it is opened to them)::

    ReplayError             a replay could not be carried out (code ``replay``)
    ├── ReplayFormatError   a replay file breaks the format; the message names file and turn
    └── CassetteMiss        a model request the cassette does not hold; names the turn
"""

from __future__ import annotations

from bot.errors import BotError


class ReplayError(BotError):
    code = "replay"


class ReplayFormatError(ReplayError):
    code = "replay_format"


class CassetteMiss(ReplayError):
    code = "cassette_miss"


__all__ = ["CassetteMiss", "ReplayError", "ReplayFormatError"]
