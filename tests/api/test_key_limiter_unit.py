"""A key's rate limit shared across API replicas: each allows 1/n of it."""

from __future__ import annotations

import trio

from api._limits import KeyLimiter

KEY = b"k" * 32


def admitted(limiter: KeyLimiter, n: int) -> int:
    ok = 0
    for _ in range(n):
        decision = limiter.acquire(KEY)
        if decision.allowed:
            ok += 1
            limiter.release(KEY)
    return ok


async def test_one_replica_allows_the_whole_burst() -> None:
    limiter = KeyLimiter(rate=10, burst=20, max_running=100)
    limiter.share(1)
    assert admitted(limiter, 50) == 20


async def test_two_replicas_allow_half_each_and_refill_at_half_the_rate() -> None:
    limiter = KeyLimiter(rate=10, burst=20, max_running=100)
    limiter.share(2)
    assert (limiter.rate, limiter.burst, limiter.replicas) == (5, 10, 2)
    assert admitted(limiter, 50) == 10
    await trio.sleep(0.45)  # 5 tokens/s: about 2 more
    assert admitted(limiter, 50) == 2


async def test_a_bucket_is_capped_at_the_new_burst_and_grows_back_alone() -> None:
    limiter = KeyLimiter(rate=10, burst=20, max_running=100)
    assert admitted(limiter, 1) == 1  # the key's bucket exists, 19 tokens left
    limiter.share(3)
    assert limiter.burst == 7
    assert admitted(limiter, 50) == 7
    limiter.share(1)  # the other replicas went away
    assert (limiter.rate, limiter.burst) == (10, 20)
    limiter.share(0)  # never below one replica
    assert limiter.replicas == 1
