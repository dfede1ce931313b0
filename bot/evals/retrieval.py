"""``bot eval retrieval``: does a message find the FAQ that answers it, and how sure is it?

Development cases, kept apart from the FAQ's question variants (never used to train or to
tune wording): ``tests/data/questions/LL.toml`` (held-out questions, ``faq = "id"``, ``""``
for off-topic), ``tests/data/replies/LL.toml`` (long turn-specific messages, ``faq`` = the
acceptable ids) and ``tests/data/retrieval_dev/LL.toml`` (customer phrasing: typos, no
accents, very short, rambling with an order number, code-switching; off-topic and
shop-sounding questions no entry answers, ``faq = ""``). With ``--picks``, also the
customers' picks between a clarify reply's choices, from the database (``pick_cases``): the
question they asked, labelled with the entry they chose. ``bot eval picks`` writes those as
case files of the same format.

Per language: top-1 / top-3 of the ranking; what ``Retriever.decide`` does with answerable
cases (answered right, answered wrong = "confidently wrong", clarify, abstain) and how many
unanswerable ones it answers; and a precision/coverage curve of the confidence (PNG).
"""

from __future__ import annotations

import json
import struct
import tomllib
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from bot.knowledge import OUT_OF_SCOPE
from bot.retrieve import ANSWER, CLARIFY, Retriever
from bot.store import Pick

DEFAULT_SETS = (
    Path("tests/data/questions"),
    Path("tests/data/replies"),
    Path("tests/data/retrieval_dev"),
)
_BATCH = 32


@dataclass(frozen=True)
class Case:
    set: str  # the folder's name
    language: str
    text: str
    faq: tuple[str, ...]  # acceptable ids; () when nothing in the FAQ answers it


@dataclass(frozen=True)
class Outcome:
    case: Case
    ranked: tuple[str, ...]  # top 3 ids, _out_of_scope included
    confidence: float  # of ranked[0]
    action: str  # answer | clarify | abstain
    faq_ids: tuple[str, ...]  # the decision's ids

    @property
    def top1(self) -> bool:
        return self.ranked[0] in self.case.faq

    @property
    def top3(self) -> bool:
        return any(i in self.case.faq for i in self.ranked[:3])

    @property
    def right(self) -> bool:
        return self.action == ANSWER and self.faq_ids[0] in self.case.faq

    @property
    def wrong(self) -> bool:
        return self.action == ANSWER and self.faq_ids[0] not in self.case.faq


def load_cases(dirs: Iterable[Path], languages: Sequence[str] | None = None) -> list[Case]:
    cases = []
    for directory in dirs:
        for path in sorted(directory.glob("*.toml")):
            if languages and path.stem not in languages:
                continue
            with path.open("rb") as f:
                data = tomllib.load(f)
            for raw in data.get("case", []):
                faq = raw["faq"]
                ids = (faq,) if isinstance(faq, str) else tuple(faq)
                ids = tuple(i for i in ids if i)
                cases.append(Case(directory.name, path.stem, raw["text"], ids))
    return cases


def pick_cases(picks: Iterable[Pick]) -> list[Case]:
    """Customers' clarify picks as cases of the set ``picks``: the question, the chosen id."""
    return [Case("picks", p.language, p.question, (p.faq_id,)) for p in picks if p.language]


def write_picks(picks: Sequence[Pick], directory: Path) -> list[Path]:
    """The picks as ``LL.toml`` case files (the development-set format), one per language."""
    directory.mkdir(parents=True, exist_ok=True)
    by_language: dict[str, list[Pick]] = {}
    for pick in picks:
        if pick.language:
            by_language.setdefault(pick.language, []).append(pick)
    paths = []
    for language, mine in sorted(by_language.items()):
        lines = [
            f"# Customers' picks between a clarify reply's choices ({language}), from the",
            "# database: the question asked, labelled with the entry chosen. `bot eval picks`.",
            f'language = "{language}"',
        ]
        for pick in mine:
            lines += [
                "",
                "[[case]]",
                f"text = {json.dumps(pick.question, ensure_ascii=False)}",
                f"faq = {json.dumps(pick.faq_id)}",
                f"offered = {json.dumps(pick.offered)}",
                f"at = {json.dumps(pick.at.isoformat(timespec='seconds'))}",
            ]
        path = directory / f"{language}.toml"
        path.write_text("\n".join(lines) + "\n", "utf-8")
        paths.append(path)
    return paths


def run(retriever: Retriever, cases: Sequence[Case], *, progress: bool = True) -> list[Outcome]:
    out = []
    bar = tqdm(total=len(cases), desc="retrieval", unit="case", disable=not progress)
    for start in range(0, len(cases), _BATCH):
        chunk = cases[start : start + _BATCH]
        vectors = retriever.embed([c.text for c in chunk])
        for case, vector in zip(chunk, vectors, strict=True):
            hits = retriever.search_vectors(vector[None, :], [case.text], k=3)
            decision = retriever.decide(hits, case.language)
            ranked = tuple(h.faq_id for h in hits)
            out.append(Outcome(case, ranked, hits[0].confidence, decision.action, decision.faq_ids))
        bar.update(len(chunk))
    bar.close()
    return out


@dataclass(frozen=True)
class Row:
    """Figures of one group of outcomes; rates over the answerable (or unanswerable) cases."""

    name: str
    answerable: int
    top1: float
    top3: float
    right: float
    wrong: float  # confidently wrong
    clarify: float
    abstain: float
    unanswerable: int
    answered_unanswerable: int


def summarize(outcomes: Sequence[Outcome], name: str) -> Row:
    ok = [o for o in outcomes if o.case.faq]
    no = [o for o in outcomes if not o.case.faq]
    n = max(1, len(ok))

    def rate(flag: Iterable[bool]) -> float:
        return sum(flag) / n

    return Row(
        name=name,
        answerable=len(ok),
        top1=rate(o.top1 for o in ok),
        top3=rate(o.top3 for o in ok),
        right=rate(o.right for o in ok),
        wrong=rate(o.wrong for o in ok),
        clarify=rate(o.action == CLARIFY for o in ok),
        abstain=rate(o.action not in (ANSWER, CLARIFY) for o in ok),
        unanswerable=len(no),
        answered_unanswerable=sum(o.action == ANSWER for o in no),
    )


def rows(outcomes: Sequence[Outcome]) -> list[Row]:
    """All, then each language, then each case set."""
    out = [summarize(outcomes, "all")]
    for language in sorted({o.case.language for o in outcomes}):
        out.append(summarize([o for o in outcomes if o.case.language == language], language))
    for name in sorted({o.case.set for o in outcomes}):
        out.append(summarize([o for o in outcomes if o.case.set == name], f"[{name}]"))
    return out


def report(outcomes: Sequence[Outcome], *, examples: int = 10) -> str:
    lines = [
        f"{'':16s} {'n':>5s} {'top1':>6s} {'top3':>6s} {'right':>6s} {'wrong':>6s} "
        f"{'clarif':>6s} {'abstn':>6s}   off-topic answered"
    ]
    for r in rows(outcomes):
        lines.append(
            f"{r.name:16s} {r.answerable:5d} {r.top1:6.1%} {r.top3:6.1%} {r.right:6.1%} "
            f"{r.wrong:6.1%} {r.clarify:6.1%} {r.abstain:6.1%}   "
            f"{r.answered_unanswerable:3d}/{r.unanswerable:<3d}"
        )
    lines.append(
        "right/wrong: answered with a right/wrong FAQ (of answerable cases); clarify: asked "
        "which of two; off-topic answered: unanswerable cases given an FAQ."
    )
    bad = [o for o in outcomes if o.wrong or (not o.case.faq and o.action == ANSWER)]
    if bad and examples:
        lines.append(f"confidently wrong, first {min(examples, len(bad))} of {len(bad)}:")
        for o in bad[:examples]:
            want = ",".join(o.case.faq) or "(none)"
            lines.append(
                f"  [{o.case.language}] {o.case.text[:70]!r} -> {o.faq_ids[0]} "
                f"p={o.confidence:.2f}, want {want}"
            )
    return "\n".join(lines)


def curve(outcomes: Sequence[Outcome]) -> list[tuple[float, float, float]]:
    """(confidence cut, coverage, precision): answering every case whose top FAQ reaches the
    cut; coverage = answered / all cases, precision = right / answered (an answered
    unanswerable case is wrong)."""
    scored = sorted(
        (
            (o.confidence, o.ranked[0] in o.case.faq)
            for o in outcomes
            if o.ranked[0] != OUT_OF_SCOPE
        ),
        reverse=True,
    )
    out = []
    right = 0
    for answered, (conf, ok) in enumerate(scored, 1):
        right += ok
        out.append((conf, answered / len(outcomes), right / answered))
    return out


def write(outcomes: Sequence[Outcome], directory: Path) -> list[Path]:
    """retrieval.json (figures, curve, every outcome) and retrieval_curve.png."""
    directory.mkdir(parents=True, exist_ok=True)
    points = curve(outcomes)
    data = {
        "rows": [asdict(r) for r in rows(outcomes)],
        "curve": [{"cut": c, "coverage": cov, "precision": p} for c, cov, p in points],
        "outcomes": [
            {**asdict(o.case), "ranked": o.ranked, "confidence": o.confidence,
             "action": o.action, "faq_ids": o.faq_ids}
            for o in outcomes
        ],
    }  # fmt: skip
    json_path = directory / "retrieval.json"
    json_path.write_text(json.dumps(data, ensure_ascii=False, indent=1), "utf-8")
    png = directory / "retrieval_curve.png"
    per_language = {
        lang: curve([o for o in outcomes if o.case.language == lang])
        for lang in sorted({o.case.language for o in outcomes})
    }
    plot_curve(points, per_language, png)
    return [json_path, png]


def plot_curve(
    points: Sequence[tuple[float, float, float]],
    per_language: dict[str, list[tuple[float, float, float]]],
    path: Path,
) -> None:
    """Precision against coverage; matplotlib when installed, else a bare PNG of the lines."""
    try:
        import matplotlib  # type: ignore[import-not-found,unused-ignore]

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]
    except ImportError:
        _plain_png([[(c, p) for _, c, p in points]], path)
        return
    fig, ax = plt.subplots(figsize=(7, 5), dpi=110)
    for lang, pts in per_language.items():
        ax.plot([c for _, c, _ in pts], [p for _, _, p in pts], lw=0.8, alpha=0.5, label=lang)
    ax.plot([c for _, c, _ in points], [p for _, _, p in points], lw=2.5, color="k", label="all")
    ax.axhline(0.97, ls="--", color="grey", lw=0.8)
    ax.set(xlabel="coverage (answered / all cases)", ylabel="precision (right / answered)")
    ax.set(xlim=(0, 1), ylim=(0.5, 1.0), title="Retrieval: precision vs coverage by confidence")
    ax.legend(ncol=4, fontsize=7, loc="lower left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def _plain_png(lines: Sequence[Sequence[tuple[float, float]]], path: Path) -> None:
    """x in [0, 1], y in [0.5, 1] on a 400x300 canvas with a grid every 0.1; no text."""
    w, h = 400, 300
    img = np.full((h, w), 255, np.uint8)
    for i in range(11):
        img[:, min(w - 1, i * (w - 1) // 10)] = 220
        img[min(h - 1, i * (h - 1) // 10), :] = 220
    for line in lines:
        xs = np.array([x for x, _ in line])
        ys = np.array([y for _, y in line])
        if len(xs) < 2:
            continue
        fine = np.linspace(0, len(xs) - 1, 4000)
        px = np.interp(fine, np.arange(len(xs)), xs) * (w - 1)
        py = (1 - (np.interp(fine, np.arange(len(ys)), ys) - 0.5) / 0.5) * (h - 1)
        keep = (py >= 0) & (py <= h - 1)
        img[py[keep].astype(int), px[keep].astype(int)] = 0
    raw = b"".join(b"\x00" + img[row].tobytes() for row in range(h))

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    header = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)  # 8-bit greyscale
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw))
    path.write_bytes(png + chunk(b"IEND", b""))
