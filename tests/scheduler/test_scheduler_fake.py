"""The scheduler and the warm pool over the fake backend, on a virtual clock (issue 3).

Time passes only on ``autojump_clock``: sleeps below are virtual and deterministic.
Ordering between tasks uses ``trio.testing.wait_all_tasks_blocked()``.  Every test
ends by shutting the pool down and checking that no sandbox is left alive.
"""

from __future__ import annotations

import itertools
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from pool import LiveSandboxes, StartSlots, WarmPool
from pool.testing import FakeBackend, FakeSandbox
from scheduler import (
    NoCapacity,
    OutputCollector,
    RunRequest,
    Scheduler,
    SchedulerConfig,
    ShuttingDown,
    Termination,
    UnknownLanguage,
)

START_S = FakeBackend().start_delay_s


@dataclass
class CountingBackend(FakeBackend):
    """A fake backend that records every start attempt and how many ran at once."""

    attempts: list[float] = field(default_factory=list)
    active: int = 0
    peak: int = 0
    attempted: dict[int, trio.Event] = field(default_factory=dict)

    def on_attempt(self, n: int) -> trio.Event:
        """An event set when the ``n``-th start attempt begins."""
        return self.attempted.setdefault(n, trio.Event())

    async def start_sandbox(self, language: str, image: str) -> FakeSandbox:
        self.attempts.append(trio.current_time())
        self.on_attempt(len(self.attempts)).set()
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            return await super().start_sandbox(language, image)
        finally:
            self.active -= 1


@dataclass
class Setup:
    scheduler: Scheduler
    pool: WarmPool
    backend: CountingBackend

    async def run(self, code: str, **kw: Any) -> Any:
        return await self.scheduler.run(RunRequest("python", code, **kw))

    def sandbox(self, sandbox_id: str) -> FakeSandbox:
        (found,) = [s for s in self.backend.created if s.id == sandbox_id]
        return found


@asynccontextmanager
async def running(
    backend: CountingBackend | None = None,
    *,
    size: int = 1,
    live_total: int = 24,
    start_concurrency: int = 2,
    wait_ready: bool = True,
    pool_kw: dict[str, Any] | None = None,
    **scheduler_kw: Any,
) -> AsyncIterator[Setup]:
    """A scheduler over one fake ``python`` pool; on exit, every sandbox must be gone."""
    backend = backend or CountingBackend()
    pool = WarmPool(
        backend,
        language="python",
        image="img:1",
        size=size,
        live=LiveSandboxes(live_total),
        start_limiter=StartSlots(start_concurrency),
        # Pausing is on unless a test says otherwise: several tests are about it.
        **{"pause_idle": True, **(pool_kw or {})},
    )
    scheduler = Scheduler({"python": pool}, SchedulerConfig(**scheduler_kw))
    async with trio.open_nursery() as nursery:
        await nursery.start(scheduler.serve)
        await nursery.start(pool.run)
        if wait_ready and size:
            await trio.sleep(START_S + 1)  # virtual: every start of the first fill is done
            assert pool.statistics().ready == min(size, live_total)
        yield Setup(scheduler, pool, backend)
        nursery.cancel_scope.cancel()
    leaked = [s.id for s in backend.live]
    assert leaked == [], f"sandboxes left alive after shutdown: {leaked}"


# -- deadlines -------------------------------------------------------------------------


async def test_deadline_sigint_then_sigkill_keeps_earlier_output(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as s:
        t0 = trio.current_time()
        result = await s.run("out:before the deadline\n;ignoreint;sleep:100", timeout_s=1)
        assert trio.current_time() - t0 == pytest.approx(1.1)
        assert result.stdout == "before the deadline\n"
        assert result.termination is Termination.TIMEOUT
        assert result.timed_out
        assert result.exit_code == 137
        assert result.signal is None
        assert result.billable
        # Billed up to our SIGKILL, not up to whenever the sandbox died.
        assert result.duration_ms == 1100
        assert s.sandbox(result.sandbox_id)._signals == [signal.SIGINT, signal.SIGKILL]


async def test_deadline_program_stopped_by_sigint_is_still_a_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as s:
        result = await s.run("out:partial;sleep:100", timeout_s=2)
        assert result.stdout == "partial"
        assert result.termination is Termination.TIMEOUT
        assert result.exit_code == 137  # never 0 (nor 130) for a run we stopped
        assert result.duration_ms == 2000
        assert s.sandbox(result.sandbox_id)._signals == [signal.SIGINT]


async def test_run_timeout_is_capped_by_the_configuration(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(max_run_timeout_s=3) as s:
        result = await s.run("sleep:100", timeout_s=60)
        assert result.termination is Termination.TIMEOUT
        assert result.duration_ms == 3000


async def test_silent_sandbox_after_sigkill_is_given_up_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A sandbox that never reports, even after SIGKILL, does not hang the run."""

    @dataclass
    class DeafBackend(CountingBackend):
        async def start_sandbox(self, language: str, image: str) -> FakeSandbox:
            sandbox = await super().start_sandbox(language, image)

            async def ignore(signo: int) -> None:
                return None

            sandbox.send_signal = ignore  # type: ignore[method-assign]
            return sandbox

    async with running(DeafBackend()) as s:
        t0 = trio.current_time()
        result = await s.run("out:x;sleep:1000", timeout_s=1)
        assert trio.current_time() - t0 < 5
        assert result.termination is Termination.TIMEOUT
        assert result.exit_code == 137
        assert result.stdout == "x"


# -- cancellation always destroys -----------------------------------------------------------


async def test_cancelled_run_destroys_its_sandbox(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as s:
        (first,) = s.backend.created
        with trio.move_on_after(0.5):
            await s.run("out:x;sleep:100")
        assert s.scheduler.statistics().in_flight == 0
        await trio.sleep(1)  # the destroy runs off the request path
        assert first.destroyed
        assert first.id in s.backend.destroyed


async def test_cancelled_while_unpausing_destroys_the_taken_sandbox(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A run cancelled after it took a paused sandbox, during the unpause: nothing leaks."""
    async with running(size=2) as s:
        assert s.pool.statistics().paused == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.run, "sleep:5")
            # The first run took the head; the next one is being unpaused right now.
            await trio.testing.wait_all_tasks_blocked()
            with trio.move_on_after(0.01):
                await s.run("out:never")
        await trio.sleep(2)
        stats = s.pool.statistics()
        alive = len(s.backend.live)
        assert alive == stats.ready, f"{alive} alive, {stats.ready} in the pool: one leaked"


async def test_queue_timeout_during_unpause_leaks_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    @dataclass
    class SlowUnpause(CountingBackend):
        async def unpause(self, sandbox: FakeSandbox) -> None:  # type: ignore[override]
            await trio.sleep(5)
            sandbox.paused = False

    async with running(SlowUnpause(), size=2, queue_timeout_s=1) as s:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.run, "sleep:1")
            await trio.testing.wait_all_tasks_blocked()
            with pytest.raises(NoCapacity):
                await s.run("out:never")
        await trio.sleep(10)
        assert len(s.backend.live) == s.pool.statistics().ready


async def test_cancelled_while_queued_leaves_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(size=0) as s:
        with trio.move_on_after(0.1):
            await s.run("out:x")
        assert s.scheduler.statistics().queued == 0
        await trio.sleep(2)


async def test_shutdown_while_a_sandbox_is_being_paused_leaves_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Two starts finish together; the second is paused (30 ms) and shutdown lands then.
    async with running(size=2, wait_ready=False) as s:
        await trio.sleep(START_S + 0.01)
        assert len(s.backend.created) == 2
    # running() asserts that nothing is left alive.


# -- refills ---------------------------------------------------------------------------


async def test_refill_concurrency_is_limited(autojump_clock: trio.testing.MockClock) -> None:
    async with running(size=6, start_concurrency=2) as s:
        assert s.backend.peak == 2
        assert s.pool.statistics().ready == 6
        assert s.pool.statistics().started_total == 6


async def test_live_sandboxes_cap_bounds_the_pool(autojump_clock: trio.testing.MockClock) -> None:
    async with running(size=6, live_total=3) as s:
        await trio.sleep(5)
        assert len(s.backend.created) == 3
        assert s.pool.statistics().ready == 3


async def test_refill_backs_off_after_failures(autojump_clock: trio.testing.MockClock) -> None:
    backend = CountingBackend(fail_starts=3)
    async with running(backend, wait_ready=False, pool_kw={"backoff_initial_s": 0.5}) as s:
        await trio.sleep(10)
        stats = s.pool.statistics()
        assert stats.ready == 1
        assert stats.start_failures_total == 3
        assert stats.consecutive_failures == 0
        attempts = backend.attempts
        assert len(attempts) == 4
        gaps = [b - a - START_S for a, b in itertools.pairwise(attempts)]
        assert gaps == pytest.approx([0.5, 1.0, 2.0])


async def test_circuit_breaker_opens_after_repeated_failures(
    autojump_clock: trio.testing.MockClock,
) -> None:
    backend = CountingBackend(fail_starts=1000)
    pool_kw = {"backoff_initial_s": 1.0, "breaker_threshold": 3, "backoff_max_s": 30.0}
    async with running(backend, wait_ready=False, pool_kw=pool_kw, queue_timeout_s=1) as s:
        assert not s.pool.statistics().breaker_open
        await backend.on_attempt(3).wait()
        await trio.sleep(START_S + 0.1)  # the third attempt has failed
        stats = s.pool.statistics()
        assert stats.breaker_open
        assert stats.consecutive_failures == 3
        assert stats.start_failures_total == 3
        # While it is open: no new attempts, and runs are turned away.
        with pytest.raises(NoCapacity):
            await s.run("out:x")
        assert len(backend.attempts) == 3
        # The engine recovers; once the breaker closes the pool fills again.
        backend.fail_starts = 0
        await trio.sleep(10)
        stats = s.pool.statistics()
        assert not stats.breaker_open
        assert stats.ready == 1
        assert stats.consecutive_failures == 0
        assert (await s.run("out:ok")).stdout == "ok"


async def test_taking_a_sandbox_starts_its_replacement_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(size=1) as s:
        assert s.pool.statistics().started_total == 1
        async with trio.open_nursery() as nursery:
            nursery.start_soon(s.run, "sleep:5")
            await trio.testing.wait_all_tasks_blocked()
            assert s.scheduler.statistics().in_flight == 1
            assert s.pool.statistics().starting == 1  # not after the run: now
            await trio.sleep(START_S + 0.1)
            assert s.scheduler.statistics().in_flight == 1
            assert s.pool.statistics().ready == 1
        assert s.pool.statistics().taken_total == 1


async def test_pool_keeps_only_the_head_unpaused(autojump_clock: trio.testing.MockClock) -> None:
    async with running(size=3) as s:
        stats = s.pool.statistics()
        assert (stats.ready, stats.paused) == (3, 2)
        await s.run("out:x")
        await trio.sleep(START_S + 0.5)  # the replacement has arrived (paused)
        stats = s.pool.statistics()
        assert (stats.ready, stats.paused) == (3, 2)  # the next head was unpaused


async def test_without_idle_pausing_nothing_is_paused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(size=3, pool_kw={"pause_idle": False}) as s:
        assert s.pool.statistics().paused == 0
        assert not any(sb.paused for sb in s.backend.created)
        result = await s.run("out:x")
        assert result.queue_ms == 0
        assert result.stdout == "x"


async def test_old_sandboxes_are_drained_and_replaced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(size=1, pool_kw={"max_age_s": 4.0}) as s:
        (first,) = s.backend.created
        await trio.sleep(6)
        assert first.destroyed
        stats = s.pool.statistics()
        assert stats.drained_total >= 1
        assert stats.ready == 1
        result = await s.run("out:x")
        assert result.sandbox_id != first.id


async def test_outdated_image_is_drained(autojump_clock: trio.testing.MockClock) -> None:
    async with running(size=2, pool_kw={"max_age_s": 600.0}) as s:
        old = list(s.backend.created)
        s.pool.set_image("img:2")
        await trio.sleep(40)  # one pass of the age loop
        assert all(sandbox.destroyed for sandbox in old)
        assert s.pool.statistics().ready == 2
        assert {sb.image for sb in s.backend.live} == {"img:2"}


# -- admission ---------------------------------------------------------------------------


async def test_cold_path_with_pool_size_zero(autojump_clock: trio.testing.MockClock) -> None:
    async with running(size=0) as s:
        assert s.backend.created == []
        result = await s.run("out:cold")
        assert result.stdout == "cold"
        assert result.termination is Termination.EXITED
        assert result.queue_ms == round(START_S * 1000)
        stats = s.scheduler.statistics()
        assert stats.queued_runs_total == 1
        assert stats.warm_hits_total == 0


async def test_warm_hit_is_counted(autojump_clock: trio.testing.MockClock) -> None:
    async with running(size=1) as s:
        result = await s.run("out:warm")
        assert result.queue_ms == 0
        assert s.scheduler.statistics().warm_hits_total == 1


async def test_queue_bound_rejects_beyond_queue_max(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running(size=0, queue_max=1) as s:
        results = []

        async def first() -> None:
            results.append(await s.run("out:first"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(first)
            await trio.testing.wait_all_tasks_blocked()
            assert s.scheduler.statistics().queued == 1
            with pytest.raises(NoCapacity) as info:
                await s.run("out:second")
            assert info.value.retry_after_s > 0
        assert results[0].stdout == "first"
        assert s.scheduler.statistics().rejected_total == {"queue_full": 1}


async def test_queue_time_out(autojump_clock: trio.testing.MockClock) -> None:
    backend = CountingBackend(start_delay_s=10)
    async with running(backend, size=0, queue_timeout_s=3) as s:
        t0 = trio.current_time()
        with pytest.raises(NoCapacity):
            await s.run("out:x")
        assert trio.current_time() - t0 == pytest.approx(3)
        assert s.scheduler.statistics().rejected_total == {"queue_timeout": 1}
        assert s.scheduler.statistics().queued == 0


class _StepBudget(trio.abc.Instrument):
    """Counts task steps; past ``limit`` it cancels ``scope`` (a livelock never idles)."""

    def __init__(self, limit: int, scope: trio.CancelScope) -> None:
        self.limit = limit
        self.scope = scope
        self.steps = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps += 1
        if self.steps > self.limit:
            self.scope.cancel()


async def test_runs_waiting_on_an_empty_pool_sleep(autojump_clock: trio.testing.MockClock) -> None:
    # Eight runs queue on an empty pool while sandboxes start one second at a time.
    # Waiters once woke each other in a loop (every waiter's wake-up kicked the
    # others), burning a core whenever runs queued: on a virtual clock that loop never
    # lets time pass, so a budget of task steps catches it.
    backend = CountingBackend(start_delay_s=1)
    async with running(backend, size=0, queue_timeout_s=30) as s:
        results = []

        async def one(i: int) -> None:
            results.append(await s.run(f"out:{i}"))

        with trio.CancelScope() as scope:
            budget = _StepBudget(20_000, scope)
            trio.lowlevel.add_instrument(budget)
            try:
                async with trio.open_nursery() as nursery:
                    for i in range(8):
                        nursery.start_soon(one, i)
            finally:
                trio.lowlevel.remove_instrument(budget)
        assert not scope.cancelled_caught, f"{budget.steps} task steps: waiters are spinning"
        assert sorted(r.stdout for r in results) == [str(i) for i in range(8)]


async def test_shutting_down_and_unknown_language(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as s:
        with pytest.raises(UnknownLanguage):
            await s.scheduler.run(RunRequest("cobol", "x"))
        s.scheduler.stop_accepting()
        with pytest.raises(ShuttingDown):
            await s.run("out:x")
        await s.scheduler.wait_idle()


# -- results ---------------------------------------------------------------------------------


async def test_forged_exit_frame_is_ignored(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as s:
        result = await s.run("out:a;forge;out:b;exit:3")
        assert result.stdout == "ab"
        assert result.exit_code == 3
        assert result.termination is Termination.EXITED


async def test_exit_codes_signals_and_stdin(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as s:
        result = await s.run("err:boom;exit:1", stdin="data")
        assert (result.stderr, result.exit_code, result.termination) == (
            "boom",
            1,
            Termination.EXITED,
        )
        assert s.sandbox(result.sandbox_id).stdin == b"data"
        result = await s.run("signal:6")
        assert (result.exit_code, result.termination, result.signal) == (
            134,
            Termination.SIGNAL,
            "SIGABRT",
        )
        assert result.billable


async def test_sandbox_deaths_are_charged(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as s:
        died = await s.run("out:a;die")
        assert died.termination is Termination.SIGNAL
        assert died.signal == "SIGKILL"
        assert died.exit_code == 137
        assert died.billable
        assert died.stdout == "a"
        oom = await s.run("oom")
        assert oom.termination is Termination.OOM
        assert oom.exit_code == 137
        assert oom.billable


class ScriptedBudget:
    """Pays half a second ahead for the first ``allow`` calls, then nothing more."""

    def __init__(self, allow: int) -> None:
        self.allow = allow
        self.calls: list[int] = []
        self.paid_ms = 500

    async def extend(self, elapsed_ms: int) -> int:
        self.calls.append(elapsed_ms)
        if len(self.calls) <= self.allow:
            self.paid_ms = elapsed_ms + 500
        return self.paid_ms


class FixedBudget:
    """Everything there is pays for ``paid_ms``: the account has no more."""

    def __init__(self, paid_ms: int) -> None:
        self.paid_ms = paid_ms
        self.calls: list[int] = []

    async def extend(self, elapsed_ms: int) -> int:
        self.calls.append(elapsed_ms)
        return self.paid_ms


async def test_credit_limit_stops_the_run(autojump_clock: trio.testing.MockClock) -> None:
    async with running() as s:
        budget = ScriptedBudget(allow=1)
        result = await s.scheduler.run(RunRequest("python", "out:x;sleep:100"), budget)
        assert budget.calls == [500, 1000]
        assert result.termination is Termination.CREDIT_LIMIT
        assert result.exit_code == 137
        assert result.billable
        assert result.stdout == "x"
        assert result.duration_ms == 1000
        # Not a deadline: no SIGINT grace, straight to SIGKILL.
        assert s.sandbox(result.sandbox_id)._signals == [signal.SIGKILL]


async def test_run_goes_on_until_what_is_paid_runs_out(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The last 250 credits of an account buy 750 ms in all: the run is stopped at
    # 750 ms, not at the half-second check before it (credits left unused) nor
    # at the one after (credits it cannot pay).
    async with running() as s:
        budget = FixedBudget(750)
        result = await s.scheduler.run(RunRequest("python", "out:x;sleep:100"), budget)
        assert budget.calls == [500, 750]
        assert result.termination is Termination.CREDIT_LIMIT
        assert result.duration_ms == 750


async def test_budget_that_allows_everything_changes_nothing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as s:
        budget = ScriptedBudget(allow=10**6)
        result = await s.scheduler.run(RunRequest("python", "sleep:1.2;exit:4"), budget)
        assert budget.calls == [500, 1000]
        assert result.exit_code == 4
        assert result.termination is Termination.EXITED


async def test_output_limit_stops_the_run_at_exactly_the_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as s:
        result = await s.run("bytes:60;err:0123456789;bytes:60;out:never", output_limit_bytes=100)
        assert result.stdout == "x" * 90
        assert result.stderr == "0123456789"
        assert result.truncated
        assert result.termination is Termination.OUTPUT_LIMIT
        assert result.exit_code == 137
        await trio.sleep(1)
        assert s.sandbox(result.sandbox_id).destroyed


async def test_no_sandbox_is_ever_reused(autojump_clock: trio.testing.MockClock) -> None:
    async with running(size=2) as s:
        ids = [(await s.run("out:x")).sandbox_id for _ in range(6)]
        assert len(set(ids)) == 6
        await trio.sleep(1)
        assert all(s.sandbox(i).destroyed for i in ids)


# -- the output cap, unit by unit ---------------------------------------------------------------


def test_collector_exact_cap() -> None:
    c = OutputCollector(10)
    assert c.add("stdout", b"12345")
    assert c.add("stderr", b"67890")  # exactly at the cap: still fine
    assert not c.truncated
    assert not c.add("stdout", b"!")
    assert c.truncated
    assert c.total == 10
    assert c.decode() == ("12345", "67890")
    assert not c.add("stdout", b"more")  # stays stopped


def test_collector_cuts_inside_a_chunk() -> None:
    c = OutputCollector(7)
    assert not c.add("stdout", b"abcdefghij")
    assert c.decode() == ("abcdefg", "")
    assert c.total == 7


@pytest.mark.parametrize(
    ("char", "room"),
    [("é", 1), ("€", 1), ("€", 2), ("😀", 1), ("😀", 2), ("😀", 3)],
)
def test_collector_never_splits_a_character(char: str, room: int) -> None:
    encoded = char.encode()
    c = OutputCollector(4 + room)
    assert not c.add("stdout", b"abcd" + encoded + b"z")
    assert c.decode() == ("abcd", "")
    assert c.total == 4
    assert c.truncated


@pytest.mark.parametrize("char", ["é", "€", "😀"])
def test_collector_keeps_a_character_that_ends_at_the_cap(char: str) -> None:
    encoded = char.encode()
    c = OutputCollector(2 + len(encoded))
    assert not c.add("stdout", b"ab" + encoded + b"z")
    assert c.decode() == ("ab" + char, "")


def test_collector_cut_before_a_character_begun_in_an_earlier_chunk() -> None:
    # Pipe reads split characters: the lead byte arrived in the chunk before the cap.
    c = OutputCollector(4)
    assert c.add("stdout", b"abc\xc3")  # exactly at the cap
    assert not c.add("stdout", b"\xa9!")
    assert c.decode() == ("abc", "")
    assert c.total == 3
    c = OutputCollector(5)
    assert c.add("stdout", b"ab\xe2")
    assert not c.add("stdout", b"\x82\xac\xe2\x82")  # room for "\x82\xac": completes the €
    assert c.decode() == ("ab€", "")
    assert c.total == 5


def test_collector_cut_is_per_stream() -> None:
    # An incomplete character on the other stream is the program's own: kept and
    # decoded with a replacement character, not trimmed by the cut.
    c = OutputCollector(4)
    assert c.add("stdout", b"a\xc3")
    assert not c.add("stderr", b"xyz")
    assert c.decode() == ("a\ufffd", "xy")
    assert c.total == 4


def test_collector_invalid_bytes_become_replacement_characters() -> None:
    c = OutputCollector(100)
    assert c.add("stdout", b"ok \xff\xfe end")
    assert c.decode()[0] == "ok \ufffd\ufffd end"


def test_collector_character_split_across_chunks_survives() -> None:
    c = OutputCollector(100)
    encoded = "😀".encode()
    assert c.add("stdout", encoded[:2])
    assert c.add("stdout", encoded[2:])
    assert c.decode()[0] == "😀"


@given(
    chunks=st.lists(
        st.tuples(st.sampled_from(["stdout", "stderr"]), st.text(max_size=40)), max_size=20
    ),
    limit=st.integers(min_value=0, max_value=200),
)
def test_collector_properties(chunks: list[tuple[str, str]], limit: int) -> None:
    c = OutputCollector(limit)
    written = {"stdout": b"", "stderr": b""}
    for stream, text in chunks:
        data = text.encode()
        written[stream] += data
        if not c.add(stream, data):
            break
    out, err = c.decode()
    kept = {"stdout": out.encode(), "stderr": err.encode()}
    assert c.total == len(kept["stdout"]) + len(kept["stderr"]) <= limit
    assert "\ufffd" not in out + err  # valid text is never cut into replacement characters
    for stream in kept:
        assert written[stream].startswith(kept[stream])
    if c.truncated:
        assert sum(len(v) for v in written.values()) > limit
        assert limit - c.total <= 3  # only an incomplete sequence is dropped before the cap
    else:
        assert kept == written


@given(
    text=st.text(max_size=120),
    cuts=st.lists(st.integers(min_value=0, max_value=500), max_size=12),
    limit=st.integers(min_value=0, max_value=400),
)
def test_collector_cut_with_chunks_split_anywhere(text: str, cuts: list[int], limit: int) -> None:
    data = text.encode()
    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    c = OutputCollector(limit)
    for start, end in itertools.pairwise(bounds):
        if not c.add("stdout", data[start:end]):
            break
    out, _ = c.decode()
    assert "\ufffd" not in out
    assert text.startswith(out)
    assert c.total == len(out.encode()) <= limit
    if len(data) > limit:
        assert c.truncated
        assert limit - c.total <= 3
    else:
        assert out == text
        assert not c.truncated


# -- files out (issue 18) ----------------------------------------------------------------


async def test_out_files_are_capped_on_the_host_too(autojump_clock: trio.testing.MockClock) -> None:
    # The program can write frames into the stream itself: the host checks the limits again.
    steps = ";".join(f"file:out/f{i}=abc" for i in range(5))
    async with running() as s:
        result = await s.run(
            steps + ";file:out/big=" + "x" * 20 + ";file:../etc/passwd=root;file:out/f0=again",
            out_max_files=3,
            out_max_bytes=10,
        )
    assert [(f.path, f.content) for f in result.files] == [
        ("out/f0", b"abc"),
        ("out/f1", b"abc"),
        ("out/f2", b"abc"),
        ("out/f3", None),
        ("out/f4", None),
        ("out/big", None),
    ]
    assert result.files_truncated


async def test_a_cut_listing_marks_the_files_truncated(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with running() as s:
        plain = await s.run("file:out/a=1")
        cut = await s.run("file:out/a=1;filescut")
    assert not plain.files_truncated
    assert [f.size for f in plain.files] == [1]
    assert cut.files_truncated


async def test_files_args_and_env_reach_the_sandbox(autojump_clock: trio.testing.MockClock) -> None:
    from scheduler import InputFile

    async with running() as s:
        result = await s.run(
            "out:x",
            files=(InputFile("a.csv", b"1,2"),),
            args=("--x",),
            env=(("K", "v"),),
            out_max_files=7,
        )
        extras = s.sandbox(result.sandbox_id).extras
    assert extras.files == (("a.csv", b"1,2"),)
    assert extras.args == ("--x",)
    assert extras.env == (("K", "v"),)
    assert extras.out_max_files == 7


async def test_billed_by_the_sandboxs_own_measure_never_above_the_hosts(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The host saw 500 ms (its reading of the report may wait behind its other
    # work); the supervisor measured the program itself at 20.4 ms: billed 21.
    async with running() as s:
        result = await s.run("took:20.4;sleep:0.5")
        assert result.duration_ms == 21
        # A report claiming more than the host saw is capped by the host's clock.
        result = await s.run("took:900;sleep:0.1")
        assert result.duration_ms == 100
        # A forged report (the program wrote it, not the supervisor) says nothing:
        # the real one, at the end, does.
        result = await s.run("took:1;forge;took:400;sleep:0.5")
        assert result.duration_ms == 400
        # A run we stopped is billed by the clock its deadline is kept by.
        result = await s.run("took:700;sleep:100", timeout_s=1)
        assert result.timed_out
        assert result.duration_ms == 1000
