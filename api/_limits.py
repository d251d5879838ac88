"""Per-key rate limits (token bucket) and concurrency caps, and failed-auth limits, in memory.

A key gets a bucket only once it has authenticated: a flood of made-up keys
cannot evict real users' buckets, and is limited per client address instead
(:class:`FailureLimiter`), before it reaches the database.
"""

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

    Keys are the SHA-256 of an API key that authenticated; at most
    ``MAX_TRACKED_KEYS`` are kept (least recently used go first).
    """

    def __init__(self, rate: float, burst: int, max_running: int) -> None:
        self.configured_rate = self.rate = rate
        self.configured_burst = self.burst = burst
        self.max_running = max_running
        self.replicas = 1
        self._buckets: OrderedDict[bytes, _Bucket] = OrderedDict()

    def share(self, replicas: int) -> None:
        """Allow this replica its share, 1/``replicas``, of the configured rate and burst.

        The replicas of ``cinch api`` count each other (live rows of ``instances``), so
        behind a balancer that spreads requests the key's total stays at the limit; a
        client pinned to one replica gets its share. Buckets keep their tokens, capped
        at the new burst.
        """
        replicas = max(1, replicas)
        if replicas == self.replicas:
            return
        self.replicas = replicas
        self.rate = self.configured_rate / replicas
        self.burst = max(1, math.ceil(self.configured_burst / replicas))
        for bucket in self._buckets.values():
            bucket.tokens = min(bucket.tokens, float(self.burst))

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

    def acquire_known(self, key: bytes) -> Decision | None:
        """:meth:`acquire` for a key seen to authenticate before; None for any other key."""
        if key not in self._buckets:
            return None
        return self.acquire(key)

    def release(self, key: bytes) -> None:
        bucket = self._buckets.get(key)
        if bucket is not None and bucket.running > 0:
            bucket.running -= 1


class FailureLimiter:
    """Failed authentications per client address: ``burst`` at once, then ``rate`` per second.

    Checked before the database is asked, so an address that keeps sending bad
    keys costs one dictionary look-up per request.  At most ``max_tracked``
    addresses are kept (least recently failed go first).
    """

    def __init__(self, rate: float, burst: int, max_tracked: int = MAX_TRACKED_KEYS) -> None:
        self.rate = rate
        self.burst = burst
        self.max_tracked = max_tracked
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()

    def _refill(self, bucket: _Bucket) -> None:
        now = trio.current_time()
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.rate)
        bucket.updated = now

    def retry_after_s(self, address: str) -> int:
        """0 when ``address`` may try to authenticate; else seconds until it may."""
        bucket = self._buckets.get(address)
        if bucket is None:
            return 0
        self._refill(bucket)
        if bucket.tokens >= 1:
            return 0
        return max(1, math.ceil((1 - bucket.tokens) / self.rate))

    def record_failure(self, address: str) -> None:
        bucket = self._buckets.get(address)
        if bucket is None:
            bucket = self._buckets[address] = _Bucket(float(self.burst), trio.current_time())
            while len(self._buckets) > self.max_tracked:
                self._buckets.popitem(last=False)
        else:
            self._refill(bucket)
            self._buckets.move_to_end(address)
        bucket.tokens = max(0.0, bucket.tokens - 1)
