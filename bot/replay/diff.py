"""``bot replay diff OLD NEW``: turn by turn, what changed between two runs or recordings.

OLD and NEW are results files (``bot replay run --out``), cassettes, or replay files (their
cassette is read): whatever holds turn outcomes. Conversations are matched by id, turns by
number. Printed per changed turn: FAQ ids, handoff, detected language, source, and the
reply as a word diff (``[-removed-]{+added+}``; CJK and Thai compared character by
character).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence
from pathlib import Path

from bot.replay.format import CASSETTE_SUFFIX, cassette_path
from bot.replay.results import TurnOutcome, load_outcomes

Outcomes = dict[str, list[TurnOutcome]]
# Words of spaced scripts; every other visible character on its own (Han, kana, Thai...).
_TOKEN = re.compile(
    r"[A-Za-z0-9\u00c0-\u024f\u0370-\u03ff\u0400-\u04ff\u0590-\u06ff\uac00-\ud7af'’_.,:;#%$€£/-]+"
    r"|\s+|."
)


def load_side(path: Path) -> Outcomes:
    """Outcomes per conversation from a results file, a cassette, or a replay file."""
    if path.suffix in (".yaml", ".yml") and not path.name.endswith(CASSETTE_SUFFIX):
        path = cassette_path(path)
    return load_outcomes(path)


def diff(old: Outcomes, new: Outcomes) -> list[str]:
    """Lines saying what changed; empty when nothing did."""
    out: list[str] = []
    for cid in sorted(set(old) | set(new)):
        if cid not in new:
            out.append(f"- {cid}: only in OLD")
            continue
        if cid not in old:
            out.append(f"+ {cid}: only in NEW")
            continue
        changes = conversation_diff(old[cid], new[cid])
        if changes:
            out.append(cid)
            out += changes
    return out


def conversation_diff(old: Sequence[TurnOutcome], new: Sequence[TurnOutcome]) -> list[str]:
    out: list[str] = []
    for n in range(max(len(old), len(new))):
        a = old[n] if n < len(old) else None
        b = new[n] if n < len(new) else None
        if a is None or b is None:
            which = "OLD" if b is None else "NEW"
            turn = a or b
            assert turn is not None
            out.append(f"  turn {turn.turn}: only in {which}: {_short(turn.text)}")
            continue
        lines = turn_diff(a, b)
        if lines:
            out.append(f"  turn {b.turn}  {b.kind}: {_short(b.text)}")
            out += [f"    {line}" for line in lines]
    return out


def turn_diff(a: TurnOutcome, b: TurnOutcome) -> list[str]:
    lines = []
    if a.text != b.text:
        lines.append(f"text: {_short(a.text)!r} -> {_short(b.text)!r}")
    if a.faq_ids != b.faq_ids:
        lines.append(f"faq: [{', '.join(a.faq_ids)}] -> [{', '.join(b.faq_ids)}]")
    if (a.handoff, a.handoff_reason) != (b.handoff, b.handoff_reason):
        lines.append(f"handoff: {_handoff(a)} -> {_handoff(b)}")
    for name in ("language", "source", "reply_language", "error"):
        if getattr(a, name) != getattr(b, name):
            lines.append(f"{name}: {getattr(a, name)} -> {getattr(b, name)}")
    if a.reply != b.reply:
        if a.reply is None or b.reply is None:
            lines.append(f"reply: {_said(a.reply)} -> {_said(b.reply)}")
        else:
            lines.append("reply: " + word_diff(a.reply, b.reply))
    return lines


def word_diff(a: str, b: str) -> str:
    """``b`` with what ``a`` had and ``b`` has not as ``[-...-]``, and what is new as
    ``{+...+}``; long unchanged stretches are shortened."""
    left, right = _TOKEN.findall(a), _TOKEN.findall(b)
    out: list[str] = []
    matcher = difflib.SequenceMatcher(None, left, right, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
        if op == "equal":
            same = "".join(left[i1:i2])
            out.append(same if len(same) <= 60 else f"{same[:25]}…{same[-25:]}")
            continue
        if i2 > i1:
            out.append(f"[-{''.join(left[i1:i2])}-]")
        if j2 > j1:
            out.append(f"{{+{''.join(right[j1:j2])}+}}")
    return " ".join("".join(out).split())


def _handoff(o: TurnOutcome) -> str:
    return (o.handoff_reason or "yes") if o.handoff else "no"


def _said(reply: str | None) -> str:
    return "silent" if reply is None else _short(reply)


def _short(text: str, limit: int = 80) -> str:
    value = " ".join(text.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"
