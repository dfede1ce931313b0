"""``bot eval replies``: are the bot's replies to turn-specific questions faithful to the policy?

Cases (``tests/data/replies/LL.toml``, format in docs/eval.md) were written by people who
read the policy: each names the FAQ entries that answer it, the deciding facts the reply
must state (``state``), the claims it must not make (``deny``) and the customer's specifics
it should repeat. Each case runs through the real pipeline; the reply is scored for

- contradiction: a ``deny`` pattern matches;
- missing deciding fact: a ``state`` pattern does not match;
- echo: the reply mostly repeats the customer's message;
- invented promise: a promise pattern of the language (``compose/LL.toml [check]``)
  matches the reply but not the curated answer of the entries it used;
- specifics: every listed specific appears in the reply.

A turn the bot declines ("I couldn't find an answer" + the offer of a person) or hands to a
person is counted as **abstained**: it states no fact and contradicts nothing; the
deciding-fact rate is over the turns it answered. Figures per language and per reply source
(curated / composed / generated / fallback / message).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from bot.errors import BotError
from bot.faithful import is_echo
from bot.localize import locality_for
from bot.pipeline import Pipeline, TurnContext, TurnResult

FAILURES = ("contradiction", "missing_fact", "echo", "promise")
COLUMNS = ("n", "answered", "faithful", *FAILURES, "abstained", "specifics", "right_faq")


@dataclass(frozen=True)
class Case:
    id: str
    language: str
    kind: str
    text: str
    faq: tuple[str, ...]
    state: tuple[str, ...]
    deny: tuple[str, ...]
    specifics: tuple[str, ...] = ()
    market: str | None = None


@dataclass
class Score:
    case: str
    language: str
    kind: str
    source: str
    text: str
    reply: str
    faq_ids: list[str]
    right_faq: bool
    contradiction: list[str] = field(default_factory=list)
    missing_fact: list[str] = field(default_factory=list)
    echo: bool = False
    promise: list[str] = field(default_factory=list)
    specifics_missing: list[str] = field(default_factory=list)
    abstained: bool = False  # "no answer" + the offer of a person: no fact stated

    @property
    def faithful(self) -> bool:
        """Answered, with the deciding fact, and nothing false, echoed or promised."""
        failed = self.contradiction or self.missing_fact or self.echo or self.promise
        return not self.abstained and not failed

    @property
    def harmless(self) -> bool:
        """Faithful, or an honest "no answer": nothing the customer reads is wrong."""
        return not (self.contradiction or self.echo or self.promise) and (
            self.abstained or not self.missing_fact
        )

    def failures(self) -> list[str]:
        return [name for name in FAILURES if getattr(self, name)]


def load_cases(directory: Path, languages: Iterable[str] | None = None) -> list[Case]:
    """Every case in ``directory/LL.toml``, languages in file-name order."""
    wanted = set(languages) if languages else None
    cases: list[Case] = []
    for path in sorted(directory.glob("*.toml")):
        data = tomllib.loads(path.read_text(encoding="utf-8"))
        language = str(data.get("language", path.stem))
        if wanted is not None and language not in wanted:
            continue
        for raw in data.get("case", []):
            try:
                cases.append(_case(raw, language))
            except (KeyError, TypeError, re.error) as exc:
                raise BotError(f"{path}: bad case {raw.get('id', '?')}: {exc!r}") from exc
    if not cases:
        raise BotError(f"no reply cases in {directory}")
    return cases


def _case(raw: dict[str, object], language: str) -> Case:
    def strings(key: str) -> tuple[str, ...]:
        value = raw.get(key, [])
        assert isinstance(value, list)
        return tuple(str(v) for v in value)

    for pattern in (*strings("state"), *strings("deny")):
        re.compile(pattern)
    market = raw.get("market")
    return Case(
        id=str(raw["id"]),
        language=language,
        kind=str(raw.get("kind", "edge")),
        text=str(raw["text"]),
        faq=strings("faq"),
        state=strings("state"),
        deny=strings("deny"),
        specifics=strings("specifics"),
        market=str(market) if market else None,
    )


def subset(cases: Sequence[Case], per_language: int) -> list[Case]:
    """The first ``per_language`` cases of each language: a pinned, quick sample."""
    taken: Counter[str] = Counter()
    out = []
    for case in cases:
        if taken[case.language] < per_language:
            out.append(case)
            taken[case.language] += 1
    return out


def score(case: Case, result: TurnResult, pipeline: Pipeline) -> Score:
    reply = result.reply
    flags = re.IGNORECASE | re.MULTILINE
    where = locality_for(pipeline.knowledge, case.language, market=case.market)
    curated = [pipeline.localizer.curated(f, where) or "" for f in result.faq_ids]
    # "No answer" with the offer of a person, or the person itself: no fact stated.
    abstained = result.source == "message" and (result.handoff or not result.faq_ids)
    lexicon = pipeline.checker.lexicons.get(case.language)
    promises = []
    if lexicon is not None and result.source != "message":  # not the bot's own sentences
        for pattern in lexicon.promise:
            found = pattern.search(reply)
            if found and not any(pattern.search(text) for text in curated):
                promises.append(found.group(0))
    return Score(
        case=case.id,
        language=case.language,
        kind=case.kind,
        source=result.source,
        text=case.text,
        reply=reply,
        faq_ids=result.faq_ids,
        right_faq=any(f in case.faq for f in result.faq_ids),
        contradiction=[] if abstained else [p for p in case.deny if re.search(p, reply, flags)],
        missing_fact=[] if abstained else [p for p in case.state if not re.search(p, reply, flags)],
        echo=is_echo(reply, case.text),
        promise=promises,
        specifics_missing=[] if abstained else [s for s in case.specifics if s not in reply],
        abstained=abstained,
    )


async def run(pipeline: Pipeline, cases: Sequence[Case], *, progress: bool = True) -> list[Score]:
    """Each case as the first turn of a fresh conversation, in its language."""
    scores = []
    for case in tqdm(cases, desc="replies", unit="case", disable=not progress):
        context = TurnContext(locale_hint=case.language, market=case.market)
        result = await pipeline.answer(case.text, context)
        scores.append(score(case, result, pipeline))
    return scores


def summarize(scores: Sequence[Score]) -> dict[str, dict[str, dict[str, float]]]:
    """Rates per language and per source: n, faithful, each failure, specifics, right FAQ."""
    groups: dict[str, dict[str, list[Score]]] = {"language": defaultdict(list), "source": {}}
    by_source: dict[str, list[Score]] = defaultdict(list)
    for s in scores:
        groups["language"][s.language].append(s)
        by_source[s.source].append(s)
    groups["source"] = by_source
    groups["language"]["all"] = list(scores)
    return {
        axis: {key: _rates(items) for key, items in sorted(members.items())}
        for axis, members in groups.items()
    }


def _rates(items: Sequence[Score]) -> dict[str, float]:
    """Rates over all turns, except the deciding fact and specifics: over answered turns."""
    n = len(items)
    answered = [s for s in items if not s.abstained]
    rates = {"n": float(n), "answered": len(answered) / n}
    rates["faithful"] = sum(s.faithful for s in answered) / max(1, len(answered))
    for name in FAILURES:
        pool = answered if name == "missing_fact" else items
        rates[name] = sum(bool(getattr(s, name)) for s in pool) / max(1, len(pool))
    rates["abstained"] = (n - len(answered)) / n
    rates["harmless"] = sum(s.harmless for s in items) / n
    rates["specifics"] = sum(not s.specifics_missing for s in answered) / max(1, len(answered))
    rates["right_faq"] = sum(s.right_faq for s in items) / n
    return rates


def report(scores: Sequence[Score], *, examples: int = 12) -> str:
    """A plain-text report: a table per axis, then failing examples."""
    summary = summarize(scores)
    cols = (*COLUMNS, "harmless")
    lines = [
        "faithful, missing_fact, specifics: of the answered turns; the rest: of all turns",
        "",
    ]
    for axis, rows in summary.items():
        lines.append(f"{'by ' + axis:12}" + "".join(f"{c:>14}" for c in cols))
        for key, rates in rows.items():
            cells = [f"{int(rates['n']):>14}"] + [f"{rates[c] * 100:13.1f}%" for c in cols[1:]]
            lines.append(f"{key:12}" + "".join(cells))
        lines.append("")
    failing = [s for s in scores if not s.harmless]
    lines.append(f"answered unfaithfully: {len(failing)} of {len(scores)}")
    for s in failing[:examples]:
        lines.append(f"- {s.case} [{s.source}] {', '.join(s.failures())}: {s.text!r}")
        lines.append(f"    -> {s.reply[:160]!r}")
        for name in ("contradiction", "missing_fact", "promise"):
            if getattr(s, name):
                lines.append(f"    {name}: {getattr(s, name)}")
    return "\n".join(lines)


def write_json(scores: Sequence[Score], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"summary": summarize(scores), "cases": [asdict(s) for s in scores]}
    path.write_text(json.dumps(payload, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
