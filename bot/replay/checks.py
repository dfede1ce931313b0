"""A turn's expectations against its outcome: the verdict, and every problem in words."""

from __future__ import annotations

import unicodedata

from bot.replay.format import Expect, Turn
from bot.replay.results import (
    ERROR,
    FAIL,
    NONE,
    PASS,
    XFAIL,
    XPASS,
    TurnOutcome,
    TurnVerdict,
)

# What the chat protocol does not carry: checked in-process only.
NOT_ON_THE_WIRE = frozenset({"source"})
_ABOUT_THE_REPLY = ("faq", "faq_any", "source", "reply_language", "contains", "placeholders")


def verdict(
    turn: Turn,
    outcome: TurnOutcome,
    *,
    wire: bool = False,
    recorded: TurnOutcome | None = None,
    pinned: bool = False,
) -> TurnVerdict:
    """``pinned``: the model's answers come from the recording, so the turn must also do
    exactly what it did then (reply text, FAQ ids, handoff): a changed FAQ answer or prompt
    fails exactly the turns it changes, with the difference named."""
    problems, passed, unchecked = check(turn.expect, outcome, wire=wire)
    changed = since_recording(outcome, recorded) if pinned and recorded is not None else []
    problems += changed
    if outcome.error is not None:
        status = ERROR
    elif not turn.expect and not changed:
        status = NONE
    elif problems:
        status = XFAIL if turn.xfail else FAIL
    else:
        status = XPASS if turn.xfail else PASS
    return TurnVerdict(turn, outcome, status, problems, passed, unchecked, recorded)


def since_recording(now: TurnOutcome, then: TurnOutcome) -> list[str]:
    """What a turn does differently from its recording (empty when identical)."""
    if now.kind != "customer" or (then.reply is None and now.reply is None):
        return []
    problems = []
    if list(now.faq_ids) != list(then.faq_ids):
        problems.append(f"changed since recording: FAQ {then.faq_ids} -> {now.faq_ids}")
    if bool(now.handoff) != bool(then.handoff):
        problems.append(f"changed since recording: handoff {then.handoff} -> {now.handoff}")
    if (now.reply or "") != (then.reply or ""):
        problems.append(
            f"changed since recording: reply {_first_difference(then.reply, now.reply)}"
        )
    return problems


def _first_difference(then: str | None, now: str | None) -> str:
    a, b = then or "", now or ""
    at = next(
        (i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b))
    )
    start = max(0, at - 20)
    return f"from character {at}: {a[start : at + 40]!r} -> {b[start : at + 40]!r}"


def check(
    expect: Expect, outcome: TurnOutcome, *, wire: bool = False
) -> tuple[list[str], list[str], list[str]]:
    """(problems, expectations met, expectations not checkable here)."""
    problems: list[str] = []
    passed: list[str] = []
    unchecked: list[str] = []
    silent = outcome.reply is None
    for name, wanted in expect.items():
        if wire and name in NOT_ON_THE_WIRE:
            unchecked.append(name)
            continue
        if silent and name in _ABOUT_THE_REPLY:
            problems.append(f"{name}: the bot did not answer (a person has the conversation)")
            continue
        problem = _problem(name, wanted, outcome)
        if problem is None:
            passed.append(_met(name, wanted))
        else:
            problems.append(f"{name}: {problem}")
    return problems, passed, unchecked


def _problem(name: str, wanted: object, o: TurnOutcome) -> str | None:
    reply = o.reply or ""
    if name == "language":
        return None if o.language == wanted else f"expected {wanted}, detected {o.language}"
    if name == "reply_language":
        ok = o.reply_language == wanted
        return None if ok else f"expected {wanted}, the reply reads as {o.reply_language}"
    if name == "faq":
        assert isinstance(wanted, tuple)
        ok = list(wanted) == o.faq_ids
        return None if ok else f"expected {_ids(wanted)}, got {_ids(o.faq_ids)}"
    if name == "faq_any":  # the entry the reply answers with; "also" entries may follow
        assert isinstance(wanted, tuple)
        ok = bool(o.faq_ids) and o.faq_ids[0] in wanted
        return None if ok else f"expected an answer from {_ids(wanted)}, got {_ids(o.faq_ids)}"
    if name == "source":
        assert isinstance(wanted, tuple)
        ok = o.source in wanted
        return None if ok else f"expected {' or '.join(wanted)}, got {o.source}"
    if name == "handoff":
        if wanted == o.handoff:
            return None
        if wanted:
            return "expected a handoff to a person; the bot kept the conversation"
        return f"expected none; handed off ({o.handoff_reason})"
    if name == "handoff_reason":
        ok = o.handoff and o.handoff_reason == wanted
        got = o.handoff_reason if o.handoff else "no handoff"
        return None if ok else f"expected {wanted}, got {got}"
    assert isinstance(wanted, tuple)
    if name == "contains":
        missing = [t for t in wanted if _fold(t) not in _fold(reply)]
        return None if not missing else "not in the reply: " + ", ".join(map(repr, missing))
    if name == "not_contains":
        found = [t for t in wanted if _fold(t) in _fold(reply)]
        return None if not found else "in the reply: " + ", ".join(map(repr, found))
    if name == "placeholders":
        lost = [t for t in wanted if t not in reply]
        return None if not lost else "not kept verbatim: " + ", ".join(map(repr, lost))
    raise AssertionError(f"unknown expectation {name}")


def _met(name: str, wanted: object) -> str:
    if isinstance(wanted, tuple):
        shown = ", ".join(wanted) if wanted else "none"
    elif isinstance(wanted, bool):
        shown = "yes" if wanted else "no"
    else:
        shown = str(wanted)
    return f"{name} {shown}"


def _ids(ids: object) -> str:
    assert isinstance(ids, list | tuple)
    return "[" + ", ".join(str(i) for i in ids) + "]"


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()
