"""Load shapes, each bounded in count and time: sequential with a pause, burst, closed loop."""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable, Sequence

import trio

from ._model import Sample

Call = Callable[[str], Awaitable[Sample]]  # language -> one sample


async def sequential(
    calls: dict[str, Call],
    languages: Sequence[str],
    per_language: int,
    pause_s: float,
    max_s: float,
    settle: Callable[[], Awaitable[object]] | None = None,
) -> tuple[dict[str, list[Sample]], float]:
    """One request at a time, languages taking turns, ``pause_s`` after each answer.

    With ``settle``, each pause also lasts until ``settle()`` returns (the pool is
    full again), so the offered load stays below the refill rate whatever it is.
    Stops after ``per_language`` samples of each language or ``max_s`` seconds;
    returns the samples and the wall time.
    """
    out: dict[str, list[Sample]] = {lang: [] for lang in languages}
    t0 = time.monotonic()
    deadline = t0 + max_s
    for _ in range(per_language):
        for lang in languages:
            if time.monotonic() > deadline:
                return out, time.monotonic() - t0
            out[lang].append(await calls[lang](lang))
            await trio.sleep(pause_s)
            if settle is not None:
                await settle()
    return out, time.monotonic() - t0


async def burst(call: Call, language: str, size: int) -> tuple[list[Sample], float]:
    """``size`` requests released at the same instant; returns them and the burst's wall time."""
    go = trio.Event()
    all_waiting = trio.Event()
    waiting = 0
    samples: list[Sample] = []

    async def one() -> None:
        nonlocal waiting
        waiting += 1
        if waiting == size:
            all_waiting.set()
        await go.wait()
        samples.append(await call(language))

    t0 = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(size):
            nursery.start_soon(one)
        await all_waiting.wait()
        t0 = time.perf_counter()
        go.set()
    return samples, time.perf_counter() - t0


async def closed_loop(
    call: Call, language: str, callers: int, duration_s: float, max_requests: int | None = None
) -> tuple[list[Sample], float]:
    """``callers`` tasks, each sending its next request as soon as the previous answers.

    New requests start only during ``duration_s``; the elapsed time runs until the
    last answer.  At most ``max_requests`` in all (default: 200 per second of duration).
    """
    limit = max_requests if max_requests is not None else max(1, math.ceil(duration_s * 200))
    samples: list[Sample] = []
    sent = 0
    t0 = time.perf_counter()
    stop_at = t0 + duration_s

    async def caller() -> None:
        nonlocal sent
        while time.perf_counter() < stop_at and sent < limit:
            sent += 1
            samples.append(await call(language))

    async with trio.open_nursery() as nursery:
        for _ in range(callers):
            nursery.start_soon(caller)
    return samples, time.perf_counter() - t0
