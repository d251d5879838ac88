"""Load shapes, each bounded in count and time: sequential, burst, closed loop, open loop."""

from __future__ import annotations

import math
import random
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


Thunk = Callable[[], Awaitable[Sample]]


async def at_once(thunks: Sequence[Thunk]) -> tuple[list[Sample], float]:
    """Every thunk released at the same instant (after all are waiting).

    Returns the samples in the order of ``thunks`` and the wall time from the
    release to the last answer.  Nothing waits for a pool to refill.
    """
    size = len(thunks)
    go = trio.Event()
    all_waiting = trio.Event()
    waiting = 0
    out: list[Sample | None] = [None] * size

    async def one(i: int) -> None:
        nonlocal waiting
        waiting += 1
        if waiting == size:
            all_waiting.set()
        await go.wait()
        out[i] = await thunks[i]()

    t0 = time.perf_counter()
    if size:
        async with trio.open_nursery() as nursery:
            for i in range(size):
                nursery.start_soon(one, i)
            await all_waiting.wait()
            t0 = time.perf_counter()
            go.set()
    return [s for s in out if s is not None], time.perf_counter() - t0


async def poisson(
    calls: dict[str, Call],
    mix: dict[str, float],
    rate_per_s: float,
    duration_s: float,
    rng: random.Random,
    *,
    max_in_flight: int = 512,
    max_requests: int | None = None,
) -> tuple[dict[str, list[Sample]], dict[str, float]]:
    """Open-loop Poisson arrivals: exponential gaps of mean ``1/rate_per_s``, for ``duration_s``.

    Each arrival picks its language with the probabilities of ``mix`` and is sent at
    its planned instant whatever is still in flight: arrivals never wait for an
    answer or for a pool.  Bounded: at most ``max_requests`` arrivals (default three
    times the expected count, plus 10) and ``max_in_flight`` outstanding (an arrival
    beyond that is counted in ``skipped``, not sent).  Returns the samples per
    language and ``{"offered_rps", "sent", "skipped", "late_ms_p99", "elapsed_s"}``;
    ``late_ms_p99`` is how far behind plan the sends were (the generator's own lag).
    """
    languages = list(mix)
    weights = [mix[lang] for lang in languages]
    limit = (
        max_requests if max_requests is not None else math.ceil(rate_per_s * duration_s * 3) + 10
    )
    out: dict[str, list[Sample]] = {lang: [] for lang in languages}
    late: list[float] = []
    in_flight = 0
    sent = skipped = 0

    async def one(lang: str) -> None:
        nonlocal in_flight
        try:
            out[lang].append(await calls[lang](lang))
        finally:
            in_flight -= 1

    t0 = time.perf_counter()
    if rate_per_s > 0:
        async with trio.open_nursery() as nursery:
            planned = t0
            while sent + skipped < limit:
                planned += rng.expovariate(rate_per_s)
                if planned - t0 > duration_s:
                    break
                now = time.perf_counter()
                if planned > now:
                    await trio.sleep(planned - now)
                late.append((time.perf_counter() - planned) * 1000)
                lang = rng.choices(languages, weights)[0]
                if in_flight >= max_in_flight:
                    skipped += 1
                    continue
                in_flight += 1
                sent += 1
                nursery.start_soon(one, lang)
    late.sort()
    info = {
        "offered_rps": round(rate_per_s, 3),
        "sent": sent,
        "skipped": skipped,
        "late_ms_p99": round(late[min(len(late) - 1, int(len(late) * 0.99))], 2) if late else 0.0,
        "elapsed_s": round(time.perf_counter() - t0, 3),
    }
    return out, info
