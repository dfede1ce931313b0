"""Replay files: conversations as a QA team writes them (YAML; the format is docs/replay.md).

    version: 1
    conversations:
      - id: es-order-status
        locale: es-ES
        turns:
          - customer: "¿Dónde está mi pedido #48213?"
            expect: {language: es, faq: orders.track, placeholders: ["#48213"]}
          - customer: "Quiero hablar con una persona"
            expect: {handoff: true, handoff_reason: customer_request}
          - agent: "Hola, soy Marta. Ya veo tu pedido #48213…"
            name: Marta

The loader rejects what it does not know (keys, sources, types) with the file, conversation
and turn in the message, and catches YAML's traps for customer text: an unquoted ``#``
starting a comment, ``no`` read as a boolean, duplicate keys.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from bot.replay import ReplayFormatError

VERSION = 1
SOURCES = ("curated", "composed", "generated", "fallback", "message")
ACTIONS = ("talk_to_human",)
CASSETTE_SUFFIX = ".cassette.json"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,79}$")
_LANG = re.compile(r"^[a-z]{2,3}$")
# Expectations holding someone's words: quoted or not, an unquoted " #" must not cut them.
_WORD_KEYS = ("contains", "not_contains", "placeholders")


@dataclass(frozen=True)
class Expect:
    """What a turn must show; ``None`` / empty: not checked."""

    language: str | None = None  # detected language of the customer's message
    faq: tuple[str, ...] | None = None  # the reply's FAQ ids, exactly (() = no FAQ answer)
    faq_any: tuple[str, ...] | None = None  # the reply's first FAQ id is one of these
    source: tuple[str, ...] | None = None  # the reply's source is one of these
    handoff: bool | None = None  # with a person after this turn
    handoff_reason: str | None = None
    reply_language: str | None = None  # the reply's text is in this language
    contains: tuple[str, ...] = ()  # case-insensitive
    not_contains: tuple[str, ...] = ()
    placeholders: tuple[str, ...] = ()  # verbatim in the reply: "#48213", "TRL-20431"

    def items(self) -> list[tuple[str, object]]:
        """The expectations that are set, in the format's order."""
        out: list[tuple[str, object]] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and value != f.default:  # faq: [] is set: "no FAQ answer"
                out.append((f.name, value))
        return out

    def __bool__(self) -> bool:
        return bool(self.items())


@dataclass(frozen=True)
class Turn:
    kind: str  # customer | agent | action
    text: str  # the customer's or agent's words; the action's name
    expect: Expect = field(default_factory=Expect)
    xfail: str | None = None  # a known error: the turn is expected to fail, and why
    locale: str | None = None  # customer: the page's locale changed before this message
    market: str | None = None  # customer: the market changed before this message (in-process)
    agent: str | None = None  # agent: display name
    leave: bool = False  # agent: leaves after this message; the bot answers again
    line: int = 0  # 1-based line of the turn in its file


@dataclass(frozen=True)
class Conversation:
    id: str
    locale: str
    turns: tuple[Turn, ...]
    title: str = ""
    market: str | None = None
    tags: tuple[str, ...] = ()
    path: Path | None = None
    line: int = 0

    def where(self, turn: int | None = None) -> str:
        """``es.yaml: es-order-status, turn 2`` for messages."""
        name = self.path.name if self.path else "<replay>"
        return f"{name}: {self.id}" + (f", turn {turn}" if turn else "")


@dataclass(frozen=True)
class ReplayFile:
    path: Path
    conversations: tuple[Conversation, ...]

    @property
    def cassette_path(self) -> Path:
        return cassette_path(self.path)


def cassette_path(path: Path) -> Path:
    """``tests/conversations/es.yaml`` -> ``tests/conversations/es.cassette.json``."""
    return path.with_name(path.stem + CASSETTE_SUFFIX)


def replay_files(paths: Iterable[Path]) -> list[Path]:
    """Files named, and every ``*.yaml`` / ``*.yml`` under the directories named, sorted."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.suffix in (".yaml", ".yml"))
        elif path.exists():
            out.append(path)
        else:
            raise ReplayFormatError(f"{path}: no such file or directory")
    return out


def load(path: Path) -> ReplayFile:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ReplayFormatError(f"{path}: cannot read: {exc}") from exc
    return loads(text, path)


def loads(text: str, path: Path = Path("<replay>")) -> ReplayFile:
    return _Parser(text, path).parse()


# -- parsing ------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str, path: Path) -> None:
        self.path = path
        self.lines = text.splitlines()
        self.loader = yaml.SafeLoader(text)

    def fail(self, node: yaml.Node | None, message: str) -> ReplayFormatError:
        line = f":{node.start_mark.line + 1}" if node is not None else ""
        return ReplayFormatError(f"{self.path}{line}: {message}")

    def parse(self) -> ReplayFile:
        try:
            root = self.loader.get_single_node()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            where = f"{self.path}:{mark.line + 1}" if mark else str(self.path)
            raise ReplayFormatError(f"{where}: not valid YAML: {exc.problem}") from exc
        except yaml.YAMLError as exc:
            raise ReplayFormatError(f"{self.path}: not valid YAML: {exc}") from exc
        finally:
            self.loader.dispose()
        if root is None:
            raise self.fail(None, "empty file")
        top = self.mapping(root, "the file", {"version", "conversations"})
        if "version" in top and self.value(top["version"]) != VERSION:
            raise self.fail(top["version"], f"unsupported version (this bot reads {VERSION})")
        if "conversations" not in top:
            raise self.fail(root, "no 'conversations' list")
        nodes = self.sequence(top["conversations"], "'conversations'")
        conversations = tuple(self.conversation(n) for n in nodes)
        seen: dict[str, int] = {}
        for conv in conversations:
            if conv.id in seen:
                raise ReplayFormatError(
                    f"{self.path}:{conv.line}: conversation id {conv.id!r} "
                    f"already used on line {seen[conv.id]}"
                )
            seen[conv.id] = conv.line
        return ReplayFile(self.path, conversations)

    def conversation(self, node: yaml.Node) -> Conversation:
        known = {"id", "title", "locale", "market", "tags", "turns"}
        m = self.mapping(node, "a conversation", known)
        for key in ("id", "locale", "turns"):
            if key not in m:
                raise self.fail(node, f"a conversation needs '{key}'")
        conv_id = self.string(m["id"], "'id'")
        if not _ID.match(conv_id):
            raise self.fail(m["id"], f"id {conv_id!r}: letters, digits, '.', '_', '-' only")
        turns = self.sequence(m["turns"], f"{conv_id}: 'turns'")
        if not turns:
            raise self.fail(m["turns"], f"{conv_id}: no turns")
        return Conversation(
            id=conv_id,
            locale=self.string(m["locale"], f"{conv_id}: 'locale'"),
            turns=tuple(self.turn(t, conv_id, n) for n, t in enumerate(turns, 1)),
            title=self.string(m["title"], f"{conv_id}: 'title'") if "title" in m else "",
            market=self.string(m["market"], f"{conv_id}: 'market'") if "market" in m else None,
            tags=self.strings(m["tags"], f"{conv_id}: 'tags'") if "tags" in m else (),
            path=self.path,
            line=node.start_mark.line + 1,
        )

    def turn(self, node: yaml.Node, conv_id: str, n: int) -> Turn:
        where = f"{conv_id}, turn {n}"
        m = self.mapping(node, where, None)
        kinds = [k for k in ("customer", "agent", "action") if k in m]
        if len(kinds) != 1:
            raise self.fail(node, f"{where}: a turn has one of 'customer', 'agent', 'action'")
        kind = kinds[0]
        allowed = {
            "customer": {"customer", "locale", "market", "expect", "xfail"},
            "agent": {"agent", "name", "leave"},
            "action": {"action", "expect", "xfail"},
        }[kind]
        self.known(m, allowed, where)
        text = self.string(m[kind], f"{where}: '{kind}'", words=kind != "action").strip()
        if not text:
            raise self.fail(m[kind], f"{where}: '{kind}' is empty")
        if kind == "action" and text not in ACTIONS:
            raise self.fail(m[kind], f"{where}: unknown action {text!r} (known: {ACTIONS})")
        expect = self.expect(m["expect"], where) if "expect" in m else Expect()
        xfail = self.string(m["xfail"], f"{where}: 'xfail'").strip() if "xfail" in m else None
        if xfail is not None and not expect:
            raise self.fail(m["xfail"], f"{where}: 'xfail' needs an 'expect' that fails")
        if xfail == "":
            raise self.fail(m["xfail"], f"{where}: 'xfail' needs a reason")
        leave = self.value(m["leave"]) if "leave" in m else False
        if not isinstance(leave, bool):
            raise self.fail(m["leave"], f"{where}: 'leave' is true or false")
        return Turn(
            kind=kind,
            text=text,
            expect=expect,
            xfail=xfail,
            locale=self.string(m["locale"], f"{where}: 'locale'") if "locale" in m else None,
            market=self.string(m["market"], f"{where}: 'market'") if "market" in m else None,
            agent=self.string(m["name"], f"{where}: 'name'") if "name" in m else None,
            leave=leave,
            line=node.start_mark.line + 1,
        )

    def expect(self, node: yaml.Node, where: str) -> Expect:
        names = {f.name for f in fields(Expect)}
        m = self.mapping(node, f"{where}: 'expect'", names)
        values: dict[str, Any] = {}
        for key, child in m.items():
            label = f"{where}: expect.{key}"
            if key in ("language", "reply_language"):
                values[key] = self.language(child, label)
            elif key in ("faq", "faq_any", "source"):
                values[key] = self.strings(child, label)
            elif key in _WORD_KEYS:
                values[key] = self.strings(child, label, words=True)
            elif key == "handoff":
                value = self.value(child)
                if not isinstance(value, bool):
                    raise self.fail(child, f"{label}: true or false")
                values[key] = value
            else:
                values[key] = self.string(child, label)
        if "faq_any" in values and not values["faq_any"]:
            raise self.fail(m["faq_any"], f"{where}: expect.faq_any: name at least one FAQ id")
        for source in values.get("source", ()):
            if source not in SOURCES:
                raise self.fail(m["source"], f"{where}: unknown source {source!r} ({SOURCES})")
        if values.get("handoff") is False and "handoff_reason" in values:
            raise self.fail(node, f"{where}: a handoff_reason with handoff: false")
        return Expect(**values)

    # -- typed values ----------------------------------------------------------------------

    def value(self, node: yaml.Node) -> Any:
        return self.loader.construct_object(node, deep=True)

    def mapping(self, node: yaml.Node, what: str, known: set[str] | None) -> dict[str, yaml.Node]:
        if not isinstance(node, yaml.MappingNode):
            raise self.fail(node, f"{what} is a mapping (key: value)")
        out: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            key = self.value(key_node)
            if not isinstance(key, str):
                raise self.fail(key_node, f"{what}: keys are names, not {key!r}")
            if key in out:
                raise self.fail(key_node, f"{what}: '{key}' given twice")
            out[key] = value_node
        if known is not None:
            self.known(out, known, what)
        return out

    def known(self, m: dict[str, yaml.Node], known: set[str], what: str) -> None:
        for key, node in m.items():
            if key not in known:
                names = ", ".join(sorted(known))
                raise self.fail(node, f"{what}: unknown key '{key}' (known: {names})")

    def sequence(self, node: yaml.Node, what: str) -> list[yaml.Node]:
        if not isinstance(node, yaml.SequenceNode):
            raise self.fail(node, f"{what} is a list")
        return list(node.value)

    def string(self, node: yaml.Node, what: str, *, words: bool = False) -> str:
        """A text; ``words``: someone's words, which an unquoted ' #' would cut short."""
        if not isinstance(node, yaml.ScalarNode):
            raise self.fail(node, f"{what} is a text")
        value = self.value(node)
        if not isinstance(value, str):
            raise self.fail(node, f"{what}: {node.value!r} is read as {value!r}: quote it")
        if words and node.style is None:
            rest = self.lines[node.end_mark.line][node.end_mark.column :]
            if re.match(r"\s+#", rest):
                raise self.fail(
                    node, f"{what}: YAML reads ' #' as the start of a comment: quote the text"
                )
        return value

    def strings(self, node: yaml.Node, what: str, *, words: bool = False) -> tuple[str, ...]:
        """A text or a list of texts."""
        if isinstance(node, yaml.ScalarNode):
            return (self.string(node, what, words=words),)
        return tuple(self.string(n, what, words=words) for n in self.sequence(node, what))

    def language(self, node: yaml.Node, what: str) -> str:
        value = self.string(node, what)
        if not _LANG.match(value):
            raise self.fail(node, f"{what}: {value!r} is not a language code (es, zh, ...)")
        return value


# -- writing ------------------------------------------------------------------------------

HEADER = """\
# Replay conversations (format: docs/replay.md). Run: bot replay run {name}
# Model answers for pinned runs: {cassette} (written by `bot replay record`).
"""


def dumps(conversations: Sequence[Conversation], *, notes: dict[tuple[str, int], str]) -> str:
    """A replay file, with ``notes[(conversation id, turn)]`` as a comment under each turn
    (what the bot said when it was recorded)."""
    name = conversations[0].path.name if conversations and conversations[0].path else "FILE"
    out = [HEADER.format(name=name, cassette=Path(name).stem + CASSETTE_SUFFIX)]
    out.append(f"version: {VERSION}\nconversations:\n")
    for conv in conversations:
        out.append(f"  - id: {conv.id}\n")
        if conv.title:
            out.append(f"    title: {_q(conv.title)}\n")
        out.append(f"    locale: {_q(conv.locale)}\n")
        if conv.market:
            out.append(f"    market: {_q(conv.market)}\n")
        if conv.tags:
            out.append(f"    tags: {_list(conv.tags)}\n")
        out.append("    turns:\n")
        for n, turn in enumerate(conv.turns, 1):
            out.append(_dump_turn(turn, notes.get((conv.id, n))))
    return "".join(out)


def _dump_turn(turn: Turn, note: str | None) -> str:
    lines = [f"      - {turn.kind}: {_q(turn.text)}"]
    if turn.kind == "agent":
        if turn.agent:
            lines.append(f"        name: {_q(turn.agent)}")
        if turn.leave:
            lines.append("        leave: true")
    if turn.locale:
        lines.append(f"        locale: {_q(turn.locale)}")
    if turn.market:
        lines.append(f"        market: {_q(turn.market)}")
    if note:
        lines += [f"        # {line}" for line in note.splitlines()]
    if turn.expect:
        lines.append("        expect:")
        for key, value in turn.expect.items():
            if isinstance(value, tuple):
                one = key in ("faq", "source") and len(value) == 1
                shown = _q(value[0]) if one else _list(value)
            elif isinstance(value, bool):
                shown = "true" if value else "false"
            else:
                shown = _q(str(value))
            lines.append(f"          {key}: {shown}")
    if turn.xfail:
        lines.append(f"        xfail: {_q(turn.xfail)}")
    return "\n".join(lines) + "\n"


def _q(text: str) -> str:
    """A YAML scalar: plain when that is safe and readable, else double-quoted (JSON)."""
    if re.fullmatch(r"[A-Za-z][A-Za-z0-9._-]*", text) and text.lower() not in _YAML_WORDS:
        return text
    return json.dumps(text, ensure_ascii=False)


def _list(items: Iterable[str]) -> str:
    return "[" + ", ".join(_q(i) for i in items) + "]"


_YAML_WORDS = frozenset({"yes", "no", "on", "off", "true", "false", "null", "y", "n", "none"})
