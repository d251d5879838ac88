"""``python -m bench.start_queue_sim``: how many warm sandboxes a load needs, simulated.

Not a measurement of Cinch: a discrete-event model of its warm pools, to check the rule
that sets their targets (``pool._pool._Demand.target``, docs/load.md). Runs arrive as
a Poisson process (``--rate`` per second, 70% Python / 30% Node). Each takes a warm
sandbox if its pool has one and otherwise waits for the next start of its language;
either way it asks for one start. Starts share ``--slots`` slots, a freed slot going
to the most urgent start as ``pool.StartSlots`` does, and each takes ``--start-s``
seconds, uniformly spread by ``--jitter``. Targets are fixed for the whole run.

Prints, for each pair of targets, the share of runs that found their pool empty:
the pairs given with ``--targets``, the old rule's and the current rule's.
"""

from __future__ import annotations

import argparse
import heapq
import math
import random

from pool._pool import _poisson_quantile

LANGUAGES = ("python", "javascript")
MIX = (0.7, 0.3)


def simulate(
    rate: float,
    start_s: float,
    targets: tuple[int, int],
    *,
    slots: int = 2,
    seconds: float = 20_000.0,
    seed: int = 1,
    jitter: float = 0.3,
) -> tuple[float, float]:
    """The share of Python and of Node runs that found no warm sandbox."""
    rng = random.Random(seed)
    ready = list(targets)
    asked = [0, 0]  # starts asked for and not done (waiting for a slot or in one)
    in_slot = [0, 0]
    waiting = [0, 0]  # runs waiting for a start
    runs = [0, 0]
    missed = [0, 0]
    busy = 0
    events: list[tuple[float, int, int]] = [(rng.expovariate(rate), 0, -1)]  # (at, kind, lang)

    def urgency(i: int) -> tuple[int, float]:
        have = ready[i] + in_slot[i]
        return (1 if waiting[i] > have else 0, -have / max(1, targets[i]))

    while events:
        now, kind, i = heapq.heappop(events)
        if now > seconds:
            break
        if kind == 0:  # an arrival
            i = 0 if rng.random() < MIX[0] else 1
            runs[i] += 1
            if ready[i]:
                ready[i] -= 1
            else:
                missed[i] += 1
                waiting[i] += 1
            asked[i] += 1
            heapq.heappush(events, (now + rng.expovariate(rate), 0, -1))
        else:  # a start done
            in_slot[i] -= 1
            asked[i] -= 1
            busy -= 1
            if waiting[i]:
                waiting[i] -= 1
            else:
                ready[i] += 1
        while busy < slots:
            queued = [j for j in (0, 1) if asked[j] > in_slot[j]]
            if not queued:
                break
            j = max(queued, key=urgency)
            in_slot[j] += 1
            busy += 1
            took = start_s * rng.uniform(1 - jitter, 1 + jitter)
            heapq.heappush(events, (now + took, 1, j))
    share = [missed[j] / runs[j] if runs[j] else 0.0 for j in (0, 1)]
    return share[0], share[1]


def old_rule(rate: float, start_s: float) -> tuple[int, int]:
    """Before 2026-12-03: mean + 2.33 sqrt(mean) over one start."""
    out = []
    for share in MIX:
        mean = rate * share * start_s
        out.append(max(1, math.ceil(mean + 2.33 * math.sqrt(mean))))
    return out[0], out[1]


def current_rule(rate: float, start_s: float, slots: int) -> tuple[int, int]:
    """``_Demand.target``'s two bounds, without the minimum and maximum."""
    rho = rate * start_s / slots
    out = []
    for share in MIX:
        own = rho * share
        need = _poisson_quantile(rate * share * start_s, 0.01, 99)
        if rho >= 0.95:
            need = 99
        else:
            q = own / (1 - rho + own)
            need = max(need, math.ceil(math.log(0.01) / math.log(q)))
        out.append(need)
    return out[0], out[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rate", type=float, default=1.6, help="arrivals per second")
    parser.add_argument("--start-s", type=float, default=0.6)
    parser.add_argument("--slots", type=int, default=2)
    parser.add_argument("--jitter", type=float, default=0.3)
    parser.add_argument("--seconds", type=float, default=20_000.0, help="simulated time")
    parser.add_argument("--targets", default="2:2,4:2", help="Python:Node pairs, comma-separated")
    args = parser.parse_args()
    pairs: list[tuple[str, tuple[int, int]]] = []
    for pair in args.targets.split(","):
        p, n = pair.split(":")
        pairs.append(("given", (int(p), int(n))))
    pairs.append(("old rule", old_rule(args.rate, args.start_s)))
    pairs.append(("current rule", current_rule(args.rate, args.start_s, args.slots)))
    print(
        f"Poisson {args.rate}/s (70% Python), starts {args.start_s} s +- {args.jitter:.0%}, "
        f"{args.slots} slots, {args.seconds:g} simulated seconds:"
    )
    for label, targets in pairs:
        py, node = simulate(
            args.rate,
            args.start_s,
            targets,
            slots=args.slots,
            seconds=args.seconds,
            jitter=args.jitter,
        )
        print(
            f"  {label:13} targets {targets[0]:2} Python {targets[1]:2} Node: "
            f"no warm sandbox for {py:.2%} of Python runs, {node:.2%} of Node runs"
        )


if __name__ == "__main__":
    main()
