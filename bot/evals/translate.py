"""``bot eval translate``: how well agents' replies reach customers, per direction.

Cases: ``tests/data/translate/{dev,test}/``; ``en.toml`` holds what agents write (order
numbers, amounts, dates, links, e-mail addresses, brand names inside), ``LL.toml`` the
reference translations, written to localizer quality in the register of
``knowledge/locales.toml``. The test split is reported; the dev split is for tuning and
plays the approved translation memory (pairs agents marked as good) in the agent path.

Systems, run side by side on the same cases in one run (language by language):

- ``raw``: the model with a plain prompt ("Translate the following English text into
  German"), no masking: the figure ARCHITECTURE.md quotes for the bare model;
- ``current``: ``Translator`` as the customer pipeline uses it (masking, three curated
  examples, memory);
- ``agent``: ``AgentTranslator``, the console's path (bot/agent_translate.py).

Per language: corpus chrF++ (sacrebleu, ``word_order=2``) of each system, the agent/raw
ratio against the 1.25x target, the share of protected spans that survive, latency
(median and p95 per reply) and, with ``--check``, how the back-translation warning relates
to quality. Typographic spaces (no-break, narrow no-break) count as spaces for scoring.
"""

from __future__ import annotations

import json
import re
import statistics
import time
import tomllib
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from bot.agent_translate import AgentTranslator, Render
from bot.errors import BotError
from bot.llm import LLMClient
from bot.mask import Masker
from bot.translate import LANGUAGE_NAMES, Translator

SYSTEMS = ("raw", "current", "agent")
TARGET_RATIO = 1.25
_SPACES = re.compile(r"[\u00a0\u202f\u2009\u200f\u200e]")


@dataclass(frozen=True)
class Case:
    split: str
    language: str
    id: str
    text: str  # what the agent wrote (English)
    reference: str


@dataclass(frozen=True)
class Output:
    case: Case
    system: str
    text: str | None  # None: no translation passed (scored as an empty reply)
    ms: float
    spans: int  # protected spans in the agent's text
    kept: int  # of them, present in the output (as written or as the locale writes them)
    engine: str = ""
    warnings: tuple[str, ...] = ()
    agreement: float | None = None  # back-translation chrF++ (agent, --check)
    error: str = ""


def load_split(directory: Path) -> dict[str, dict[str, str]]:
    """{language: {id: text}} of a split's files (``en`` included)."""
    out = {}
    for path in sorted(directory.glob("*.toml")):
        with path.open("rb") as f:
            data = tomllib.load(f)
        if data.get("language") != path.stem:
            raise ValueError(f"{path}: language must be {path.stem!r}")
        out[path.stem] = {str(k): str(v) for k, v in data["text"].items()}
    if "en" not in out:
        raise ValueError(f"{directory}: no en.toml")
    for language, texts in out.items():
        if set(texts) != set(out["en"]):
            diff = sorted(set(texts) ^ set(out["en"]))
            raise ValueError(f"{directory}/{language}.toml: ids differ from en.toml: {diff}")
    return out


def load_cases(directory: Path, languages: Sequence[str] | None = None) -> list[Case]:
    split = load_split(directory)
    return [
        Case(directory.name, language, cid, split["en"][cid], texts[cid])
        for language, texts in split.items()
        if language != "en" and (not languages or language in languages)
        for cid in sorted(texts)
    ]


def pairs(directory: Path) -> list[tuple[str, str, str]]:
    """(language, English text, reference) of a split: approved pairs for the memory."""
    split = load_split(directory)
    return [
        (language, split["en"][cid], text)
        for language, texts in split.items()
        if language != "en"
        for cid, text in texts.items()
    ]


def subset(cases: Sequence[Case], n: int) -> list[Case]:
    seen: dict[str, int] = {}
    out = []
    for case in cases:
        seen[case.language] = seen.get(case.language, 0) + 1
        if seen[case.language] <= n:
            out.append(case)
    return out


# -- the systems --------------------------------------------------------------------------


def raw_messages(text: str, target: str) -> list[dict[str, str]]:
    """The plain prompt: no masking, no examples, no register."""
    name = LANGUAGE_NAMES.get(target, target)
    return [
        {
            "role": "user",
            "content": f"Translate the following English text into {name}. "
            f"Reply with the translation only.\n\n{text}",
        }
    ]


System = Callable[[Case], Awaitable[Output]]


@dataclass
class Systems:
    """The systems of one run, sharing one model client, masker and locale renderers."""

    llm: LLMClient
    translator: Translator
    agent: AgentTranslator
    render: Mapping[str, Render]
    check: bool = False
    _masker: Masker = field(init=False)

    def __post_init__(self) -> None:
        self._masker = self.translator.masker

    def get(self, name: str) -> System:
        return {"raw": self.raw, "current": self.current, "agent": self.agent_path}[name]

    def _output(
        self, case: Case, system: str, text: str | None, started: float, **kw: Any
    ) -> Output:
        spans = self._masker.find(case.text)
        render = self.render[case.language]
        kept = sum(_kept(s.kind, s.text, text or "", render) for s in spans)
        ms = (time.perf_counter() - started) * 1000
        return Output(case, system, text, ms, len(spans), kept, **kw)

    async def raw(self, case: Case) -> Output:
        started = time.perf_counter()
        try:
            completion = await self.llm.chat(
                raw_messages(case.text, case.language), max_tokens=400, temperature=0.0
            )
        except BotError as exc:
            return self._output(case, "raw", None, started, error=str(exc))
        return self._output(case, "raw", completion.text.strip(), started, engine="llm")

    async def current(self, case: Case) -> Output:
        started = time.perf_counter()
        try:
            t = await self.translator.translate(
                case.text, "en", case.language, render=self.render[case.language]
            )
        except BotError as exc:
            return self._output(case, "current", None, started, error=str(exc))
        return self._output(case, "current", t.text, started, engine=t.engine)

    async def agent_path(self, case: Case) -> Output:
        started = time.perf_counter()
        try:
            t = await self.agent.translate(
                case.text, "en", case.language,
                render=self.render[case.language], check=self.check,
            )  # fmt: skip
        except BotError as exc:
            return self._output(
                case, "agent", None, started, error=str(exc), warnings=("translation_failed",)
            )
        return self._output(
            case, "agent", t.text, started, engine=t.engine,
            warnings=tuple(w.code for w in t.warnings), agreement=t.agreement,
        )  # fmt: skip


def _kept(kind: str, span: str, output: str, render: Render) -> bool:
    if span in output or render(kind, span) in output:
        return True
    if kind == "price":  # the same amount written another way ("24,90 €" for "€24.90")
        digits = re.sub(r"\D", "", span)
        return bool(digits) and digits in re.sub(r"\D", "", output)
    return False


async def run(
    systems: Mapping[str, System], cases: Sequence[Case], *, progress: bool = True
) -> list[Output]:
    """Language by language; within one, each system over its cases in a block (the
    engine reuses the prompt prefix a system's calls share)."""
    out = []
    bar = tqdm(total=len(cases) * len(systems), desc="translate", unit="call", disable=not progress)
    for language in dict.fromkeys(c.language for c in cases):
        mine = [c for c in cases if c.language == language]
        for name, system in systems.items():
            bar.set_postfix_str(f"{language} {name}")
            for case in mine:
                out.append(await system(case))
                bar.update()
    bar.close()
    return out


# -- scoring --------------------------------------------------------------------------------


def _norm(text: str) -> str:
    return _SPACES.sub(" ", text).replace("\u200f", "")


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus chrF++ (0-100)."""
    from sacrebleu.metrics.chrf import CHRF

    hyps = [_norm(h) for h in hypotheses]
    refs = [[_norm(r) for r in references]]
    return float(CHRF(word_order=2).corpus_score(hyps, refs).score)


def sentence_chrf(hypothesis: str, reference: str) -> float:
    from sacrebleu.metrics.chrf import CHRF

    return float(CHRF(word_order=2).sentence_score(_norm(hypothesis), [_norm(reference)]).score)


@dataclass(frozen=True)
class Row:
    language: str
    n: int
    chrf: dict[str, float]
    kept: dict[str, float]  # share of protected spans that survive
    median_ms: dict[str, float]
    p95_ms: dict[str, float]
    failed: dict[str, int]
    memory: int = 0  # agent replies taken whole from the translation memory
    ratio: float | None = None  # agent / raw
    warned: int = 0  # agent replies with at least one warning
    warned_chrf: float | None = None  # mean sentence chrF++ of the warned replies
    clear_chrf: float | None = None  # ... and of the others


def _p95(values: Sequence[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))] if ordered else 0.0


def summarize(outputs: Sequence[Output], language: str) -> Row:
    systems = list(dict.fromkeys(o.system for o in outputs))
    by = {s: [o for o in outputs if o.system == s] for s in systems}
    scores = {
        s: chrf([o.text or "" for o in os_], [o.case.reference for o in os_])
        for s, os_ in by.items()
    }
    agent = by.get("agent", [])
    warned = [o for o in agent if o.warnings]
    clear = [o for o in agent if not o.warnings]

    def mean_chrf(group: Sequence[Output]) -> float | None:
        if not group:
            return None
        return statistics.fmean(sentence_chrf(o.text or "", o.case.reference) for o in group)

    ratio = None
    if "agent" in scores and "raw" in scores and scores["raw"] > 0:
        ratio = scores["agent"] / scores["raw"]
    return Row(
        language=language,
        n=len(by[systems[0]]) if systems else 0,
        chrf=scores,
        kept={s: sum(o.kept for o in g) / max(1, sum(o.spans for o in g)) for s, g in by.items()},
        median_ms={s: statistics.median(o.ms for o in g) for s, g in by.items()},
        p95_ms={s: _p95([o.ms for o in g]) for s, g in by.items()},
        failed={s: sum(o.text is None for o in g) for s, g in by.items()},
        memory=sum(o.engine == "memory" for o in agent),
        ratio=ratio,
        warned=len(warned),
        warned_chrf=mean_chrf(warned),
        clear_chrf=mean_chrf(clear),
    )


def rows(outputs: Sequence[Output]) -> list[Row]:
    """One row per language, then ``mean`` (of the languages' figures)."""
    languages = list(dict.fromkeys(o.case.language for o in outputs))
    out = [summarize([o for o in outputs if o.case.language == lang], lang) for lang in languages]
    if len(out) > 1:
        out.append(_mean(out))
    return out


def _mean(per_language: Sequence[Row]) -> Row:
    systems = list(per_language[0].chrf)

    def avg(get: Callable[[Row], float]) -> float:
        return statistics.fmean(get(r) for r in per_language)

    ratios = [r.ratio for r in per_language if r.ratio is not None]
    return Row(
        language="mean",
        n=sum(r.n for r in per_language),
        chrf={s: avg(lambda r, s=s: r.chrf[s]) for s in systems},  # type: ignore[misc]
        kept={s: avg(lambda r, s=s: r.kept[s]) for s in systems},  # type: ignore[misc]
        median_ms={s: avg(lambda r, s=s: r.median_ms[s]) for s in systems},  # type: ignore[misc]
        p95_ms={s: max(r.p95_ms[s] for r in per_language) for s in systems},
        failed={s: sum(r.failed[s] for r in per_language) for s in systems},
        memory=sum(r.memory for r in per_language),
        ratio=statistics.fmean(ratios) if ratios else None,
        warned=sum(r.warned for r in per_language),
    )


def passed(table: Iterable[Row], target: float = TARGET_RATIO) -> bool:
    """Every language's agent/raw ratio reaches ``target``."""
    return all(r.ratio is not None and r.ratio >= target for r in table if r.language != "mean")


def report(table: Sequence[Row]) -> str:
    systems = list(table[0].chrf) if table else []
    head = f"{'':6s} {'n':>3s} " + " ".join(f"{s:>8s}" for s in systems)
    head += f" {'agent/raw':>9s}   kept% " + " ".join(f"{s[:5]:>5s}" for s in systems)
    head += "   median/p95 s " + " ".join(f"{s[:11]:>11s}" for s in systems) + "   fail  tm  warn"
    lines = [head]
    for r in table:
        ratio = f"{r.ratio:8.2f}x" if r.ratio is not None else f"{'-':>9s}"
        mark = " " if r.ratio is None or r.ratio >= TARGET_RATIO or r.language == "mean" else "!"
        lines.append(
            f"{r.language:6s} {r.n:3d} "
            + " ".join(f"{r.chrf[s]:8.1f}" for s in systems)
            + f" {ratio}{mark}        "
            + " ".join(f"{100 * r.kept[s]:5.0f}" for s in systems)
            + "                "
            + " ".join(f"{r.median_ms[s] / 1000:5.1f}/{r.p95_ms[s] / 1000:<5.1f}" for s in systems)
            + f"   {sum(r.failed.values()):4d} {r.memory:3d} {r.warned:5d}"
        )
    lines.append(
        f"chrF++ (sacrebleu, corpus, 0-100); target agent/raw >= {TARGET_RATIO}x (! = missed); "
        "kept: protected spans surviving; fail: no translation; tm: agent replies taken whole "
        "from the memory; warn: agent replies the console flags."
    )
    warned = [r for r in table if r.warned_chrf is not None and r.clear_chrf is not None]
    if warned:
        lines.append(
            "warned vs unwarned agent replies, mean sentence chrF++: "
            + ", ".join(f"{r.language} {r.warned_chrf:.0f}/{r.clear_chrf:.0f}" for r in warned)
        )
    return "\n".join(lines)


def markdown(table: Sequence[Row], meta: Mapping[str, Any]) -> str:
    systems = list(table[0].chrf) if table else []
    lines = [
        "# Translation of agents' replies (`bot eval translate`)",
        "",
        ", ".join(f"{k}: {v}" for k, v in meta.items()),
        "",
        "| lang | n | " + " | ".join(f"chrF++ {s}" for s in systems) + " | agent/raw | "
        + " | ".join(f"kept {s}" for s in systems) + " | "
        + " | ".join(f"s {s} (median/p95)" for s in systems) + " |",
        "|" + "---|" * (3 + 3 * len(systems)),
    ]  # fmt: skip
    for r in table:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        if r.ratio is not None and r.ratio < TARGET_RATIO and r.language != "mean":
            ratio += " (missed)"
        lines.append(
            f"| {r.language} | {r.n} | "
            + " | ".join(f"{r.chrf[s]:.1f}" for s in systems)
            + f" | {ratio} | "
            + " | ".join(f"{100 * r.kept[s]:.0f}%" for s in systems)
            + " | "
            + " | ".join(f"{r.median_ms[s] / 1000:.1f}/{r.p95_ms[s] / 1000:.1f}" for s in systems)
            + " |"
        )
    lines += ["", "![chrF++ per language](translate.png)", ""]
    return "\n".join(lines)


def write(
    outputs: Sequence[Output], table: Sequence[Row], directory: Path, meta: Mapping[str, Any]
) -> list[Path]:
    """translate.json (figures and every output), translate.md and translate.png."""
    directory.mkdir(parents=True, exist_ok=True)
    data = {
        "meta": dict(meta),
        "rows": [asdict(r) for r in table],
        "outputs": [
            {**asdict(o.case), "system": o.system, "output": o.text, "ms": round(o.ms, 1),
             "spans": o.spans, "kept": o.kept, "engine": o.engine,
             "warnings": list(o.warnings), "agreement": o.agreement, "error": o.error}
            for o in outputs
        ],
    }  # fmt: skip
    json_path = directory / "translate.json"
    json_path.write_text(json.dumps(data, ensure_ascii=False, indent=1), "utf-8")
    md = directory / "translate.md"
    md.write_text(markdown(table, meta), "utf-8")
    png = directory / "translate.png"
    plot(table, png)
    return [json_path, md, png]


def plot(table: Sequence[Row], path: Path) -> None:
    """Grouped bars: chrF++ per language and system, a tick at 1.25x the raw model."""
    import matplotlib  # type: ignore[import-not-found,unused-ignore]

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]

    languages = [r for r in table if r.language != "mean"]
    systems = list(table[0].chrf) if table else []
    width = 0.8 / max(1, len(systems))
    fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(languages) + 2), 4.5), dpi=110)
    for i, system in enumerate(systems):
        xs = [j + (i - (len(systems) - 1) / 2) * width for j in range(len(languages))]
        ax.bar(xs, [r.chrf[system] for r in languages], width, label=system)
    if "raw" in systems:
        for j, r in enumerate(languages):
            goal = TARGET_RATIO * r.chrf["raw"]
            ax.plot([j - 0.4, j + 0.4], [goal, goal], color="k", lw=1, ls="--")
    ax.set_xticks(range(len(languages)), [r.language for r in languages])
    ax.set(ylabel="chrF++", title="Agents' replies, en -> customer language (dashes: 1.25x raw)")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
