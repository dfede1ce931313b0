"""Per-turn trace: each stage's output and milliseconds.

Stored with the message; the console, the replay tests and the metrics read the same facts.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageRecord:
    stage: str
    ms: float
    output: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "ms": round(self.ms, 2), **self.output}


@dataclass
class Trace:
    stages: list[StageRecord] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    @contextmanager
    def stage(self, name: str) -> Iterator[dict[str, Any]]:
        """Time a stage; the caller fills the yielded dict with the stage's output.

        An exception inside the block is recorded as the stage's ``error`` and re-raised.
        """
        output: dict[str, Any] = {}
        start = time.perf_counter()
        try:
            yield output
        except BaseException as exc:
            output.setdefault("error", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            self.stages.append(StageRecord(name, (time.perf_counter() - start) * 1000, output))

    def ms(self, name: str) -> float:
        return sum(s.ms for s in self.stages if s.stage == name)

    @property
    def total_ms(self) -> float:
        return (time.perf_counter() - self.started) * 1000

    def as_list(self) -> list[dict[str, Any]]:
        return [s.as_dict() for s in self.stages]
