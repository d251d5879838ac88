"""The pool model of bench.start_queue_sim, which docs/load.md cites for the target rule."""

from __future__ import annotations

from bench.start_queue_sim import current_rule, old_rule, simulate


def test_ample_targets_never_miss_and_none_always_miss() -> None:
    assert simulate(1.0, 0.5, (50, 50), seconds=2_000) == (0.0, 0.0)
    python, node = simulate(1.0, 0.5, (0, 0), seconds=2_000)
    assert python == 1.0
    assert node == 1.0


def test_the_current_rule_keeps_runs_warm_where_the_old_one_did_not() -> None:
    for rate in (1.6, 2.4):
        old = simulate(rate, 0.6, old_rule(rate, 0.6), seconds=5_000)
        new = simulate(rate, 0.6, current_rule(rate, 0.6, 2), seconds=5_000)
        assert max(old) > 0.04, (rate, old)
        assert max(new) < 0.01, (rate, new)
