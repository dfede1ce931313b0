"""Making replay files: from the database, from a text file, or again for an existing file.

**From the database** (``bot replay record CONVERSATION_ID... --out FILE``). The store keeps
what the customer saw (the event log: their messages, the replies with language and FAQ ids,
handoffs, agent messages) and what the pipeline made of each message (detected language,
pivot, reply source, trace). It does not keep the model's raw answers, so the cassette is
made by running the conversation through today's pipeline again with a recording transport.
The file's recorded outcomes are what the customer saw; where today's run differs (the
knowledge, the index or the model changed since), the export says so, turn by turn.
Customer texts are exported with personal data marked out (cards, IBANs, e-mails, phones:
bot/redact.py): every stage of the pipeline saw them that way, so nothing is lost.

**From a text file** (``--from-text FILE``): one customer message per line; ``agent: …`` or
``agent(Name): …`` lines are agent turns, ``[talk_to_human]`` a press of the button, ``#``
starts a comment. The conversation is run and recorded.

**Again** (``--update FILE.yaml``): run the file's conversations and write a new cassette;
the YAML, with its expectations and comments, is not touched.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from bot.redact import redact
from bot.replay import ReplayError
from bot.replay.cassette import Cassette
from bot.replay.format import Conversation, Expect, ReplayFile, Turn, dumps
from bot.replay.results import TurnOutcome
from bot.replay.runner import FileResult, InProcess, record
from bot.store import Store

_AGENT_LINE = re.compile(r"^agent(?:\((?P<name>[^)]*)\))?\s*:\s*(?P<text>.+)$", re.IGNORECASE)
PLACEHOLDER_KINDS = ("order", "tracking", "sku", "price")


async def export(
    store: Store, runner: InProcess, conversation_id: str
) -> tuple[Conversation, list[TurnOutcome]]:
    """A stored conversation as a replay conversation, and what each turn showed then."""
    info = await store.conversation(conversation_id)
    events = await store.events_after(conversation_id, 0)
    rows = {r["seq"]: r for r in await store.messages(conversation_id)}
    turns: list[Turn] = []
    outcomes: list[TurnOutcome] = []
    by_client_id: dict[str, int] = {}
    handed_off, reason, last_reply_seq, reply_handed_off = False, None, -1, False

    def add(turn: Turn, outcome: TurnOutcome) -> TurnOutcome:
        turns.append(turn)
        outcomes.append(outcome)
        return outcome

    for event in events:
        p = event.payload
        if event.type == "ack":
            text = redact(str(p.get("text", ""))).text
            row = rows.get(event.seq) or {}
            o = add(
                Turn("customer", text),
                TurnOutcome(
                    len(turns) + 1, "customer", text,
                    language=row.get("language"), pivot=row.get("pivot_text"),
                    handoff=handed_off, handoff_reason=reason,
                ),
            )  # fmt: skip
            by_client_id[str(p.get("id"))] = len(outcomes) - 1
        elif event.type == "reply":
            index = by_client_id.get(str(p.get("reply_to")), len(outcomes) - 1)
            if index < 0:
                continue
            o, row = outcomes[index], rows.get(event.seq) or {}
            o.reply = str(p.get("text", ""))
            o.faq_ids = list(p.get("faq_ids") or [])
            o.language = p.get("lang") or o.language
            o.source = row.get("source")
            o.reply_language = runner.base.detector.detect(o.reply, hint=o.language).language
            o.events.append({"type": "reply", "lang": p.get("lang"), "faq_ids": o.faq_ids})
            last_reply_seq, reply_handed_off = event.seq, bool(row.get("handoff"))
        elif event.type == "handoff":
            handed_off, reason = True, str(p.get("reason"))
            # The bot's reply handed off (its stored message says so), or the customer pressed
            # "talk to a human" right after it.
            if event.seq == last_reply_seq + 1 and reply_handed_off and outcomes:
                o = outcomes[-1]
            else:  # the customer pressed "talk to a human"
                press = TurnOutcome(len(turns) + 1, "action", "talk_to_human")
                o = add(Turn("action", "talk_to_human"), press)
            o.handoff, o.handoff_reason = True, reason
            o.events.append({"type": "handoff", "reason": reason})
        elif event.type == "system" and outcomes:
            outcomes[-1].events.append({"type": "system", "text": p.get("text")})
        elif event.type == "agent.message":
            name = str(p.get("agent") or "Agent")
            text = str(p.get("text", ""))
            add(
                Turn("agent", text, agent=name),
                TurnOutcome(
                    len(turns) + 1, "agent", text, handoff=True, handoff_reason=reason,
                    events=[{"type": "agent.message", "agent": name, "text": text}],
                ),
            )  # fmt: skip
        elif event.type == "agent.left" and turns and turns[-1].kind == "agent":
            turns[-1] = replace(turns[-1], leave=True)
            handed_off, reason = False, None
            outcomes[-1].handoff, outcomes[-1].handoff_reason = False, None
    if not turns:
        raise ReplayError(f"conversation {conversation_id} has no customer messages")
    conv = Conversation(
        id=conversation_id,
        locale=info.locale or runner.base.config.shop.default_language,
        turns=tuple(turns),
        title=f"exported from the database ({info.language})",
    )
    return conv, outcomes


def from_text(text: str, *, conversation_id: str, locale: str, market: str | None) -> Conversation:
    """A conversation from a plain text file (see the module docstring)."""
    turns: list[Turn] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        agent = _AGENT_LINE.match(line)
        if agent:
            turns.append(Turn("agent", agent["text"].strip(), agent=agent["name"] or None))
        elif line == "[talk_to_human]":
            turns.append(Turn("action", "talk_to_human"))
        else:
            turns.append(Turn("customer", line))
    if not turns:
        raise ReplayError("no messages in the text file")
    return Conversation(id=conversation_id, locale=locale, market=market, turns=tuple(turns))


def pin(conv: Conversation, outcomes: Sequence[TurnOutcome], runner: InProcess) -> Conversation:
    """The conversation with what each turn did as its expectations: a regression baseline
    to review (where the bot was wrong, replace the expectation and mark the turn xfail)."""
    turns = []
    for turn, o in zip(conv.turns, outcomes, strict=True):
        if turn.kind == "agent" or o.error:
            turns.append(turn)
            continue
        if o.reply is None:
            expect = Expect(handoff=o.handoff)
        else:
            spans = runner.base.masker.find(o.text)
            kept = tuple(
                dict.fromkeys(
                    s.text for s in spans if s.kind in PLACEHOLDER_KINDS and s.text in o.reply
                )
            )
            expect = Expect(
                language=o.language,
                faq=tuple(o.faq_ids),
                handoff=o.handoff,
                handoff_reason=o.handoff_reason if o.handoff else None,
                reply_language=o.reply_language,
                placeholders=kept,
            )
        turns.append(replace(turn, expect=expect))
    return replace(conv, turns=tuple(turns))


def describe(o: TurnOutcome, rerun: TurnOutcome | None = None) -> str | None:
    """A comment for the replay file: what the bot did in this turn."""
    if o.kind == "agent":
        return None
    if o.error:
        return f"error: {o.error}"
    lines = []
    if o.kind == "customer":
        if o.reply is None:
            lines.append("bot: silent (a person has the conversation)")
        else:
            tags = " · ".join(x for x in (o.language, o.source, ", ".join(o.faq_ids)) if x)
            lines.append(f"bot ({tags}): {_short(o.reply)}")
    if any(e.get("type") == "handoff" for e in o.events):
        lines.append(f"handed off: {o.handoff_reason}")
    if rerun is not None and (rerun.faq_ids, rerun.handoff) != (o.faq_ids, o.handoff):
        lines.append(
            f"today's pipeline differs: faq [{', '.join(rerun.faq_ids)}], "
            f"handoff {rerun.handoff_reason if rerun.handoff else 'no'}"
        )
    return "\n".join(lines) or None


def divergences(
    conv: Conversation, stored: Sequence[TurnOutcome], rerun: Sequence[TurnOutcome]
) -> list[str]:
    """Where today's pipeline does not do what the customer saw."""
    out = []
    for then, now in zip(stored, rerun, strict=False):
        what = []
        if then.faq_ids != now.faq_ids:
            what.append(f"faq [{', '.join(then.faq_ids)}] -> [{', '.join(now.faq_ids)}]")
        if then.handoff != now.handoff:
            what.append(f"handoff {then.handoff} -> {now.handoff}")
        if then.reply != now.reply:
            what.append("reply text")
        if what:
            out.append(f"{conv.where(then.turn)}: today's pipeline differs: {'; '.join(what)}")
    return out


async def record_new(
    runner: InProcess,
    path: Path,
    conversations: Sequence[Conversation],
    *,
    stored: dict[str, list[TurnOutcome]],
    model: bool,
    pin_expectations: bool,
) -> tuple[FileResult, Cassette, str]:
    """Run ``conversations`` with a recording transport: the result, the cassette and the
    replay file's text (``save`` writes them). ``stored``: what the customer saw in exported
    conversations, kept as the recording's outcomes; where today's run differs, the file
    result's notes say so."""
    file = replay_file(path, conversations)
    result, cassette = await record(runner, file, model=model)
    notes: dict[tuple[str, int], str] = {}
    written = []
    for conv_result in result.conversations:
        conv, rerun = conv_result.conversation, conv_result.outcomes
        shown = stored.get(conv.id, rerun)
        if conv.id in stored:
            cassette.conversations[conv.id]["turns"] = [o.as_dict() for o in shown]
            result.notes += divergences(conv, shown, rerun)
        for then, now in zip(shown, rerun, strict=True):
            note = describe(then, now if conv.id in stored else None)
            if note:
                notes[(conv.id, then.turn)] = note
        written.append(pin(conv, shown, runner) if pin_expectations else conv)
    return result, cassette, dumps(written, notes=notes)


def save(path: Path, text: str, cassette: Cassette) -> None:
    """The replay file and its cassette beside it."""
    path.write_text(text, encoding="utf-8")
    cassette.save(replay_file(path, []).cassette_path)


def ensure_new(path: Path, *, force: bool) -> None:
    if path.exists() and not force:
        raise ReplayError(f"{path} exists: use --update to re-record it, or --force")


def replay_file(path: Path, conversations: Sequence[Conversation]) -> ReplayFile:
    return ReplayFile(path, tuple(replace(c, path=path) for c in conversations))


def _short(text: str, limit: int = 110) -> str:
    value = " ".join(text.split())
    return value if len(value) <= limit else value[: limit - 1] + "…"
