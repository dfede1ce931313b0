"""Composed replies: what the customer reads when their message carries something of their own.

"Wo ist meine Bestellung 48213? Ich warte seit 2 Wochen." or "Can I return shoes I wore once?"
are not answered by free generation (the small models contradict the policy, echo the
question, promise what nobody committed to). The reply is composed instead:

    acknowledgement of the customer's specifics   (a localizer's template, slots filled from
                                                    the spans the masker found: {order}...)
    + the curated localized answer, verbatim       (what the policy says, in their language)
    [+ "This may also apply:" + a second answer]   (when two entries are nearly tied)

The templates live in ``knowledge/compose/LL.toml`` (format: docs/knowledge.md), with the
checker's lexicon for that language (``[check]``: yes/no words, promise patterns, and the
grant / negation / state patterns of the conditions check).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from bot.errors import KnowledgeError
from bot.knowledge import STATES
from bot.mask import Span

# Which specific the acknowledgement names, when the customer gave several.
SLOT_ORDER = ("order", "tracking", "sku", "product", "price")
_KIND_SLOT = {"order": "order", "tracking": "tracking", "sku": "sku", "term": "product",
              "price": "price"}  # fmt: skip
_ACK_KEYS = (*SLOT_ORDER, "generic", "also")


@dataclass(frozen=True)
class CheckLexicon:
    """Per language: words that answer yes or no, patterns of promises or actions, and for
    the conditions check: granting a return/exchange/refund/cancellation/change, negating
    or restricting it, and naming each excluded state of an item or order (``STATES``)."""

    yes: tuple[str, ...]
    no: tuple[str, ...]
    promise: tuple[re.Pattern[str], ...]
    grant: tuple[re.Pattern[str], ...] = ()
    negation: tuple[re.Pattern[str], ...] = ()
    states: Mapping[str, tuple[re.Pattern[str], ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ComposeTexts:
    language: str
    acknowledge: Mapping[str, str]
    check: CheckLexicon

    def acknowledgement(self, specifics: Sequence[Span]) -> str:
        """The sentence that acknowledges the first specific by SLOT_ORDER, else ``generic``."""
        by_slot: dict[str, str] = {}
        for span in specifics:
            slot = _KIND_SLOT.get(span.kind)
            if slot is not None:
                by_slot.setdefault(slot, span.text)
        for slot in SLOT_ORDER:
            if slot in by_slot:
                return self.acknowledge[slot].replace("{" + slot + "}", by_slot[slot])
        return self.acknowledge["generic"]


def compose(acknowledgement: str, answer: str, also: tuple[str, str] | None = None) -> str:
    """Acknowledgement, the curated answer, and optionally ``(lead-in, second answer)``."""
    parts = [acknowledgement.strip(), answer.strip()]
    if also is not None:
        parts.append(f"{also[0].strip()} {also[1].strip()}")
    return "\n\n".join(p for p in parts if p)


def load_compose(knowledge_dir: Path, languages: Sequence[str]) -> dict[str, ComposeTexts]:
    """Read ``compose/LL.toml`` for every launch language; KnowledgeError if one is missing."""
    out: dict[str, ComposeTexts] = {}
    for language in languages:
        path = knowledge_dir / "compose" / f"{language}.toml"
        try:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise KnowledgeError(f"{path}: {exc}") from exc
        out[language] = _parse(path, language, data)
    return out


def _parse(path: Path, language: str, data: Mapping[str, object]) -> ComposeTexts:
    ack = data.get("acknowledge")
    check = data.get("check")
    if not isinstance(ack, dict) or not isinstance(check, dict):
        raise KnowledgeError(f"{path}: needs [acknowledge] and [check] tables")
    missing = [k for k in _ACK_KEYS if not isinstance(ack.get(k), str) or not ack[k].strip()]
    if missing:
        raise KnowledgeError(f"{path}: [acknowledge] lacks {', '.join(missing)}")
    for slot in SLOT_ORDER:
        if "{" + slot + "}" not in ack[slot]:
            raise KnowledgeError(f"{path}: acknowledge.{slot} must use the {{{slot}}} slot")
    states = check.get("states", {})
    if not isinstance(states, dict) or set(states) - set(STATES):
        raise KnowledgeError(f"{path}: [check.states] keys must be among {', '.join(STATES)}")
    lexicon = CheckLexicon(
        yes=tuple(w.lower() for w in check.get("yes", ())),
        no=tuple(w.lower() for w in check.get("no", ())),
        promise=_patterns(path, "promise", check.get("promise", ())),
        grant=_patterns(path, "grant", check.get("grant", ())),
        negation=_patterns(path, "negation", check.get("negation", ())),
        states={k: _patterns(path, f"states.{k}", v) for k, v in states.items()},
    )
    return ComposeTexts(language, {k: str(ack[k]) for k in _ACK_KEYS}, lexicon)


def _patterns(path: Path, key: str, raw: object) -> tuple[re.Pattern[str], ...]:
    if not isinstance(raw, list | tuple) or not all(isinstance(p, str) for p in raw):
        raise KnowledgeError(f"{path}: [check] {key} must be a list of patterns")
    try:
        return tuple(re.compile(p, re.IGNORECASE) for p in raw)
    except re.error as exc:
        raise KnowledgeError(f"{path}: bad {key} pattern: {exc}") from exc
