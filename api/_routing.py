"""Routing runs to agents (``cinch api``): membership, freshness, power of two choices.

SCALE-OUT.md section 3, in order:

1. Members come from a static list (``CINCH_AGENTS``) or a DNS name resolved
   every few seconds (``CINCH_AGENTS_DNS``: Swarm ``tasks.<service>``, a
   Kubernetes headless Service).
2. Each member's pool levels come from polling ``GET /v1/pool`` and from the
   header every run's answer carries. A member is down after 2 polls missed in a
   row or at once on a connection error; a successful poll brings it back.
3. A run goes to the better of two random members that are up, not draining and
   have spare warm sandboxes (warm less what this replica sent them since their
   last levels): the larger spare count wins, ties by fewer runs in flight.
4. The agent's take is authoritative: ``409`` (empty) sends the run to the next
   candidate, at most 2 more.  No warm sandbox anywhere: the run queues on the
   least-loaded member, which may answer 503 with a Retry-After. When every
   member predicts a wait over its own budget, :meth:`Router.refuses` says so
   before the API's database work.
5. A member that fails mid-run: the run is retried once elsewhere if its
   deadline leaves time and none of its output was streamed yet (sandboxes have
   no network: at-least-once execution, and the API charges exactly once, for
   the result it delivers), else :class:`~scheduler.NoCapacity` (503; the API
   releases the hold).  A sandbox is never used twice: each agent destroys
   every sandbox after its run.

:class:`Router` has the shape of :meth:`scheduler.Scheduler.run`, so the API's
run path does not know whether its runs stay in-process (``cinch serve``) or
travel (``cinch api``).
"""

from __future__ import annotations

import contextlib
import logging
import random
import statistics
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import trio

from scheduler import Budget, NoCapacity, RunRequest, RunResult, ShuttingDown

from ._remote import AgentClient, AgentEmpty, AgentError, AgentLost, AgentRefused, AgentUnreachable
from ._wire import Levels

log = logging.getLogger("cinch.routing")

BUDGET_PUSH_S = 0.25
# A run on a member that stays down this long is given up (and retried elsewhere).
LOST_AFTER_S = 2.0
MAX_ATTEMPTS = 6  # warm tries, failures and the one retry, together


@dataclass(frozen=True)
class RouterConfig:
    """Routing policy. Units are in the names."""

    poll_interval_s: float = 0.25
    # A poll not answered within this is missed; 2 missed in a row: down.
    poll_timeout_s: float = 0.3
    misses_down: int = 2
    dns_interval_s: float = 2.0
    more_warm_tries: int = 2  # after a 409, at most this many more candidates
    # How long the agent may take to answer on top of the run's deadline (its queue).
    queue_timeout_s: float = 20.0


class AgentApi(Protocol):
    """What the router needs of an agent client (:class:`~api._remote.AgentClient`)."""

    base_url: str

    async def aclose(self) -> None: ...

    async def pool(self, timeout_s: float) -> Levels: ...

    async def push_budget(self, run_id: str, paid_ms: int) -> None: ...

    async def stop(self, run_id: str) -> None: ...

    async def run(
        self,
        request: RunRequest,
        *,
        paid_ms: int | None,
        warm_only: bool,
        read_timeout_s: float,
        on_output: Callable[[str, str], None] | None = None,
        on_started: Callable[[Levels | None], None] | None = None,
        timings: dict[str, float] | None = None,
    ) -> RunResult: ...


@dataclass
class AgentView:
    """One member as this replica sees it."""

    url: str
    client: AgentApi
    up: bool = False
    levels: Levels | None = None
    # Warm runs sent since the last levels arrived: spare = warm - sent.
    sent: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0
    misses: int = 0
    down_since: float | None = None
    # Set (and replaced) at every up/down transition.
    changed: trio.Event = field(default_factory=trio.Event)
    polled: trio.Event = field(default_factory=trio.Event)  # the first poll has ended
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)

    @property
    def routable(self) -> bool:
        return self.up and self.levels is not None and not self.levels.draining

    def spare(self, language: str) -> int:
        if self.levels is None:
            return 0
        lv = self.levels.languages.get(language)
        return 0 if lv is None else lv.warm - self.sent[language]

    def note_levels(self, levels: Levels | None) -> None:
        if levels is None:
            return
        if self.levels is not None and levels.epoch != self.levels.epoch:
            log.info("agent %s restarted (epoch %s)", self.url, levels.epoch)
        self.levels = levels
        self.sent.clear()

    def set_up(self, up: bool, why: str = "") -> bool:
        """Returns whether this was a transition."""
        if up == self.up:
            return False
        self.up = up
        self.down_since = None if up else trio.current_time()
        if not up:
            log.warning("agent %s is down: %s", self.url, why)
        else:
            log.info("agent %s is up", self.url)
        self.changed.set()
        self.changed = trio.Event()
        return True


@dataclass(frozen=True)
class RouterStatistics:
    agents: int
    agents_up: int
    warm: Mapping[str, int]
    in_flight: int
    routed_total: int
    empty_total: int  # 409s: the next candidate was tried
    queued_total: int  # runs sent without a warm sandbox anywhere
    lost_total: int  # runs whose agent failed mid-run
    retried_total: int  # of those, retried elsewhere
    down_total: int  # transitions to down
    last_down_s: float | None  # how long the last death took to notice (first miss to down)
    # The hop: a call's time here less the agent's own share, over the last 512 calls.
    hop_p50_ms: float | None = None


def parse_agents(value: str) -> list[str]:
    """``host:port, http://host:port, ...`` as base URLs."""
    urls = []
    for item in value.replace(",", " ").split():
        urls.append(item if "://" in item else f"http://{item}")
    return urls


async def resolve(name_port: str) -> list[str]:
    """The base URLs of every address ``name:port`` resolves to (Swarm ``tasks.<service>``)."""
    host, _, port = name_port.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"CINCH_AGENTS_DNS={name_port!r}: expected name:port")
    try:
        infos = await trio.socket.getaddrinfo(host, int(port), type=trio.socket.SOCK_STREAM)
    except OSError:
        return []
    urls = set()
    for family, _type, _proto, _canon, sockaddr in infos:
        address = str(sockaddr[0])
        urls.add(
            f"http://[{address}]:{port}"
            if family == trio.socket.AF_INET6
            else f"http://{address}:{port}"
        )
    return sorted(urls)


class Router:
    """Runs requests on agents; :meth:`run` has :meth:`scheduler.Scheduler.run`'s shape.

    Start with ``await nursery.start(router.serve)``; it returns once every
    static member was polled once (or after a second).
    """

    def __init__(
        self,
        token: str,
        *,
        agents: Sequence[str] = (),
        dns: str = "",
        config: RouterConfig | None = None,
        client_factory: Callable[[str, str], AgentApi] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if not agents and not dns:
            raise ValueError("no agents: set CINCH_AGENTS or CINCH_AGENTS_DNS")
        self.config = config or RouterConfig()
        self._token = token
        self._static = list(agents)
        self._dns = dns
        self._factory: Callable[[str, str], AgentApi] = client_factory or AgentClient
        self._random = rng or random.Random()
        self._views: dict[str, AgentView] = {}
        self._retired: list[AgentView] = []
        self._nursery: trio.Nursery | None = None
        self._accepting = True
        self._in_flight = 0
        self._idle = trio.Event()
        self._idle.set()
        self._counters: Counter[str] = Counter()
        self._last_down_s: float | None = None
        self._hops: deque[float] = deque(maxlen=512)

    # -- the scheduler's surface ----------------------------------------------------------

    @property
    def accepting(self) -> bool:
        return self._accepting

    def stop_accepting(self) -> None:
        self._accepting = False

    def refuses(self, language: str, tenant: str | None = None) -> float | None:
        """If every member that could take a run of ``language`` has no spare warm
        sandbox and predicts a wait over its own admission budget, the shortest of
        those waits; else None, and the agents' own admission decides.

        From the levels each member last sent (a poll every 0.25 s, and every
        answer, a refusal included): during a burst the API answers 503 before its
        database work once the first refusals have come back. A member that does
        not say its budget is never counted as refusing.
        """
        waits = []
        for v in self._views.values():
            if not v.routable or v.levels is None:
                continue
            lv = v.levels.languages.get(language)
            if lv is None:
                continue
            budget = v.levels.admit_budget_s
            if v.spare(language) > 0 or budget <= 0 or lv.predicted_wait_s <= budget:
                return None
            waits.append(lv.predicted_wait_s)
        return min(waits) if waits else None

    @property
    def admit_budget_s(self) -> float:
        """The longest admission budget the members said they have (0: none said)."""
        return max(
            (v.levels.admit_budget_s for v in self._views.values() if v.routable and v.levels),
            default=0.0,
        )

    @contextlib.contextmanager
    def admitting(self, language: str, tenant: str) -> Iterator[None]:
        """Nothing to count here: the members' levels say what they have queued."""
        yield

    async def wait_idle(self) -> None:
        await self._idle.wait()

    @property
    def agents(self) -> list[AgentView]:
        return list(self._views.values())

    def statistics(self) -> RouterStatistics:
        warm: Counter[str] = Counter()
        for v in self._views.values():
            if v.routable and v.levels is not None:
                for name, lv in v.levels.languages.items():
                    warm[name] += lv.warm
        c = self._counters
        return RouterStatistics(
            agents=len(self._views),
            agents_up=sum(v.up for v in self._views.values()),
            warm=dict(warm),
            in_flight=self._in_flight,
            routed_total=c["routed"],
            empty_total=c["empty"],
            queued_total=c["queued"],
            lost_total=c["lost"],
            retried_total=c["retried"],
            down_total=c["down"],
            last_down_s=self._last_down_s,
            hop_p50_ms=statistics.median(self._hops) if self._hops else None,
        )

    async def serve(self, *, task_status: Any = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._update_members(await self._members())
                with trio.move_on_after(1.0):
                    for view in list(self._views.values()):
                        await view.polled.wait()
                task_status.started()
                if self._dns:
                    while True:
                        await trio.sleep(self.config.dns_interval_s)
                        await self._update_members(await self._members())
                else:
                    await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(2):
                for view in [*self._views.values(), *self._retired]:
                    await view.client.aclose()

    async def run(
        self,
        request: RunRequest,
        budget: Budget | None = None,
        *,
        on_output: Callable[[str, str], None] | None = None,
        stop: trio.Event | None = None,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> RunResult:
        """Run ``request`` on an agent; see the module's docstring for the order of tries.

        Raises:
            NoCapacity: no agent could take it (no agent up, the chosen agent's
                queue is too long, or its agent failed and it cannot be retried).
            ShuttingDown: this replica is draining.
        """
        if not self._accepting:
            raise ShuttingDown("Cinch is restarting; retry in a moment")
        self._in_flight += 1
        self._idle = trio.Event() if self._idle.is_set() else self._idle
        try:
            return await self._route(request, budget, on_output, stop, task_status)
        finally:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.set()

    # -- choosing ---------------------------------------------------------------------------

    def pick_warm(self, language: str, exclude: set[str]) -> AgentView | None:
        """Power of two choices among members with spare warm sandboxes."""
        candidates = [
            v
            for v in self._views.values()
            if v.routable and v.url not in exclude and v.spare(language) > 0
        ]
        if not candidates:
            return None
        if len(candidates) == 1:
            return candidates[0]
        a, b = self._random.sample(candidates, 2)
        return max((a, b), key=lambda v: (v.spare(language), -v.in_flight))

    def pick_least_loaded(self, language: str, exclude: set[str]) -> AgentView | None:
        """The member whose queue for ``language`` is predicted to move first."""
        candidates = [
            v
            for v in self._views.values()
            if v.routable
            and v.url not in exclude
            and v.levels is not None
            and language in v.levels.languages
        ]
        if not candidates:
            return None

        def load(v: AgentView) -> tuple[float, int]:
            assert v.levels is not None
            lv = v.levels.languages[language]
            return (lv.predicted_wait_s, lv.queued + v.in_flight - lv.warm)

        best = min(load(v) for v in candidates)
        return self._random.choice([v for v in candidates if load(v) == best])

    # -- one run ----------------------------------------------------------------------------

    async def _route(
        self,
        request: RunRequest,
        budget: Budget | None,
        on_output: Callable[[str, str], None] | None,
        stop: trio.Event | None,
        task_status: trio.TaskStatus[None],
    ) -> RunResult:
        t0 = trio.current_time()
        language = request.language
        empty: set[str] = set()  # answered 409: not for warm picks, still for queueing
        failed: set[str] = set()  # unreachable or lost: not at all
        warm_tries = 0
        retried = False
        streamed = False
        started = False

        def forward(stream: str, text: str) -> None:
            nonlocal streamed
            streamed = True
            assert on_output is not None
            on_output(stream, text)

        def on_started() -> None:
            nonlocal started
            if not started:
                started = True
                task_status.started()

        last_error = "no agent is up"
        for _ in range(MAX_ATTEMPTS):
            view = None
            if warm_tries <= self.config.more_warm_tries:
                view = self.pick_warm(language, empty | failed)
            warm_only = view is not None
            if view is None:
                view = self.pick_least_loaded(language, failed)
            if view is None:
                break
            if warm_only:
                warm_tries += 1
            else:
                self._counters["queued"] += 1
            try:
                result = await self._attempt(
                    view,
                    request,
                    budget,
                    warm_only=warm_only,
                    on_output=forward if on_output is not None else None,
                    stop=stop,
                    on_started=on_started,
                )
            except AgentEmpty as exc:
                self._counters["empty"] += 1
                view.note_levels(exc.levels)
                empty.add(view.url)
                continue
            except AgentUnreachable as exc:
                self._mark_down(view, f"connect failed: {exc}")
                failed.add(view.url)
                last_error = "an agent could not be reached"
                continue
            except AgentRefused as exc:
                view.note_levels(exc.levels)
                if warm_only or exc.draining:
                    # Draining, or its queue is long: another member may still have room.
                    failed.add(view.url)
                    continue
                raise NoCapacity(
                    f"no sandbox is free on any host: {exc}", retry_after_s=exc.retry_after_s
                ) from None
            except AgentLost as exc:
                self._counters["lost"] += 1
                self._mark_down(view, f"failed mid-run: {exc}")
                failed.add(view.url)
                spent = trio.current_time() - t0
                if retried or streamed or (stop is not None and stop.is_set()):
                    raise NoCapacity(
                        "the host running this program failed; retry", retry_after_s=1.0
                    ) from None
                if spent > request.timeout_s + 1:
                    raise NoCapacity(
                        "the host running this program failed, too late to retry it elsewhere",
                        retry_after_s=1.0,
                    ) from None
                retried = True
                self._counters["retried"] += 1
                log.warning("run %s: retrying on another agent: %s", request.request_id, exc)
                continue
            self._counters["routed"] += 1
            return result
        raise NoCapacity(f"no sandbox available on any host ({last_error})", retry_after_s=2.0)

    async def _attempt(
        self,
        view: AgentView,
        request: RunRequest,
        budget: Budget | None,
        *,
        warm_only: bool,
        on_output: Callable[[str, str], None] | None,
        stop: trio.Event | None,
        on_started: Callable[[], None],
    ) -> RunResult:
        admitted = trio.Event()
        lost = False
        paid_ms = _held(budget)

        def started(levels: Levels | None) -> None:
            view.note_levels(levels)
            admitted.set()
            on_started()

        async def push_budget() -> None:
            assert budget is not None
            await admitted.wait()
            t_start = trio.current_time()
            last = paid_ms or 0
            while True:
                await trio.sleep(BUDGET_PUSH_S)
                paid = await budget.extend(round((trio.current_time() - t_start) * 1000))
                if paid > last:
                    last = paid
                    await view.client.push_budget(request.request_id, paid)

        async def forward_stop() -> None:
            assert stop is not None
            await stop.wait()
            await admitted.wait()
            await view.client.stop(request.request_id)

        async def watch_down() -> None:
            # A member that stays down (a cut link: no reset arrives) loses its runs.
            nonlocal lost
            while True:
                if view.up:
                    await view.changed.wait()
                    continue
                with trio.move_on_after(LOST_AFTER_S):
                    await view.changed.wait()
                    continue
                lost = True
                nursery.cancel_scope.cancel()
                return

        view.in_flight += 1
        if warm_only:
            view.sent[request.language] += 1
        result: RunResult | None = None
        error: AgentError | None = None
        try:
            async with trio.open_nursery() as nursery:
                if budget is not None and paid_ms is not None:
                    nursery.start_soon(push_budget)
                if stop is not None:
                    nursery.start_soon(forward_stop)
                nursery.start_soon(watch_down)
                timings: dict[str, float] = {}
                t_call = trio.current_time()
                try:
                    result = await view.client.run(
                        request,
                        paid_ms=paid_ms,
                        warm_only=warm_only,
                        read_timeout_s=request.timeout_s + self.config.queue_timeout_s + 10,
                        on_output=on_output,
                        on_started=started,
                        timings=timings,
                    )
                    if "agent_ms" in timings:
                        call_ms = (trio.current_time() - t_call) * 1000
                        self._hops.append(max(0.0, call_ms - timings["agent_ms"]))
                except AgentError as exc:
                    error = exc  # raised bare below, not wrapped in the nursery's group
                nursery.cancel_scope.cancel()
        finally:
            view.in_flight -= 1
        if error is not None:
            raise error
        if lost or result is None:
            raise AgentLost(f"{view.url} stayed down mid-run", started=admitted.is_set())
        return result

    # -- membership and freshness --------------------------------------------------------

    async def _members(self) -> list[str]:
        if self._static:
            return self._static
        return await resolve(self._dns)

    async def _update_members(self, urls: list[str]) -> None:
        assert self._nursery is not None
        if self._dns and not urls and self._views:
            # DNS said nothing (a resolver blip): keep what we know; polls still judge.
            return
        for url in urls:
            if url not in self._views:
                view = AgentView(url, self._factory(url, self._token))
                self._views[url] = view
                self._nursery.start_soon(self._poll, view)
                log.info("agent %s joined", url)
        for url in [u for u in self._views if u not in urls]:
            view = self._views.pop(url)
            view.scope.cancel()
            view.set_up(False, "left the membership")
            self._retired.append(view)
            log.info("agent %s left", url)

    def _mark_down(self, view: AgentView, why: str) -> None:
        if view.set_up(False, why):
            self._counters["down"] += 1

    async def _poll(self, view: AgentView) -> None:
        config = self.config
        first_miss: float | None = None
        with view.scope:
            while True:
                t = trio.current_time()
                try:
                    with trio.fail_after(config.poll_timeout_s):
                        levels = await view.client.pool(config.poll_timeout_s)
                except AgentUnreachable as exc:
                    if view.up:
                        self._note_down_time(first_miss or t)
                    self._mark_down(view, f"connect failed: {exc}")
                    view.misses += 1
                except (AgentLost, trio.TooSlowError) as exc:
                    view.misses += 1
                    first_miss = first_miss or t
                    if view.misses >= config.misses_down and view.up:
                        self._note_down_time(first_miss)
                        self._mark_down(view, f"{view.misses} polls missed ({exc!r})")
                else:
                    view.misses = 0
                    first_miss = None
                    view.note_levels(levels)
                    view.set_up(True)
                view.polled.set()
                await trio.sleep_until(t + config.poll_interval_s)

    def _note_down_time(self, since: float) -> None:
        self._last_down_s = trio.current_time() - since


def _held(budget: Budget | None) -> int | None:
    """How long the run is paid for already (the API's HoldBudget knows it)."""
    if budget is None:
        return None
    held = getattr(budget, "held", None)
    return int(held) if isinstance(held, int) else None
