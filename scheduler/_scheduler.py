"""Policy: admission, one fresh sandbox per run, deadlines, output caps, always destroy."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal as signal_mod
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import trio

from pool import (
    EngineUnavailable,
    Exited,
    FilesCut,
    Gone,
    OutFile,
    Output,
    PoolError,
    ProtocolError,
    RunExtras,
    Sandbox,
    WarmPool,
)
from pool import NoCapacity as PoolNoCapacity

from ._errors import NoCapacity, ShuttingDown, UnknownLanguage
from ._output import FilesCollector, OutputCollector
from ._queue import FairQueue, ServiceRate, Waiter, predict_wait_s
from ._types import Budget, RunRequest, RunResult, Termination

log = logging.getLogger("cinch.scheduler")

SIGINT_GRACE_S = 0.1  # SIGINT at the deadline, SIGKILL this much later
KILL_WAIT_S = 2.0  # after SIGKILL, how long we wait for the report before giving up
BUDGET_INTERVAL_S = 0.5
# A queued run is refused before its time-out only on a rate measured over this
# many deliveries, and only when its predicted wait exceeds the time it has left
# by this factor: a run that might still be served keeps waiting.
HOPELESS_MIN_SAMPLES = 4
HOPELESS_MARGIN = 1.25


@dataclass(frozen=True)
class SchedulerConfig:
    """Admission and run policy. Units are in the names."""

    # The longest a queued run waits for a sandbox. A run whose predicted wait
    # exceeds ``admit_fraction`` of it is refused at once (with a Retry-After), so
    # the slack absorbs the prediction's error instead of a late 503.
    queue_timeout_s: float = 20.0
    admit_fraction: float = 0.75
    queue_max: int = 256
    max_run_timeout_s: float = 10.0
    destroy_timeout_s: float = 30.0
    # The result goes back first; the sandbox's teardown (and its replacement's
    # start) wait this long, so their CPU does not slow the answer on its way out.
    destroy_delay_s: float = 0.05


@dataclass(frozen=True)
class SchedulerStatistics:
    """A snapshot of the scheduler (see :meth:`Scheduler.statistics`)."""

    in_flight: int
    queued: int
    accepting: bool
    runs_total: Mapping[tuple[str, str], int]
    rejected_total: Mapping[str, int]
    warm_hits_total: int
    queued_runs_total: int
    destroying: int
    queued_by_language: Mapping[str, int] = field(default_factory=dict)
    predicted_wait_s: Mapping[str, float] = field(default_factory=dict)
    service_rate: Mapping[str, float | None] = field(default_factory=dict)


@dataclass
class _RunState:
    stopped: Termination | None = None
    kill_sent_at: float | None = None
    scope: trio.CancelScope | None = None


@dataclass
class _Counters:
    runs: Counter[tuple[str, str]] = field(default_factory=Counter)
    rejected: Counter[str] = field(default_factory=Counter)
    warm_hits: int = 0
    queued_runs: int = 0


class Scheduler:
    """Runs programs in warm sandboxes. Start with ``await nursery.start(scheduler.serve)``."""

    def __init__(self, pools: Mapping[str, WarmPool], config: SchedulerConfig | None = None):
        self._pools = dict(pools)
        self.config = config or SchedulerConfig()
        self._in_flight = 0
        self._queued = 0
        self._destroying = 0
        self._destroyed_all = trio.Event()
        self._destroyed_all.set()
        self._accepting = True
        self._idle = trio.Event()
        self._idle.set()
        self._counters = _Counters()
        self._nursery: trio.Nursery | None = None
        self._queues = {name: FairQueue() for name in self._pools}
        self._rates = {name: ServiceRate() for name in self._pools}
        # Runs the caller let in and has not handed to run() yet (see admitting()).
        self._coming: dict[str, Counter[str]] = {name: Counter() for name in self._pools}

    @property
    def accepting(self) -> bool:
        return self._accepting

    @property
    def admit_budget_s(self) -> float:
        return self.config.queue_timeout_s * self.config.admit_fraction

    def predicted_wait_s(self, language: str, tenant: str = "", *, coming: bool = True) -> float:
        """The wait a new run of ``tenant`` would be predicted now (0 with a warm sandbox).

        ``coming``: count the runs being let in (:meth:`admitting`) as if they waited;
        not for one of those runs itself, as they may well queue after it.
        """
        pool = self._pools[language]
        queue = self._queues[language]
        s = pool.statistics()
        measured = self._rates[language].measured()
        if measured is None and s.started_total == 0:
            # Nothing measured yet (the first fill): no grounds to refuse anyone.
            return 0.0
        slots = max(1, self._start_slots())
        # Languages with a backlog share the start slots.
        busy = max(1, sum(1 for q in self._queues.values() if len(q)))
        return predict_wait_s(
            position=queue.position(tenant, self._coming[language] if coming else None),
            ready=s.ready,
            starting=s.starting,
            measured_rate=measured,
            start_estimate_s=s.start_estimate_s,
            start_slots=slots / busy if len(queue) else slots,
        )

    def refuses(self, language: str, tenant: str | None = None) -> float | None:
        """If a run of ``language`` arriving now would be refused, the predicted wait;
        else None. Lets the caller answer 503 before any other work.

        Without ``tenant``: refused whoever sent it (the best case is a new
        account's run, first in its round). With it: refused for that tenant, whose
        runs already waiting put it further back.
        """
        if language not in self._pools:
            return None
        if not len(self._queues[language]) and not self._coming[language]:
            return None
        predicted = self.predicted_wait_s(language, "\0nobody" if tenant is None else tenant)
        return predicted if predicted > self.admit_budget_s else None

    @contextlib.contextmanager
    def admitting(self, language: str, tenant: str) -> Iterator[None]:
        """A run the caller let in (``refuses`` said None) and will hand to :meth:`run`
        when its own work in between is done (the API: a database round trip for
        the key and the credit hold). Meanwhile predictions count it as if it were
        queued, under ``tenant``: a burst that arrives at once is refused by the
        places it will take, not admitted whole before its first run has queued.
        """
        coming = self._coming.get(language)
        if coming is None:
            yield
            return
        coming[tenant] += 1
        try:
            yield
        finally:
            coming[tenant] -= 1
            if coming[tenant] <= 0:
                del coming[tenant]

    def _start_slots(self) -> int:
        pool = next(iter(self._pools.values()), None)
        return 1 if pool is None else pool.start_slots

    @property
    def languages(self) -> list[str]:
        return sorted(self._pools)

    def pool(self, language: str) -> WarmPool:
        return self._pools[language]

    def statistics(self) -> SchedulerStatistics:
        return SchedulerStatistics(
            in_flight=self._in_flight,
            queued=self._queued,
            accepting=self._accepting,
            runs_total=dict(self._counters.runs),
            rejected_total=dict(self._counters.rejected),
            warm_hits_total=self._counters.warm_hits,
            queued_runs_total=self._counters.queued_runs,
            destroying=self._destroying,
            queued_by_language={n: len(q) for n, q in self._queues.items()},
            predicted_wait_s={n: self.predicted_wait_s(n) for n in self._pools},
            service_rate={n: r.measured() for n, r in self._rates.items()},
        )

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        """Own the background destroys; returns when cancelled, after they finish."""
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for name, pool in self._pools.items():
                nursery.start_soon(self._dispatch, name, pool)
            task_status.started()
            await trio.sleep_forever()

    def stop_accepting(self) -> None:
        """New runs get :class:`ShuttingDown`; runs in flight go on."""
        self._accepting = False

    async def wait_idle(self) -> None:
        """Return once no run is in flight."""
        await self._idle.wait()

    async def run(
        self,
        request: RunRequest,
        budget: Budget | None = None,
        *,
        on_output: Callable[[str, str], None] | None = None,
        stop: trio.Event | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> RunResult:
        """Run ``request`` in a fresh sandbox and destroy it afterwards, whatever happens.

        A streamed run passes ``on_output(stream, text)``: called with each piece
        of output as it arrives, within the same cap as the result and never
        splitting a character (``stream`` is ``"stdout"`` or ``"stderr"``).  Setting
        ``stop`` ends the run at once (``cancelled``; charged up to then).
        ``task_status.started()`` is called once the run has its sandbox, so
        ``await nursery.start(...)`` raises the admission errors below.

        Raises:
            UnknownLanguage: no pool for ``request.language``.
            NoCapacity: no sandbox within the queue time-out, or the queue is full.
            ShuttingDown: the scheduler is draining.
        """
        if not self._accepting:
            raise ShuttingDown("Cinch is restarting; retry in a moment")
        pool = self._pools.get(request.language)
        if pool is None:
            raise UnknownLanguage(f"unsupported language {request.language!r}")
        t_queue = trio.current_time()
        pool.note_arrival()
        sandbox, warm = await self._acquire(request, pool)
        if warm:
            self._counters.warm_hits += 1
        else:
            self._counters.queued_runs += 1
        queue_ms = round((trio.current_time() - t_queue) * 1000)
        self._in_flight += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        try:
            task_status.started()
            result = await self._execute(
                pool, sandbox, request, budget, queue_ms, on_output=on_output, stop=stop
            )
        finally:
            self._destroy_later(pool, sandbox)
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()
        self._counters.runs[(request.language, result.termination.value)] += 1
        return result

    async def _acquire(self, request: RunRequest, pool: WarmPool) -> tuple[Sandbox, bool]:
        """A sandbox for ``request``: at once if one is warm and nobody waits, else
        through the fair queue, if the predicted wait fits the budget."""
        queue = self._queues[request.language]
        if not len(queue) and pool.statistics().ready > 0:
            self._queued += 1
            try:
                return await pool.take(self.config.queue_timeout_s), True
            except PoolNoCapacity as exc:
                self._counters.rejected["queue_timeout"] += 1
                raise NoCapacity(str(exc), retry_after_s=1.0) from exc
            finally:
                self._queued -= 1
        if self._queued >= self.config.queue_max:
            self._counters.rejected["queue_full"] += 1
            raise NoCapacity("too many runs are waiting for a sandbox", retry_after_s=1.0)
        predicted = self.predicted_wait_s(request.language, request.tenant, coming=False)
        budget = self.admit_budget_s
        if predicted > budget:
            self._counters.rejected["predicted_wait"] += 1
            raise NoCapacity(
                f"no {request.language} sandbox is free: the predicted wait is "
                f"{predicted:.1f} s, over the {budget:g} s this server queues for",
                retry_after_s=max(1.0, math.ceil(predicted - budget)),
            )
        waiter = Waiter(request.tenant, trio.current_time())
        queue.push(waiter)
        pool.note_queued(len(queue))
        self._queued += 1
        try:
            with trio.move_on_after(self.config.queue_timeout_s):
                await waiter.delivered.wait()
        except BaseException:
            # Cancelled (the client left): a sandbox delivered meanwhile goes back.
            queue.remove(waiter)
            if waiter.sandbox is not None:
                pool.give_back(waiter.sandbox)
            raise
        finally:
            self._queued -= 1
            pool.note_queued(len(queue))
        if waiter.refused_wait_s is not None:
            # Admitted on a prediction the measured rate has since proved wrong:
            # say so now rather than at the time-out.
            self._counters.rejected["predicted_late"] += 1
            raise NoCapacity(
                f"no {request.language} sandbox is free: at the rate sandboxes come now, "
                f"this run would wait {waiter.refused_wait_s:.1f} s more, past the "
                f"{self.config.queue_timeout_s:g} s this server queues for",
                retry_after_s=max(1.0, math.ceil(waiter.refused_wait_s)),
            )
        if waiter.sandbox is None:
            queue.remove(waiter)
            self._counters.rejected["queue_timeout"] += 1
            raise NoCapacity(
                f"no {request.language} sandbox ready within {self.config.queue_timeout_s:g}s",
                retry_after_s=max(1.0, math.ceil(self.predicted_wait_s(request.language))),
            )
        return waiter.sandbox, False

    async def _dispatch(self, language: str, pool: WarmPool) -> None:
        """Hand each sandbox that becomes ready to the next queued run, round robin."""
        queue = self._queues[language]
        rate = self._rates[language]
        while True:
            await queue.wait_nonempty()
            try:
                sandbox = await pool.take(math.inf)
            except PoolNoCapacity:  # pragma: no cover - an infinite wait never times out
                continue
            waiter = queue.pop()
            if waiter is None:
                # Everyone gave up while we waited: keep it warm for the next run.
                pool.give_back(sandbox)
                rate.note_idle()
                continue
            waiter.deliver(sandbox)
            rate.note_delivery(backlog=len(queue) > 0)
            self._refuse_hopeless(language)
            pool.note_queued(len(queue))

    def _refuse_hopeless(self, language: str) -> None:
        """Refuse, at once, the queued runs the measured rate can no longer serve in time.

        A run is admitted on a prediction; under a burst the first predictions
        come before any rate has been measured. Once one is, a run whose place
        in the queue (divided by that rate) lies beyond its time-out is told now,
        with Retry-After, instead of waiting out the whole queue time-out first.
        """
        rate = self._rates[language]
        measured = rate.measured()
        # Deliveries come in bunches (starts finish together): a rate from a few
        # intervals would refuse runs that would have been served.
        if not measured or rate.samples < HOPELESS_MIN_SAMPLES:
            return
        queue = self._queues[language]
        now = trio.current_time()
        # Sandboxes starting in a slot come within about one start: count from them.
        # (Not every start asked for: those beyond the slots wait for one, and while
        # the target is up at a burst there are many of them.)
        ahead = self._pools[language].statistics().in_slot
        for place, waiter in enumerate(queue.in_order(), start=1):
            predicted = max(0, place - ahead) / measured
            left = waiter.arrived_at + self.config.queue_timeout_s - now
            if predicted > left * HOPELESS_MARGIN:
                queue.remove(waiter)
                waiter.refuse(predicted)

    def _destroy_later(self, pool: WarmPool, sandbox: Sandbox) -> None:
        """Destroy off the request path; the answer does not wait for the teardown."""
        if self._nursery is None:
            raise RuntimeError("Scheduler.serve() is not running")
        self._nursery.start_soon(self._destroy, pool, sandbox)

    async def wait_destroyed(self) -> None:
        """Return once no sandbox of a finished run is still being destroyed."""
        await self._destroyed_all.wait()

    async def _destroy(self, pool: WarmPool, sandbox: Sandbox) -> None:
        self._destroying += 1
        if self._destroyed_all.is_set():
            self._destroyed_all = trio.Event()
        try:
            with trio.CancelScope(shield=True), trio.move_on_after(self.config.destroy_timeout_s):
                await trio.sleep(self.config.destroy_delay_s)
                await pool.release(sandbox)
        finally:
            self._destroying -= 1
            if self._destroying == 0:
                self._destroyed_all.set()

    async def _execute(
        self,
        pool: WarmPool,
        sandbox: Sandbox,
        request: RunRequest,
        budget: Budget | None,
        queue_ms: int,
        *,
        on_output: Callable[[str, str], None] | None = None,
        stop: trio.Event | None = None,
    ) -> RunResult:
        timeout_s = min(request.timeout_s, self.config.max_run_timeout_s)
        collector = OutputCollector(request.output_limit_bytes, on_output)
        files = FilesCollector(request.out_max_files, request.out_max_bytes)
        extras = RunExtras(
            files=tuple((f.path, f.content) for f in request.files),
            args=request.args,
            env=request.env,
            out_max_files=request.out_max_files,
            out_max_bytes=request.out_max_bytes,
        )
        state = _RunState()
        nonce = os.urandom(16)
        code = request.code.encode("utf-8", "surrogatepass")
        stdin = request.stdin.encode("utf-8", "surrogatepass")
        t0 = trio.current_time()
        end: Exited | Gone | None = None
        engine_lost = False
        try:
            await sandbox.send_run(
                code,
                stdin,
                nonce,
                request.output_limit_bytes,
                streamed=on_output is not None,
                extras=extras,
            )
            async with trio.open_nursery() as nursery:
                state.scope = nursery.cancel_scope
                nursery.start_soon(self._enforce_deadline, sandbox, state, t0 + timeout_s)
                if budget is not None:
                    nursery.start_soon(self._enforce_budget, sandbox, state, budget, t0)
                if stop is not None:
                    nursery.start_soon(self._enforce_stop, sandbox, state, stop)
                end = await self._read_until_end(sandbox, collector, files, state)
                nursery.cancel_scope.cancel()
        except EngineUnavailable as exc:
            log.warning("run %s: engine lost: %s", request.request_id, exc)
            engine_lost = True
        t_end = trio.current_time()
        if state.stopped is not None and state.kill_sent_at is not None:
            # Bill up to our kill, not up to however long the sandbox took to die
            # (a deadline's SIGINT grace is the program's time; other kills are at once).
            grace = SIGINT_GRACE_S if state.stopped is Termination.TIMEOUT else 0.0
            t_end = min(t_end, state.kill_sent_at + grace)
        duration_ms = max(0, round((t_end - t0) * 1000))
        if (
            state.stopped is None
            and isinstance(end, Exited)
            and end.authentic
            and end.took_s is not None
        ):
            # A program that ended by itself: the sandbox's own measure of it, go to
            # end. The host's adds the frames' trips and the wait of this process's
            # other work (a burst's requests) before it reads the report, which is
            # not the user's. A run we stopped keeps the host's clock, which its
            # deadline and its credit limit are kept by.
            duration_ms = min(duration_ms, max(0, math.ceil(end.took_s * 1000)))
        collector.finish()
        stdout, stderr = collector.decode()
        termination, exit_code, signame, billable = await self._classify(
            sandbox, state, end, engine_lost, collector.truncated
        )
        return RunResult(
            stdout=stdout,
            stderr=stderr,
            exit_code=exit_code,
            termination=termination,
            signal=signame,
            truncated=collector.truncated,
            duration_ms=duration_ms,
            queue_ms=queue_ms,
            billable=billable,
            language=request.language,
            sandbox_id=sandbox.id,
            files=tuple(files.files),
            files_truncated=files.truncated,
        )

    async def _read_until_end(
        self,
        sandbox: Sandbox,
        collector: OutputCollector,
        files: FilesCollector,
        state: _RunState,
    ) -> Exited | Gone | None:
        while True:
            try:
                event = await sandbox.receive_event()
            except ProtocolError:
                # Only the program can corrupt the frame stream (via /proc/1/fd/1). The
                # error's text holds bytes the program wrote: logs never carry output.
                log.info("sandbox %s: the program corrupted its frame stream", sandbox.id[:12])
                return None
            if isinstance(event, Output):
                if not collector.add(event.stream, event.data):
                    state.stopped = state.stopped or Termination.OUTPUT_LIMIT
                    return None
            elif isinstance(event, OutFile):
                files.add(event.path, event.size, event.content)
            elif isinstance(event, FilesCut):
                files.truncated = True
            elif isinstance(event, Exited):
                if event.authentic:
                    return event
                # A forged report: ignore it and wait for the real one.
            else:
                return event

    async def _enforce_deadline(self, sandbox: Sandbox, state: _RunState, deadline: float) -> None:
        await trio.sleep_until(deadline)
        if state.stopped is None:
            state.stopped = Termination.TIMEOUT
        await self._kill(sandbox, state, graceful=state.stopped is Termination.TIMEOUT)

    async def _enforce_stop(self, sandbox: Sandbox, state: _RunState, stop: trio.Event) -> None:
        await stop.wait()
        if state.stopped is None:
            state.stopped = Termination.CANCELLED
            await self._kill(sandbox, state, graceful=False)

    async def _kill(self, sandbox: Sandbox, state: _RunState, *, graceful: bool) -> None:
        """SIGINT (if graceful), then SIGKILL; give up on the sandbox if it stays silent."""
        if state.kill_sent_at is None:
            state.kill_sent_at = trio.current_time()
        if graceful:
            await sandbox.send_signal(signal_mod.SIGINT)
            await trio.sleep(SIGINT_GRACE_S)
        await sandbox.send_signal(signal_mod.SIGKILL)
        await trio.sleep(KILL_WAIT_S)
        # No report after SIGKILL: stop waiting; the destroy that follows ends it.
        if state.scope is not None:
            state.scope.cancel()

    async def _enforce_budget(
        self, sandbox: Sandbox, state: _RunState, budget: Budget, t0: float
    ) -> None:
        # Check every interval, and at the very moment the paid time runs out: a
        # run stops only when nothing more can be paid, not a whole step early.
        next_check = t0 + BUDGET_INTERVAL_S
        while True:
            await trio.sleep_until(next_check)
            elapsed_ms = round((trio.current_time() - t0) * 1000)
            paid_ms = await budget.extend(elapsed_ms)
            now = trio.current_time()
            if paid_ms <= round((now - t0) * 1000):
                if state.stopped is None:
                    state.stopped = Termination.CREDIT_LIMIT
                    await self._kill(sandbox, state, graceful=False)
                return
            next_check = min(now + BUDGET_INTERVAL_S, t0 + paid_ms / 1000)

    async def _classify(
        self,
        sandbox: Sandbox,
        state: _RunState,
        end: Exited | Gone | None,
        engine_lost: bool,
        truncated: bool,
    ) -> tuple[Termination, int, str | None, bool]:
        if engine_lost:
            return Termination.SANDBOX_ERROR, -1, None, False
        if state.stopped is not None:
            return state.stopped, 137, None, True
        if isinstance(end, Exited):
            if end.signal is not None:
                return Termination.SIGNAL, 128 + end.signal, _signame(end.signal), True
            return Termination.EXITED, int(end.code or 0), None, True
        if isinstance(end, Gone):
            try:
                info = await sandbox.death_info()
            except PoolError:
                return Termination.SANDBOX_ERROR, -1, None, False
            if info.oom:
                return Termination.OOM, 137, None, True
            if info.engine_lost or info.killed_externally or info.killed_by_us:
                return Termination.SANDBOX_ERROR, -1, None, False
            code = info.exit_code or 0
            signo = code - 128 if code > 128 else signal_mod.SIGKILL
            return Termination.SIGNAL, 128 + signo, _signame(signo), True
        # A corrupted frame stream: the program did it; it is stopped and charged.
        return Termination.SIGNAL, 137, "SIGKILL", True


def _signame(signo: int) -> str:
    try:
        return signal_mod.Signals(signo).name
    except ValueError:
        return f"SIG{signo}"
