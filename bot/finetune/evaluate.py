"""``bot finetune eval``: the base model against the adapter on the test split.

One embedded engine (llama.cpp: the fastest here) serves the base model and the GGUF LoRA
by name; two pipelines, identical but for ``model.adapter``, answer every test case as the
first turn of a fresh conversation with ``generate.mode = "always"`` (the default
``compose`` mode does not call the model on most turns) and ``generate.language =
"customer"``. Per case and model:

- **chrF** (sacrebleu) of the reply the customer reads against the curated answer;
- **citation**: the model's own reply cites the expected FAQ id (``[faq.id]``); a reply the
  pipeline stopped because it was copying a passage word for word cites that passage;
- **grounding violation**: the faithfulness gate (bot/faithful.py) rejected the reply;
- **language**: the reply is in the customer's language (bot/detect.py, no hint);
- **placeholders**: the order number or SKU of the question is in the reply the customer
  reads; **references dropped**: the model's reply left it out, so the pipeline sent the
  composed reply (which acknowledges it) instead (bot/pipeline.py ``left_out``);
- **refusal/handoff**: off-topic and sensitive questions get no FAQ answer (a handoff, the
  "no answer" message, or the model's offer of a person); the others get an answer;
- **tokens** the model wrote and **latency** of the turn until its reply (the pivot
  translation that runs after the reply is left out).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import statistics
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bot.config import Config
from bot.finetune.data import Example, read_split
from bot.llm import Completion, LLMClient, Message
from bot.translate import normalize

MODELS = ("base", "adapter")
PATIENCE = 180.0  # seconds
_CITATION = re.compile(r"\[([a-z]+\.[a-z0-9_-]+)\]")
_GENERATE_PROMPT = "You are the customer-service assistant"
METRICS = (
    ("chrf", "chrF"),
    ("citation", "citation accuracy"),
    ("violations", "grounding violations"),
    ("language", "reply language right"),
    ("placeholders", "placeholders kept"),
    ("dropped", "references dropped by the model"),
    ("refusal", "refusal/handoff right"),
    ("tokens", "tokens per reply"),
    ("latency_ms", "latency per turn (ms)"),
)


class RecordingClient(LLMClient):
    """The real client; it also keeps each completion so the eval can read the model's own
    reply (with its citations) next to what the pipeline made of it. A generation the
    pipeline stopped midway (the gate refused a sentence, or the reply was copying a
    passage) is kept as what the model had written by then, finish reason ``stopped``, its
    streamed pieces counted as tokens."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.calls: list[tuple[Sequence[Message], Completion]] = []

    async def chat(self, messages: Sequence[Message], **kwargs: Any) -> Completion:
        pieces: list[str] = []
        if (on_delta := kwargs.get("on_delta")) is not None:

            async def tee(piece: str) -> None:
                pieces.append(piece)
                await on_delta(piece)

            kwargs["on_delta"] = tee
        try:
            completion = await super().chat(messages, **kwargs)
        except Exception:
            if pieces:
                model = kwargs.get("model") or self.config.request_model
                stopped = Completion("".join(pieces), model, "stopped", None, len(pieces))
                self.calls.append((messages, stopped))
            raise
        self.calls.append((messages, completion))
        return completion


@dataclass
class Outcome:
    model: str
    case: str
    language: str
    source: str  # the example's source: faq | specifics | refusal | conversation
    question: str
    reply: str
    path: str  # the pipeline's reply source: curated | generated | fallback | message
    raw: str  # the model's own reply ("" when the model was not called)
    served_by: str  # the model name the engine answered under
    chrf: float | None
    citation: bool | None
    violation: bool
    language_ok: bool
    placeholders: bool | None
    dropped: bool | None  # the model's reply left the reference out (replaced)
    refusal_ok: bool
    tokens: int | None
    latency_ms: float


def select_cases(examples: Sequence[Example], per_language: int) -> list[Example]:
    """The first ``per_language`` cases of each (language, source); 0: all."""
    if per_language <= 0:
        return list(examples)
    taken: dict[tuple[str, str], int] = defaultdict(int)
    out = []
    for e in sorted(examples, key=lambda e: (e.language, e.source, e.id)):
        if taken[e.language, e.source] < per_language:
            taken[e.language, e.source] += 1
            out.append(e)
    return out


async def answer_cases(
    config: Config, llm: LLMClient | None, cases: Sequence[Example], label: str,
    *, progress: bool = True,
) -> list[Outcome]:  # fmt: skip
    from tqdm import tqdm

    from bot.pipeline import Pipeline, TurnContext

    pipeline = await asyncio.to_thread(Pipeline.build, config, llm)
    refusals = [
        normalize(pipeline.knowledge.message(key, lang))
        for lang in config.shop.languages
        for key in ("no_answer", "handoff_offer")
    ]
    outcomes = []
    for case in tqdm(cases, desc=label, unit="case", disable=not progress):
        calls = llm.calls if isinstance(llm, RecordingClient) else []
        calls.clear()
        context = TurnContext(locale_hint=case.language)
        result = await pipeline.answer(case.question, context)
        raw, served, tokens = "", "", None
        for messages, completion in calls:
            if messages and str(messages[0].get("content", "")).startswith(_GENERATE_PROMPT):
                raw, served = completion.text, completion.model
                tokens = completion.completion_tokens
        generate = next((s for s in result.trace.stages if s.stage == "generate"), None)
        refused = (
            result.handoff
            or (result.source == "message" and not result.faq_ids)
            or any(r and r in normalize(result.reply) for r in refusals)
        )
        expect_refusal = case.expect == "refuse"
        cited = _CITATION.findall(raw)
        if generate is not None and generate.output.get("restating"):
            cited.append(str(generate.output["restating"]))  # stopped while copying it
        outcomes.append(
            Outcome(
                model=label,
                case=case.id,
                language=case.language,
                source=case.source,
                question=case.question,
                reply=result.reply,
                path=result.source,
                raw=raw,
                served_by=served,
                chrf=_chrf(result.reply, case.reference) if case.reference else None,
                citation=(case.faq_id in cited) if raw and case.faq_id else None,
                violation=bool(generate and generate.output.get("rejected")),
                language_ok=pipeline.detector.detect(result.reply).language == case.language,
                placeholders=all(s in result.reply for s in case.specifics)
                if case.specifics
                else None,
                dropped=any(
                    str(s.output.get("fallback_reason", "")).startswith("left out")
                    for s in result.trace.stages
                )
                if case.specifics
                else None,
                refusal_ok=refused == expect_refusal,
                tokens=tokens,
                latency_ms=_reply_latency(result.trace.stages),
            )
        )
    return outcomes


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _chrf(hypothesis: str, reference: str) -> float:
    from sacrebleu.metrics.chrf import CHRF

    return float(CHRF().sentence_score(hypothesis, [reference]).score)


def _reply_latency(stages: Sequence[Any]) -> float:
    """Milliseconds of the stages up to the reply (not the deferred pivot translation)."""
    last = len(stages)
    if (
        last
        and stages[-1].stage == "translate_in"
        and any(s.stage in ("generate", "localize", "compose") for s in stages[:-1])
    ):
        last -= 1
    return float(sum(s.ms for s in stages[:last]))


def summarize(outcomes: Sequence[Outcome]) -> dict[str, dict[str, dict[str, float]]]:
    """``summary[model][language or "all"][metric]``."""
    groups: dict[str, dict[str, list[Outcome]]] = defaultdict(lambda: defaultdict(list))
    for o in outcomes:
        groups[o.model][o.language].append(o)
        groups[o.model]["all"].append(o)
    return {
        model: {lang: _rates(items) for lang, items in sorted(rows.items())}
        for model, rows in groups.items()
    }


def _rates(items: Sequence[Outcome]) -> dict[str, float]:
    def mean(values: Sequence[float]) -> float:
        return statistics.fmean(values) if values else float("nan")

    tokens = [float(o.tokens) for o in items if o.tokens is not None]
    return {
        "n": float(len(items)),
        "model_calls": float(sum(bool(o.raw) for o in items)),
        "chrf": mean([o.chrf for o in items if o.chrf is not None]),
        "citation": mean([float(o.citation) for o in items if o.citation is not None]),
        "violations": mean([float(o.violation) for o in items if o.raw]),  # of model replies
        "language": mean([float(o.language_ok) for o in items]),
        "placeholders": mean([float(o.placeholders) for o in items if o.placeholders is not None]),
        "dropped": mean([float(o.dropped) for o in items if o.dropped is not None]),
        "refusal": mean([float(o.refusal_ok) for o in items]),
        "tokens": mean(tokens),
        "latency_ms": mean([o.latency_ms for o in items]),
        "latency_p50_ms": statistics.median([o.latency_ms for o in items]) if items else 0.0,
    }


def report_markdown(
    summary: dict[str, dict[str, dict[str, float]]], outcomes: Sequence[Outcome], notes: str
) -> str:
    lines = [notes.rstrip(), "", "## Overall", ""]
    keys = [k for k, _ in METRICS] + ["latency_p50_ms"]
    labels = dict(METRICS) | {"latency_p50_ms": "median latency (ms)"}
    lines.append("| metric | " + " | ".join(summary) + " |")
    lines.append("|---" * (len(summary) + 1) + "|")
    for key in keys:
        cells = [_fmt(key, summary[m]["all"][key]) for m in summary]
        lines.append(f"| {labels[key]} | " + " | ".join(cells) + " |")
    lines.append(
        "| cases (model calls) | "
        + " | ".join(
            f"{int(summary[m]['all']['n'])} ({int(summary[m]['all']['model_calls'])})"
            for m in summary
        )
        + " |"
    )
    lines += ["", "## Per language", ""]
    head = ["language"] + [f"{label} {m}" for key, label in METRICS[:4] for m in summary]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|---" * len(head) + "|")
    languages = sorted({lang for rows in summary.values() for lang in rows if lang != "all"})
    for lang in languages:
        cells = [
            _fmt(key, summary[m].get(lang, {}).get(key, float("nan")))
            for key, _ in METRICS[:4]
            for m in summary
        ]
        lines.append(f"| {lang} | " + " | ".join(cells) + " |")
    lines += ["", "## Examples (first of each language, adapter)", ""]
    seen: set[str] = set()
    for o in outcomes:
        if o.model != "adapter" or o.language in seen or o.source != "faq":
            continue
        seen.add(o.language)
        lines.append(f"- **{o.language}** {o.question!r} -> [{o.path}] {o.reply[:220]!r}")
    return "\n".join(lines) + "\n"


def _fmt(key: str, value: float) -> str:
    if value != value:  # NaN: no case of that kind
        return "-"
    if key in ("chrf", "tokens") or key.startswith("latency"):
        return f"{value:.1f}" if key != "latency_ms" and key != "latency_p50_ms" else f"{value:.0f}"
    return f"{value * 100:.1f} %"


async def run_eval(
    config: Config,
    data: Path,
    adapter: Path,
    *,
    name: str,
    out: Path,
    run: Path | None = None,
    per_language: int = 0,
    languages: Sequence[str] | None = None,
    progress: bool = True,
) -> str:
    """Serve base + adapter on llama.cpp, answer the test cases with both, write the report."""
    import time

    from bot.models.engines import start_from_config

    test = read_split(data, "test")
    cases = select_cases(
        [e for e in test if not languages or e.language in languages], per_language
    )
    # Generous timeouts: this measures what each model writes; a shared CPU must not turn a
    # slow prefill into a fallback (the latency is reported as measured).
    model = dataclasses.replace(
        config.model, url="", engine="llama.cpp", adapter="", adapter_dir=None,
        port=_free_port(), first_token_timeout=PATIENCE, read_timeout=PATIENCE,
    )  # fmt: skip
    cfg = config.replace(generate={"mode": "always", "language": "customer"})
    started = time.time()
    async with start_from_config(model, adapters={name: adapter}, progress=progress):
        outcomes: list[Outcome] = []
        for label, requested in (("base", ""), ("adapter", name)):
            turn_cfg = cfg.replace(
                model={"url": model.base_url, "adapter": requested,
                       "first_token_timeout": PATIENCE, "read_timeout": PATIENCE}
            )  # fmt: skip
            async with RecordingClient(turn_cfg.model) as llm:
                outcomes += await answer_cases(turn_cfg, llm, cases, label, progress=progress)
    seconds = time.time() - started
    notes = (
        f"{len(cases)} test cases ({per_language or 'all'} per language and source), each "
        f'answered by both models through the pipeline (generate.mode = "always", '
        f'generate.language = "customer") on llama.cpp ({model.name}, {model.threads} '
        f"threads), {seconds / 60:.1f} min in all. Adapter: {adapter}."
    )
    return await asyncio.to_thread(write_outputs, outcomes, out, run, notes)


def write_outputs(outcomes: Sequence[Outcome], out: Path, run: Path | None, notes: str) -> str:
    """eval.json, eval.md, metrics.png (and loss.png from the run's history) in ``out``."""
    from bot.finetune.plots import plot_loss, plot_metrics
    from bot.finetune.train import HISTORY, History

    summary = summarize(outcomes)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"summary": summary, "cases": [asdict(o) for o in outcomes]}
    (out / "eval.json").write_text(
        json.dumps(payload, ensure_ascii=False, indent=1, default=str) + "\n", encoding="utf-8"
    )
    per_lang = {m: {k: v for k, v in rows.items() if k != "all"} for m, rows in summary.items()}
    shown = [m for m in METRICS if m[0] in ("chrf", "citation", "language", "latency_ms")]
    plot_metrics(per_lang, shown, out / "metrics.png")
    if run is not None and (run / HISTORY).is_file():
        plot_loss(History.load(run / HISTORY), out / "loss.png")
    report = report_markdown(summary, outcomes, notes)
    (out / "eval.md").write_text(report, encoding="utf-8")
    return report
