"""Reports of a replay run: per-turn text for people, JUnit XML for CI.

XFAIL es.yaml :: es-pedido-y-plazo  (es-ES, 3 turns, 0.25 s)  Where is my order…
  1  customer  Hola, ¿dónde está mi pedido #48213?
      bot       [es · composed · orders.track] Sobre tu pedido #48213: desde aquí…
      ok        language es · faq orders.track · … · placeholders #48213
  …
  3  customer  Vale, muchas gracias
      bot       [es · message · no FAQ] Lo siento, no he encontrado una respuesta…
      XFAIL     contains: not in the reply: 'de nada'
                known: 'Vale, muchas gracias' is not recognized as thanks…
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence

from bot.replay.results import (
    ERROR,
    FAIL,
    NONE,
    PASS,
    SKIP,
    XFAIL,
    XPASS,
    ConversationResult,
    TurnOutcome,
    TurnVerdict,
)
from bot.replay.runner import FileResult

WIDTH = 150  # characters of a reply shown in the report
_LABEL = {PASS: "ok", FAIL: "FAIL", XFAIL: "XFAIL", XPASS: "XPASS", ERROR: "ERROR", SKIP: "skip"}


def text_report(
    files: Sequence[FileResult], *, quiet: bool = False, seconds: float | None = None
) -> str:
    """Every conversation turn by turn (``quiet``: only those that did not pass), and the
    figures at the end."""
    out: list[str] = []
    for file in files:
        for note in file.notes:
            out.append(f"note  {file.file.path.name}: {note}")
        for result in file.conversations:
            if quiet and result.status in (PASS, XFAIL):
                continue
            out += conversation_report(result)
    out.append(summary(files, seconds=seconds))
    return "\n".join(out) + "\n"


def conversation_report(result: ConversationResult) -> list[str]:
    conv = result.conversation
    name = conv.path.name if conv.path else "?"
    head = f"{result.status.upper():5} {name} :: {conv.id}  ({conv.locale}, "
    head += f"{len(conv.turns)} turns, {result.seconds:.2f} s)"
    lines = [head + (f"  {conv.title}" if conv.title else "")]
    if result.error:
        lines.append(f"      {result.error}")
    lines += [f"      note: {n}" for n in result.notes]
    for v in result.verdicts:
        lines += turn_report(v)
    return [*lines, ""]


def turn_report(v: TurnVerdict) -> list[str]:
    o = v.outcome
    pad = " " * 6
    if o.kind == "agent":
        lines = [f"{o.turn:>3}  agent     {v.turn.agent or 'Agent'}: {_short(o.text)}"]
        if v.turn.leave:
            lines.append(f"{pad}          (leaves: the bot answers again)")
    elif o.kind == "action":
        lines = [f"{o.turn:>3}  customer  [{o.text.replace('_', ' ')}]"]
    else:
        locale = f"  (page locale now {v.turn.locale})" if v.turn.locale else ""
        lines = [f"{o.turn:>3}  customer  {_short(o.text)}{locale}"]
    if o.error:
        lines.append(f"{pad}ERROR     {o.error}")
        return lines
    if o.kind == "customer":
        if o.reply is None:
            lines.append(f"{pad}bot       (silent: a person has the conversation)")
        else:
            tags = " · ".join(
                x for x in (o.language, o.source, ", ".join(o.faq_ids) or "no FAQ") if x
            )
            lines.append(f"{pad}bot       [{tags}] {_short(o.reply)}")
    for event in o.events:
        if event["type"] == "handoff":
            lines.append(f"{pad}handoff   {event['reason']}")
        elif event["type"] == "system":
            lines.append(f"{pad}system    {_short(str(event['text']))}")
    if o.note:
        lines.append(f"{pad}note      {o.note}")
    if v.status == NONE:
        pass
    elif v.problems:
        label = _LABEL[v.status]
        lines += [f"{pad}{label:<9} {p}" for p in v.problems]
        if v.turn.xfail:
            lines.append(f"{pad}          known: {v.turn.xfail}")
    else:
        lines.append(f"{pad}{_LABEL[v.status]:<9} " + " · ".join(v.passed))
        if v.status == XPASS:
            lines.append(f"{pad}          marked xfail ({v.turn.xfail}): remove the xfail")
    if v.unchecked:
        lines.append(f"{pad}unchecked {', '.join(v.unchecked)} (not on the wire)")
    changed = reply_change(v.recorded, o)
    if changed:
        lines.append(f"{pad}changed   since recording: {changed}")
    return lines


def reply_change(then: TurnOutcome | None, now: TurnOutcome) -> str | None:
    """The reply's change since it was recorded, as an inline word diff; None if none."""
    if then is None or now.kind != "customer" or then.reply == now.reply or now.error:
        return None
    if then.reply is None or now.reply is None:
        return f"{_said(then.reply)} -> {_said(now.reply)}"
    from bot.replay.diff import word_diff

    return _short(word_diff(then.reply, now.reply), 400)


def summary(files: Sequence[FileResult], *, seconds: float | None = None) -> str:
    results = [r for f in files for r in f.conversations]
    convs = Counter(r.status for r in results)
    turns = Counter(v.status for r in results for v in r.verdicts)
    total_turns = sum(len(r.conversation.turns) for r in results)
    conv_line = ", ".join(f"{convs[s]} {s}" for s in (PASS, XFAIL, FAIL, ERROR) if convs[s])
    turn_parts = [f"{turns[s]} {s}" for s in (PASS, XFAIL, FAIL, XPASS, ERROR) if turns[s]]
    if turns[NONE]:
        turn_parts.append(f"{turns[NONE]} without expectations")
    line = f"{len(results)} conversations: {conv_line or 'none'}; "
    line += f"{total_turns} turns: {', '.join(turn_parts) or 'none'}"
    if seconds is not None:
        line += f"; {seconds:.1f} s"
    return line


def failed(files: Sequence[FileResult]) -> bool:
    return any(r.status in (FAIL, ERROR) for f in files for r in f.conversations)


# -- JUnit ------------------------------------------------------------------------------------


def junit_xml(files: Sequence[FileResult], *, name: str = "bot replay") -> str:
    """One <testsuite> per replay file, one <testcase> per conversation. A conversation whose
    only failures are its ``xfail`` turns is <skipped type="xfail"> (as pytest reports it)."""
    root = ET.Element("testsuites", name=name)
    totals: Counter[str] = Counter()
    for file in files:
        suite = ET.SubElement(root, "testsuite", name=str(file.file.path))
        counts: Counter[str] = Counter()
        for result in file.conversations:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"replay.{file.file.path.stem}",
                name=result.conversation.id,
                file=str(file.file.path),
                time=f"{result.seconds:.3f}",
            )
            status = result.status
            body = "\n".join(conversation_report(result))
            if status == ERROR:
                first = (result.failures() or ["error"])[0]
                ET.SubElement(case, "error", message=_clean(first)).text = _clean(body)
            elif status == FAIL:
                message = "; ".join(result.failures())
                ET.SubElement(case, "failure", message=_clean(message)).text = _clean(body)
            elif status == XFAIL:
                message = "; ".join(result.xfails())
                ET.SubElement(case, "skipped", type="xfail", message=_clean(message))
            ET.SubElement(case, "system-out").text = _clean(body)
            counts["tests"] += 1
            counts[{ERROR: "errors", FAIL: "failures", XFAIL: "skipped"}.get(status, "ok")] += 1
        seconds = sum(r.seconds for r in file.conversations)
        for key in ("tests", "failures", "errors", "skipped"):
            suite.set(key, str(counts[key]))
            totals[key] += counts[key]
        suite.set("time", f"{seconds:.3f}")
    for key in ("tests", "failures", "errors", "skipped"):
        root.set(key, str(totals[key]))
    ET.indent(root)
    return ET.tostring(root, encoding="unicode", xml_declaration=True) + "\n"


def _said(reply: str | None) -> str:
    return "silent" if reply is None else "answered"


def _clean(text: str) -> str:
    """XML 1.0 has no place for most control characters."""
    return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f]", "?", text)


def _short(text: str, limit: int = WIDTH) -> str:
    value = " ".join(text.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"
