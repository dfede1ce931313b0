"""Token buckets, one per key, and a log throttle built from them.

``TokenBucket``: ``capacity`` tokens at once, refilled evenly over ``window`` seconds.
``Buckets``: one bucket per key (a conversation, a client address); a bucket that has
filled up again behaves like a new one, so it is forgotten and memory follows the keys
active within one window.
``LogThrottle``: at most a few records per key and window reach the log; the rest are
counted and the count is told with the next record that gets through.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

Clock = Callable[[], float]
MIN_PRUNE = 1024


class TokenBucket:
    def __init__(self, capacity: int, window: float, *, clock: Clock = time.monotonic) -> None:
        self.capacity = float(max(capacity, 1))
        self.rate = self.capacity / window if window > 0 else float("inf")
        self.tokens = self.capacity
        self._clock = clock
        self._last = clock()

    def take(self) -> bool:
        """Spend one token; False when the bucket is empty (the caller refuses)."""
        if not self.ready():
            return False
        self.tokens -= 1
        return True

    def ready(self) -> bool:
        """A token is there to spend (``spend`` it, or ``take`` instead)."""
        self._refill()
        return self.tokens >= 1

    def spend(self) -> None:
        self.tokens -= 1

    @property
    def full(self) -> bool:
        self._refill()
        return self.tokens >= self.capacity

    def _refill(self) -> None:
        now = self._clock()
        self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
        self._last = now


class Buckets:
    def __init__(self, capacity: int, window: float, *, clock: Clock = time.monotonic) -> None:
        self.capacity = capacity
        self.window = window
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}
        self._prune_at = MIN_PRUNE

    def __len__(self) -> int:
        return len(self._buckets)

    def __getitem__(self, key: str) -> TokenBucket:
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._prune_at:
                self._prune()
            bucket = self._buckets[key] = TokenBucket(self.capacity, self.window, clock=self._clock)
        return bucket

    def _prune(self) -> None:
        """Forget full buckets; amortized O(1) per new key (the threshold doubles)."""
        self._buckets = {key: b for key, b in self._buckets.items() if not b.full}
        self._prune_at = max(MIN_PRUNE, 2 * len(self._buckets))


def take_all(buckets: dict[str, TokenBucket]) -> str | None:
    """Spend one token from every bucket, or from none: then the name of an empty one."""
    for name, bucket in buckets.items():
        if not bucket.ready():
            return name
    for bucket in buckets.values():
        bucket.spend()
    return None


class LogThrottle:
    def __init__(
        self, burst: int = 3, window: float = 60.0, *, clock: Clock = time.monotonic
    ) -> None:
        self._buckets = Buckets(burst, window, clock=clock)
        self._skipped: dict[str, int] = {}

    def allow(self, key: str) -> int | None:
        """None: leave this record out; else how many of ``key`` were left out before it."""
        if self._buckets[key].take():
            return self._skipped.pop(key, 0)
        if key in self._skipped or len(self._skipped) < MIN_PRUNE * 8:
            self._skipped[key] = self._skipped.get(key, 0) + 1
        return None

    def log(
        self,
        logger: logging.Logger,
        level: int,
        key: str,
        message: str,
        *args: object,
        exc_info: bool = False,
    ) -> None:
        """``logger.log(level, message, *args)`` unless ``key`` has had its share."""
        if not logger.isEnabledFor(level):
            return
        skipped = self.allow(key)
        if skipped is None:
            return
        if skipped:
            message, args = message + " (%d more like it not logged)", (*args, skipped)
        logger.log(level, message, *args, exc_info=exc_info)
