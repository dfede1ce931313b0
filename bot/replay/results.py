"""What a replayed turn did, what was expected of it, and the verdict: plain values.

``TurnOutcome`` is the same whether the turn ran in-process, over the wire or was read from
a recording, so any two of them can be compared (``bot replay diff``).
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from bot.replay import ReplayError
from bot.replay.format import Conversation, Turn

VERSION = 1
# Verdicts of one turn. "none": no expectations, the turn only records.
PASS, FAIL, XFAIL, XPASS = "pass", "fail", "xfail", "xpass"
ERROR, SKIP, NONE = "error", "skip", "none"


@dataclass
class TurnOutcome:
    """What happened in one turn, as the customer and the trace saw it."""

    turn: int
    kind: str  # customer | agent | action
    text: str
    language: str | None = None  # detected language of the customer's message
    pivot: str | None = None  # the message in the pivot language
    faq_ids: list[str] = field(default_factory=list)
    source: str | None = None  # curated | composed | generated | fallback | message
    reply: str | None = None  # None: the bot did not answer (a person has the conversation)
    reply_language: str | None = None  # the reply text's language, detected
    handoff: bool = False  # a person has the conversation after this turn
    handoff_reason: str | None = None
    events: list[dict[str, Any]] = field(default_factory=list)  # what the customer received
    note: str | None = None
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v not in (None, [], False)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TurnOutcome:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class TurnVerdict:
    turn: Turn
    outcome: TurnOutcome
    status: str
    problems: list[str] = field(default_factory=list)
    passed: list[str] = field(default_factory=list)  # expectations met, in words
    unchecked: list[str] = field(default_factory=list)  # not checkable in this mode
    recorded: TurnOutcome | None = None  # the same turn when it was recorded

    @property
    def failed(self) -> bool:
        return self.status in (FAIL, XPASS, ERROR)


@dataclass
class ConversationResult:
    conversation: Conversation
    mode: str  # pinned | live | wire | record
    verdicts: list[TurnVerdict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None  # it could not run at all (no cassette, no server)

    @property
    def status(self) -> str:
        counts = Counter(v.status for v in self.verdicts)
        if self.error or counts[ERROR]:
            return ERROR
        if counts[FAIL] or counts[XPASS]:
            return FAIL
        return XFAIL if counts[XFAIL] else PASS

    @property
    def outcomes(self) -> list[TurnOutcome]:
        return [v.outcome for v in self.verdicts]

    def failures(self) -> list[str]:
        """One line per failing turn: ``turn 2: faq: expected ..., got ...``."""
        out = [f"{self.conversation.where()}: {self.error}"] if self.error else []
        for v in self.verdicts:
            if v.status == ERROR:
                out.append(f"turn {v.outcome.turn}: error: {v.outcome.error}")
            elif v.status == FAIL:
                out += [f"turn {v.outcome.turn}: {p}" for p in v.problems]
            elif v.status == XPASS:
                out.append(
                    f"turn {v.outcome.turn}: passes although marked xfail ({v.turn.xfail}): "
                    "the bot gets it right now, remove the xfail"
                )
        return out

    def xfails(self) -> list[str]:
        return [
            f"turn {v.outcome.turn}: {v.turn.xfail}" for v in self.verdicts if v.status == XFAIL
        ]


# -- the results file (``bot replay run --out``) ----------------------------------------------


def results_json(results: Sequence[ConversationResult], mode: str) -> str:
    """Every conversation's turns and verdicts; no timings, so two runs of the same suite on
    the same code and knowledge write the same bytes."""
    data = {
        "version": VERSION,
        "mode": mode,
        "conversations": {
            r.conversation.id: {
                "file": r.conversation.path.name if r.conversation.path else None,
                "status": r.status,
                "error": r.error,
                "turns": [
                    {**v.outcome.as_dict(), "status": v.status, "problems": v.problems}
                    for v in r.verdicts
                ],
            }
            for r in results
        },
    }
    return json.dumps(data, ensure_ascii=False, indent=1, sort_keys=True) + "\n"


def load_outcomes(path: Path) -> dict[str, list[TurnOutcome]]:
    """Turn outcomes per conversation id from a results file or a cassette."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ReplayError(f"{path}: cannot read: {exc}") from exc
    conversations = data.get("conversations") if isinstance(data, dict) else None
    if not isinstance(conversations, dict):
        raise ReplayError(f"{path}: neither a results file nor a cassette")
    return {
        cid: [TurnOutcome.from_dict(t) for t in conv.get("turns", [])]
        for cid, conv in conversations.items()
    }
