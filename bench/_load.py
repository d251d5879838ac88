"""The load shapes of issue 15: open-loop Poisson, mixed bursts, and 200 at once from 8 keys.

None of them waits for a pool to refill while it runs (each starts from full,
idle pools).  Each shape window is also a CPU window (:mod:`bench._cpu`): the
sandboxes' CPU split into runs and starts.
"""

from __future__ import annotations

import functools
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import trio

from pool import DockerClient

from ._cpu import CgroupCpu
from ._http import HttpTarget
from ._model import Sample, Series
from ._shapes import at_once, poisson
from ._stats import summarize
from ._workloads import PRINT, Workload

RunFn = Callable[[str, Workload], Awaitable[Sample]]
MIX = {"python": 0.7, "javascript": 0.3}
FLOOD_KEYS = 8
SEED = 15


def poisson_kind(level: float) -> str:
    return f"poisson {round(level * 100)}%"


def burst_kind(size: int) -> str:
    return f"burst {size}"


@dataclass
class LoadTarget:
    """One variant under load: how to run, settle, count hits and see its sandboxes."""

    variant: str
    run: RunFn
    settle: Callable[[], Awaitable[Any]]
    engine: DockerClient
    owners: list[str]  # cinch.owner labels of its sandboxes (for the CPU split)
    counters: Callable[[], Awaitable[tuple[int, int] | None]] | None = None
    http: HttpTarget | None = None  # for the flood (keys, 503s, /metrics)
    keys: list[str] = field(default_factory=list)


def _ok_by_status(samples: Sequence[Sample]) -> dict[str, int]:
    return dict(Counter(s.status for s in samples))


def _cpu_window(target: LoadTarget) -> CgroupCpu:
    return CgroupCpu(list(target.owners))


async def _counter_delta(
    target: LoadTarget, before: tuple[int, int] | None
) -> dict[str, int] | None:
    if target.counters is None or before is None:
        return None
    after = await target.counters()
    if after is None:
        return None
    return {"warm_hits": after[0] - before[0], "waited": after[1] - before[1]}


async def poisson_levels(
    results: Any,
    opts: Any,
    target: LoadTarget,
    capacity_rps: float,
    capacity_from: str,
) -> None:
    """Open-loop Poisson at each level of the closed-loop capacity, ``opts.poisson_duration_s`` each."""
    languages = [lang for lang in MIX if lang in opts.languages]
    mix = {lang: MIX[lang] for lang in languages}
    calls = {lang: functools.partial(target.run, workload=PRINT) for lang in languages}
    rng = random.Random(SEED)
    for level in opts.poisson_levels:
        rate = capacity_rps * level
        await target.settle()
        before = await target.counters() if target.counters else None
        cpu = _cpu_window(target)
        async with cpu.watching(target.engine):
            got, info = await poisson(calls, mix, rate, opts.poisson_duration_s, rng)
        delta = await _counter_delta(target, before)
        cpu_summary = cpu.summary()
        shape = (
            f"open-loop Poisson: {level:.0%} of the closed-loop capacity ({capacity_rps:.2f} runs/s, "
            f"{capacity_from}) = {rate:.2f} arrivals/s, "
            + " / ".join(f"{mix[lang]:.0%} {lang}" for lang in languages)
            + f", {opts.poisson_duration_s:g} s, never waiting for the pool"
        )
        row: dict[str, Any] = {
            "variant": target.variant,
            "kind": poisson_kind(level),
            "shape": shape,
            "level": level,
            "capacity_rps": round(capacity_rps, 3),
            **info,
            "server_counters": delta,
            "cpu": cpu_summary,
        }
        results.load.append(row)
        for lang in languages:
            series = Series(target.variant, lang, PRINT.title, shape, poisson_kind(level))
            series.samples = got[lang]
            series.elapsed_s = info["elapsed_s"]
            series.extra.update({"offered_rps": round(rate * mix[lang], 3), "cpu": cpu_summary})
            results.series.append(series)
            _progress(opts, series)


async def mixed_bursts(results: Any, opts: Any, target: LoadTarget) -> None:
    """For each size, that many requests at once, the languages taking turns (8 + 8 for 16)."""
    languages = [lang for lang in MIX if lang in opts.languages]
    for size in opts.burst_sizes:
        await target.settle()
        langs = [languages[i % len(languages)] for i in range(size)]
        thunks = [functools.partial(target.run, lang, PRINT) for lang in langs]
        before = await target.counters() if target.counters else None
        cpu = _cpu_window(target)
        async with cpu.watching(target.engine):
            samples, makespan = await at_once(thunks)
        delta = await _counter_delta(target, before)
        shape = (
            f"burst: {size} print(2+2) released at once ("
            + " + ".join(f"{langs.count(lang)} {lang}" for lang in languages)
            + "), from full pools, nothing waits for a refill"
        )
        ok_200 = sum(1 for s in samples if s.status in ("200", "ok"))
        results.load.append(
            {
                "variant": target.variant,
                "kind": burst_kind(size),
                "shape": shape,
                "size": size,
                "answered_ok": ok_200,
                "statuses": _ok_by_status(samples),
                "wall_ms": round(makespan * 1000, 1),
                "server_counters": delta,
                "cpu": cpu.summary(),
            }
        )
        for lang in languages:
            series = Series(target.variant, lang, PRINT.title, shape, burst_kind(size))
            series.samples = [s for s, sl in zip(samples, langs, strict=True) if sl == lang]
            series.elapsed_s = makespan
            series.extra["burst_wall_ms"] = [round(makespan * 1000, 1)]
            results.series.append(series)
            _progress(opts, series)


async def wait_back_at_target(
    http: HttpTarget, languages: Sequence[str], timeout_s: float
) -> dict[str, Any]:
    """Poll ``/metrics`` until every pool holds exactly its target, ready, and starts nothing.

    Returns the seconds it took (None on time-out), the largest pool seen (ready +
    starting) and where the target came from.
    """
    t0 = time.perf_counter()
    largest: dict[str, float] = dict.fromkeys(languages, 0.0)
    source = ""
    reached: float | None = None
    last: dict[str, Any] = {}
    with trio.move_on_after(timeout_s):
        while True:
            gauges = await http.pool_gauges()
            if gauges is None:
                source = "no /metrics"
                break
            last = gauges
            done = True
            for lang in languages:
                g = gauges.get(lang)
                if g is None:
                    continue
                source = "cinch_pool_target" if g["target_source"] else "cinch_pool_target_size"
                largest[lang] = max(largest[lang], g["ready"] + g["starting"])
                if not (g["ready"] == g["target"] and g["starting"] == 0):
                    done = False
            if done:
                reached = time.perf_counter() - t0
                break
            await trio.sleep(0.05)
    return {
        "back_at_target_s": None if reached is None else round(reached, 2),
        "timeout_s": timeout_s,
        "largest_pool_seen": largest,
        "target_source": source,
        "last_gauges": last,
    }


def _flood_counts(samples: Sequence[Sample]) -> dict[str, int]:
    def is_503(s: Sample) -> bool:
        return s.status == "503"

    return {
        "requests": len(samples),
        "answered_200": sum(1 for s in samples if s.status.startswith("200")),
        "ok": sum(1 for s in samples if s.ok),
        "503_with_retry_after": sum(1 for s in samples if is_503(s) and s.retry_after),
        "503_without_retry_after": sum(1 for s in samples if is_503(s) and not s.retry_after),
        "other_5xx": sum(1 for s in samples if s.status[:1] == "5" and not is_503(s)),
        "other": sum(1 for s in samples if not s.status.startswith("200") and s.status[:1] != "5"),
    }


async def flood(results: Any, opts: Any, target: LoadTarget) -> None:
    """``opts.flood_size`` print(2+2) at once from ``FLOOD_KEYS`` keys, then the pools' recovery.

    First the idle charge: a few print(2+2) per language, one at a time from full
    pools.  The CPU window runs from the release until the pools are back.
    """
    assert target.http is not None
    http = target.http
    languages = [lang for lang in MIX if lang in opts.languages]
    idle: dict[str, list[Sample]] = {lang: [] for lang in languages}
    for _ in range(opts.flood_idle_samples):
        for lang in languages:
            await target.settle()
            idle[lang].append(await http.run(lang, PRINT))
    await target.settle()
    keys = target.keys or [""]
    size = opts.flood_size
    langs = [languages[i % len(languages)] for i in range(size)]
    thunks = [
        functools.partial(http.run, lang, PRINT, keys[i % len(keys)] or None)
        for i, lang in enumerate(langs)
    ]
    # The client's own floor for this many at once (and its connections opened, kept alive
    # for the flood): a 503 cannot be seen faster than a /healthz.
    floor, _ = await at_once([http.healthz] * size)
    before = await target.counters() if target.counters else None
    cpu = _cpu_window(target)
    async with cpu.watching(target.engine):
        samples, makespan = await at_once(thunks)
        recovery = await wait_back_at_target(http, languages, opts.flood_recovery_max_s)
    delta = await _counter_delta(target, before)
    shape = (
        f"{size} print(2+2) at once ("
        + " + ".join(f"{langs.count(lang)} {lang}" for lang in languages)
        + f") from {len(set(keys))} API keys of as many accounts, from full pools; then "
        "/metrics polled every 50 ms until every pool is back at its target"
    )
    by_lang: dict[str, Any] = {}
    for lang in languages:
        mine = [s for s, sl in zip(samples, langs, strict=True) if sl == lang]
        idle_charge = summarize(s.credits for s in idle[lang])
        charge = summarize(s.credits for s in mine)
        ratio = None
        if charge["p99"] is not None and idle_charge["p50"]:
            ratio = round(charge["p99"] / idle_charge["p50"], 2)
        by_lang[lang] = {
            **_flood_counts(mine),
            "idle_charge": idle_charge,
            "charge": charge,
            "charge_p99_over_idle_p50": ratio,
            "latency_503_ms": summarize(s.client_ms for s in mine if s.status == "503"),
        }
        series = Series(target.variant, lang, PRINT.title, shape, "flood")
        series.samples = mine
        series.elapsed_s = makespan
        series.extra.update({"idle_charge": idle_charge, "charge": charge})
        results.series.append(series)
        _progress(opts, series)
    row = {
        "variant": target.variant,
        "kind": "flood",
        "shape": shape,
        "size": size,
        "keys": len(set(keys)),
        **_flood_counts(samples),
        "statuses": _ok_by_status(samples),
        "latency_503_ms": summarize(s.client_ms for s in samples if s.status == "503"),
        "latency_200_ms": summarize(s.client_ms for s in samples if s.status.startswith("200")),
        "floor_healthz_ms": summarize(s.client_ms for s in floor if s.ok),
        "wall_ms": round(makespan * 1000, 1),
        "by_language": by_lang,
        **recovery,
        "server_counters": delta,
        "cpu": cpu.summary(),
    }
    results.load.append(row)
    opts.progress(
        f"  flood: {row['answered_200']} x 200, {row['503_with_retry_after']} x 503+Retry-After, "
        f"{row['503_without_retry_after']} x 503 without, {row['other_5xx']} other 5xx; 503 p99 "
        f"{row['latency_503_ms']['p99']} ms; back at target in {row['back_at_target_s']} s"
    )


def _progress(opts: Any, series: Series) -> None:
    s = series.summary()
    c = s["client_ms"]
    opts.progress(
        f"  {series.variant:32} {series.language:10} {series.kind:13} n={s['ok']}/{s['requests']} "
        f"p50={c['p50']} p90={c['p90']} p99={c['p99']} ms queue p99={s['queue_ms']['p99']}"
        + (f" warm-hit={s['warm_hit_ratio']}" if s["warm_hit_ratio"] is not None else "")
        + (f" errors={s['errors']}" if s["errors"] else "")
    )
