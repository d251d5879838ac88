"""``python -m bench.pool_trace``: open-loop Poisson at the scheduler level, with the pools' state.

Why the Poisson tail is what it is: the runs that wait are the ones that find
their pool empty. This sends ``print(2 + 2)`` at Poisson arrivals (``--rate``
per second, 70% Python / 30% Node, a fixed seed so that two runs get the same
arrivals: an A/B of two builds), never waiting for the pools, on the scheduler
and pools ``cinch serve`` wires (``--minimum`` warm per language, default 2
and 2 as ``cinch serve``; the configured maximum), and samples every pool each 0.25 s: ready, starting (in a start slot
or waiting for one), target, arrival rate, start and replacement estimates.

Prints per language p50/p90/p99 of the whole run, the runs that waited more
than 50 ms for a sandbox and when, and the pool time series once a second.
Every container carries an owner label of its own and is removed by it.
"""

from __future__ import annotations

import argparse
import random
import secrets
import statistics

import trio

from api import Config
from api._pools import sandbox_cgroup_parent
from pool import socket_path_from_env
from pool._images import current_tags
from scheduler import NoCapacity, RunRequest, SchedulerConfig

from ._engine import TimedClient, open_scheduler, remove_owned, wait_pools_full

CODE = {"python": "print(2 + 2)", "javascript": "console.log(2 + 2)"}
WAITED_MS = 50.0


def _pct(values: list[float], q: float) -> float:
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


async def trace(rate: float, seconds: float, seed: int, minimum: tuple[int, int]) -> None:
    config = Config.from_env()
    owner = "cinch-pooltrace-" + secrets.token_hex(3)
    client = TimedClient(socket_path_from_env())
    cgroup_parent = await sandbox_cgroup_parent(client, config.cgroup_parent)
    rng = random.Random(seed)
    samples: list[tuple[str, float, float, float]] = []  # language, ms, queue ms, sent at
    rows: list[str] = []
    try:
        async with open_scheduler(
            client,
            owner=owner,
            images=current_tags(),
            runtimes=config.runtimes(),
            pool_sizes={"python": minimum[0], "javascript": minimum[1]},
            start_concurrency=config.start_concurrency,
            max_sandboxes=config.max_sandboxes,
            cgroup_parent=cgroup_parent,
            scheduler_config=SchedulerConfig(),
        ) as wired:
            await wait_pools_full(wired.pools)
            await trio.sleep(2)
            t0 = trio.current_time()

            async def one(language: str) -> None:
                sent = trio.current_time()
                try:
                    r = await wired.scheduler.run(
                        RunRequest(language=language, code=CODE[language])
                    )
                    ms = (trio.current_time() - sent) * 1000
                    samples.append((language, ms, r.queue_ms, sent - t0))
                except NoCapacity:
                    samples.append((language, -1.0, -1.0, sent - t0))

            async def sampler() -> None:
                while True:
                    parts = [f"t={trio.current_time() - t0:5.1f}s"]
                    some = next(iter(wired.pools.values())).statistics()
                    parts.append(f"slots {some.start_utilization:4.2f} busy")
                    for name, p in wired.pools.items():
                        s = p.statistics()
                        parts.append(
                            f"{name[:2]} ready {s.ready:2} starting {s.starting:2} target "
                            f"{s.size:2} rate {s.arrival_rate:4.2f}/s start {s.start_estimate_s:4.2f}s "
                            f"replace {s.replace_estimate_s:4.2f}s"
                        )
                    rows.append(" | ".join(parts))
                    await trio.sleep(1.0)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(sampler)
                async with trio.open_nursery() as runs:
                    end = t0 + seconds
                    while trio.current_time() < end:
                        await trio.sleep(rng.expovariate(rate))
                        language = "python" if rng.random() < 0.7 else "javascript"
                        runs.start_soon(one, language)
                nursery.cancel_scope.cancel()
    finally:
        async with TimedClient(socket_path_from_env()) as c:
            await remove_owned(c, owner)
    print(
        f"Poisson {rate}/s for {seconds:g} s (seed {seed}), scheduler level, never waiting; "
        f"minimum warm {minimum[0]} Python, {minimum[1]} Node, maximum as configured "
        f"(CINCH_POOL_MAX_*):"
    )
    for language in ("python", "javascript"):
        ok = sorted(x[1] for x in samples if x[0] == language and x[1] >= 0)
        waited = [x for x in samples if x[0] == language and x[2] > WAITED_MS]
        refused = sum(1 for x in samples if x[0] == language and x[1] < 0)
        if not ok:
            continue
        print(
            f"  {language:10} n={len(ok)} p50 {statistics.median(ok):.1f} p90 {_pct(ok, 0.9):.1f} "
            f"p99 {_pct(ok, 0.99):.1f} ms; waited > {WAITED_MS:g} ms for a sandbox: "
            f"{len(waited)} (at t = {', '.join(f'{x[3]:.1f}' for x in waited[:20])}); "
            f"refused {refused}"
        )
    print("pools, once a second:")
    for row in rows:
        print("  " + row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1.6, help="arrivals per second")
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--minimum", default="2,2", help="warm minimum, Python,Node (cinch serve's default: 2,2)"
    )
    args = parser.parse_args()
    try:
        py, js = (int(x) for x in args.minimum.split(","))
    except ValueError:
        parser.error("--minimum is two numbers: PYTHON,NODE")
    if not (0 <= py <= 32 and 0 <= js <= 32):
        parser.error("--minimum: 0 to 32 each")
    if not 0 < args.rate <= 20 or not 0 < args.seconds <= 600:
        parser.error("--rate in (0, 20], --seconds in (0, 600]")
    trio.run(trace, args.rate, args.seconds, args.seed, (py, js))


if __name__ == "__main__":
    main()
