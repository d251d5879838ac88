"""Per-key rate limits (token bucket) and concurrency caps, in memory."""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import trio

MAX_TRACKED_KEYS = 50_000


@dataclass
class _Bucket:
    tokens: float
    updated: float
    running: int = 0


@dataclass(frozen=True)
class Decision:
    allowed: bool
    limit: int
    remaining: int
    reset_s: int
    retry_after_s: int
    reason: str = ""


class KeyLimiter:
    """``rate`` requests per second with bursts of ``burst``, and ``max_running`` at once.

    Keys are the SHA-256 of the API key, so floods with bad keys are limited
    before they reach the database, and at most ``MAX_TRACKED_KEYS`` are kept.
    """

    def __init__(self, rate: float, burst: int, max_running: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_running = max_running
        self._buckets: OrderedDict[bytes, _Bucket] = OrderedDict()

    def _bucket(self, key: bytes) -> _Bucket:
        now = trio.current_time()
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
            while len(self._buckets) > MAX_TRACKED_KEYS:
                oldest_key, oldest = next(iter(self._buckets.items()))
                if oldest.running:
                    self._buckets.move_to_end(oldest_key)
                    break
                self._buckets.popitem(last=False)
        else:
            bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
            bucket.updated = now
            self._buckets.move_to_end(key)
        return bucket

    def acquire(self, key: bytes) -> Decision:
        """Take one request's token and a running slot, or say why not."""
        bucket = self._bucket(key)
        reset = math.ceil((self.burst - bucket.tokens) / self.rate)
        if bucket.tokens < 1:
            wait = math.ceil((1 - bucket.tokens) / self.rate)
            return Decision(False, self.burst, 0, max(reset, 1), max(wait, 1), "rate")
        if bucket.running >= self.max_running:
            return Decision(False, self.burst, int(bucket.tokens), reset, 1, "concurrency")
        bucket.tokens -= 1
        bucket.running += 1
        return Decision(True, self.burst, int(bucket.tokens), reset, 0)

    def release(self, key: bytes) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None and bucket.running > 0:
            bucket.running -= 1
