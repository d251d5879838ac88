"""The warm target a pool's demand calls for (pool._pool._Demand), on a virtual clock.

The figures follow from the model in ``_Demand.target``; the comments give the old
rule's (Poisson count over one replacement, mean + 2.33 sqrt(mean), the smoothed rate
only) for the cases it got wrong.
"""

from __future__ import annotations

import trio
import trio.testing

from pool import StartSlots
from pool._pool import _Demand, _poisson_quantile


async def _arrivals(demands: list[tuple[_Demand, float]], seconds: float) -> None:
    """Evenly spaced arrivals at each demand's rate, interleaved, for ``seconds``."""
    due = [(1.0 / rate, i) for i, (_, rate) in enumerate(demands)]
    start = trio.current_time()
    while True:
        at, i = min(due)
        if at > seconds:
            return
        await trio.sleep_until(start + at)
        demand, rate = demands[i]
        demand.note_arrival()
        due[due.index((at, i))] = (at + 1.0 / rate, i)


def _measured(demand: _Demand, start_s: float) -> _Demand:
    demand.note_start(start_s)
    return demand


def test_poisson_quantile() -> None:
    assert _poisson_quantile(0.168, 0.01, 99) == 3  # P(X >= 2) = 1.3%, P(X >= 3) = 0.07%
    assert _poisson_quantile(1.2, 0.01, 99) == 5
    assert _poisson_quantile(50.0, 0.01, 8) == 8  # capped


async def test_the_target_covers_the_queue_that_every_pools_starts_form(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Python 1.6/s and Node 1.0/s, starts of 0.6 s, two slots: the slots are 78% busy.
    slots = StartSlots(2)
    python = _measured(_Demand(slots), 0.6)
    node = _measured(_Demand(slots), 0.6)
    await _arrivals([(python, 1.6), (node, 1.0)], 30)
    assert 0.7 < slots.utilization() < 0.85
    # The old rule: mean 0.96, so 4 Python. The queue: q = 0.48 / 0.70, 13.
    assert python.target(2, 20) >= 12
    assert node.target(2, 20) >= 7
    assert python.target(2, 8) == 8

    # The same Python rate with a pool of its own: the slots are 48% busy, 7 do.
    alone = _measured(_Demand(StartSlots(2)), 0.6)
    await _arrivals([(alone, 1.6)], 30)
    assert 6 <= alone.target(2, 20) <= 8


async def test_busy_slots_call_for_the_maximum(autojump_clock: trio.testing.MockClock) -> None:
    slots = StartSlots(1)
    python = _measured(_Demand(slots), 0.6)
    await _arrivals([(python, 2.0)], 20)  # 1.2 starts' worth per second, one slot
    assert python.target(2, 8) == 8


async def test_a_load_after_idle_raises_the_target_within_a_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slots = StartSlots(2)
    python = _measured(_Demand(slots), 0.45)
    await trio.sleep(60)
    await _arrivals([(python, 3.0)], 1.0)  # three in the first second
    # The smoothed rate is 0.55/s by now (old rule: 2, the minimum); counted, 2/s.
    assert python.rate() >= 1.9
    assert python.target(2, 8) >= 4


async def test_one_arrival_after_idle_leaves_the_minimum(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slots = StartSlots(2)
    python = _measured(_Demand(slots), 0.45)
    for _ in range(5):  # a sparse caller: one run a minute
        await trio.sleep(60)
        python.note_arrival()
        assert python.target(2, 8) == 2
        await trio.sleep(1)
        assert python.target(2, 8) == 2


async def test_the_target_decays_to_the_minimum_after_a_burst(
    autojump_clock: trio.testing.MockClock,
) -> None:
    slots = StartSlots(2)
    python = _measured(_Demand(slots), 0.6)
    await _arrivals([(python, 4.0)], 5)
    assert python.target(2, 8) == 8
    await trio.sleep(30)
    assert python.target(2, 8) == 2
    assert slots.utilization() < 0.01
