"""A token bucket: ``capacity`` messages at once, refilled evenly over ``window`` seconds."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(
        self, capacity: int, window: float, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.capacity = float(max(capacity, 1))
        self.rate = self.capacity / window if window > 0 else float("inf")
        self.tokens = self.capacity
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        """Spend one token; False when the bucket is empty (the caller refuses)."""
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True
