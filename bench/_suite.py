"""What one ``python -m bench`` invocation measures, in order, with every loop bounded."""

from __future__ import annotations

import functools
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import trio

from api import Config
from api._pools import sandbox_cgroup_parent
from pool import DockerClient, socket_path_from_env
from pool._images import current_tags
from scheduler import SchedulerConfig

from ._docker_run import DockerRun
from ._engine import TimedClient, open_scheduler, remove_owned
from ._engine import wait_pools_full as _wait_pools_full
from ._http import HttpTarget
from ._load import FLOOD_KEYS, LoadTarget, flood, mixed_bursts, poisson_levels
from ._model import Sample, Series
from ._sched import SchedulerTarget, idle_cost, lifecycle_probe
from ._servers import OwnServer, start_server, stop_server
from ._shapes import burst, closed_loop, sequential
from ._stats import summarize
from ._workloads import PRINT, WORKLOADS, Workload

HTTP_WARM = "HTTP, warm pool"
HTTP_COLD = "HTTP, cold path (pool 0)"
DOCKER = "docker run"
SCHED_WARM = "scheduler, warm pool (no HTTP)"
LANGUAGES = ("python", "javascript")
SHAPES = ("closed", "poisson", "bursts", "flood")


@dataclass
class Options:
    modes: tuple[str, ...] = ("http", "scheduler", "idle")
    languages: tuple[str, ...] = LANGUAGES
    samples: int = 200
    cold_samples: int = 50
    workload_samples: int = 20
    workloads: tuple[str, ...] = ("cpu200", "out500k_once", "out500k_lines")
    bursts: int = 3
    burst_size: int = 16
    callers: int = 8
    closed_loop_s: float = 60.0
    closed_loop_languages: tuple[str, ...] = ("python",)
    pause_s: float = 0.4
    probe_lives: int = 10
    idle_settle_s: float = 3.0
    idle_window_s: float = 10.0
    url: str = ""
    key: str = ""
    cold: bool = True
    docker: bool = True
    database_url: str = ""
    series_max_s: float = 900.0
    workdir: Path | None = None
    progress: Callable[[str], None] = print
    # The load shapes of issue 15 (bench/_load.py); "closed" is the closed loop above.
    shapes: tuple[str, ...] = SHAPES
    poisson_duration_s: float = 60.0
    poisson_levels: tuple[float, ...] = (0.25, 0.5, 0.8)
    # Runs/s the Poisson levels are fractions of; 0: measure it with a closed loop.
    capacity_rps: float = 0.0
    burst_sizes: tuple[int, ...] = (16, 64)
    flood_size: int = 200
    flood_idle_samples: int = 10
    flood_recovery_max_s: float = 60.0
    flood_keys: tuple[str, ...] = ()  # with --url: keys of other accounts for the flood
    owner: str = ""  # with --url: the server's cinch.owner label, for the CPU split


@dataclass
class Results:
    series: list[Series] = field(default_factory=list)
    lifecycle: list[dict[str, Any]] = field(default_factory=list)
    engine_calls: dict[str, Any] = field(default_factory=dict)
    idle: list[dict[str, Any]] = field(default_factory=list)
    setup: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    load: list[dict[str, Any]] = field(default_factory=list)  # one row per load-shape window

    def find(self, variant: str, language: str, workload: str, kind: str) -> Series | None:
        for s in self.series:
            if (s.variant, s.language, s.workload, s.kind) == (variant, language, workload, kind):
                return s
        return None


def _seq_shape(opts: Options, n: int, settle: bool) -> str:
    wait = " and until the pool is full again" if settle else ""
    return (
        f"sequential: one request at a time, a pause of {opts.pause_s:g} s{wait} after each "
        f"answer (offered load below the refill rate: runs/s shows it), one language at a "
        f"time; {n} samples"
    )


def _closed_shape(opts: Options) -> str:
    return f"closed loop: {opts.callers} callers, {opts.closed_loop_s:g} s, print(2+2)"


WarmCounters = Callable[[], Awaitable[tuple[int, int] | None]]
RunFn = Callable[[str, Workload], Awaitable[Sample]]


async def _measure(
    results: Results,
    series: Series,
    body: Callable[[], Awaitable[tuple[list[Sample], float | None]]],
    counters: WarmCounters | None,
    source: str,
    progress: Callable[[str], None],
) -> Series:
    before = await counters() if counters else None
    samples, elapsed = await body()
    after = await counters() if counters else None
    series.samples = samples
    series.elapsed_s = elapsed
    if before is not None and after is not None:
        hits = after[0] - before[0]
        series.warm_hits = hits
        series.warm_total = hits + after[1] - before[1]
        series.warm_source = source
    results.series.append(series)
    s = series.summary()
    c = s["client_ms"]
    progress(
        f"  {series.variant:32} {series.language:10} {series.workload:28} {series.kind:11} "
        f"n={s['ok']}/{s['requests']} p50={c['p50']} p99={c['p99']} ms"
        + (f" {s['throughput_rps']}/s" if s["throughput_rps"] else "")
        + (f" warm-hit={s['warm_hit_ratio']}" if s["warm_hit_ratio"] is not None else "")
        + (f" errors={s['errors']}" if s["errors"] else "")
    )
    return series


async def _standard_series(
    results: Results,
    opts: Options,
    variant: str,
    run: RunFn,
    *,
    n_seq: int,
    counters: WarmCounters | None,
    source: str,
    wait_idle: Callable[[], Awaitable[Any]] | None,
    workloads: bool,
    bursts: bool,
) -> None:
    """print(2+2) sequential, then (optionally) the other workloads, bursts and the closed loop."""

    def calls(workload: Workload) -> dict[str, Callable[[str], Awaitable[Sample]]]:
        return {lang: functools.partial(run, workload=workload) for lang in opts.languages}

    async def settle() -> None:
        if wait_idle is not None:
            await wait_idle()

    for lang in opts.languages:
        await settle()

        async def seq(lang: str = lang) -> tuple[list[Sample], float | None]:
            got, elapsed = await sequential(
                calls(PRINT), [lang], n_seq, opts.pause_s, opts.series_max_s, wait_idle
            )
            return got[lang], elapsed

        await _measure(
            results,
            Series(
                variant,
                lang,
                PRINT.title,
                _seq_shape(opts, n_seq, wait_idle is not None),
                "sequential",
            ),
            seq,
            counters,
            source,
            opts.progress,
        )
    if workloads:
        for lang in opts.languages:
            for workload in (WORKLOADS[name] for name in opts.workloads):
                await settle()

                async def wl(
                    lang: str = lang, w: Workload = workload
                ) -> tuple[list[Sample], float | None]:
                    got, elapsed = await sequential(
                        calls(w),
                        [lang],
                        opts.workload_samples,
                        opts.pause_s,
                        opts.series_max_s,
                        wait_idle,
                    )
                    return got[lang], elapsed

                await _measure(
                    results,
                    Series(
                        variant,
                        lang,
                        workload.title,
                        _seq_shape(opts, opts.workload_samples, wait_idle is not None),
                        "sequential",
                    ),
                    wl,
                    counters,
                    source,
                    opts.progress,
                )
    if bursts and opts.bursts > 0:
        for lang in opts.languages:
            makespans: list[float] = []

            async def bursts_body(
                lang: str = lang, makespans: list[float] = makespans
            ) -> tuple[list[Sample], float]:
                samples: list[Sample] = []
                for _ in range(opts.bursts):
                    await settle()
                    got, makespan = await burst(
                        functools.partial(run, workload=PRINT), lang, opts.burst_size
                    )
                    samples += got
                    makespans.append(makespan)
                return samples, sum(makespans)

            series = Series(
                variant,
                lang,
                PRINT.title,
                f"burst: {opts.burst_size} requests released at once, full pool before each; "
                f"{opts.bursts} bursts",
                "burst",
            )
            await _measure(results, series, bursts_body, counters, source, opts.progress)
            series.extra["burst_wall_ms"] = [round(m * 1000, 1) for m in makespans]
    for lang in opts.closed_loop_languages if "closed" in opts.shapes else ():
        if lang not in opts.languages:
            continue
        await settle()

        async def loop(lang: str = lang) -> tuple[list[Sample], float]:
            return await closed_loop(
                functools.partial(run, workload=PRINT), lang, opts.callers, opts.closed_loop_s
            )

        await _measure(
            results,
            Series(
                variant,
                lang,
                PRINT.title,
                _closed_shape(opts),
                "closed-loop",
                extra={"callers": opts.callers},
            ),
            loop,
            counters,
            source,
            opts.progress,
        )


CALIBRATION_S = 10.0


async def load_shapes(results: Results, opts: Options, target: LoadTarget) -> None:
    """The shapes of issue 15 that ``opts.shapes`` asks for, on ``target``, in order."""
    if "poisson" in opts.shapes:
        loop = results.find(target.variant, "python", PRINT.title, "closed-loop")
        source = f"closed loop of {opts.callers}, python, earlier in this run"
        if opts.capacity_rps > 0:
            loop = None
            source = "given with --capacity"
        elif loop is None and "python" in opts.languages:
            # No closed loop asked for: a short one, only to set the Poisson rates.
            await target.settle()
            seconds = min(opts.closed_loop_s, CALIBRATION_S)
            samples, elapsed = await closed_loop(
                functools.partial(target.run, workload=PRINT), "python", opts.callers, seconds
            )
            loop = Series(
                target.variant,
                "python",
                PRINT.title,
                f"closed loop: {opts.callers} callers, {seconds:g} s, print(2+2) "
                "(calibration of the Poisson rates)",
                "closed-loop",
                samples=samples,
                elapsed_s=elapsed,
            )
            results.series.append(loop)
            source = f"calibration closed loop of {opts.callers}, python, {seconds:g} s"
        capacity = opts.capacity_rps or (loop.throughput_rps() if loop is not None else None)
        if capacity:
            opts.progress(f"{target.variant}: open-loop Poisson ({capacity:.2f} runs/s capacity):")
            await poisson_levels(results, opts, target, capacity, source)
        else:
            results.notes.append(f"{target.variant}: no closed-loop capacity, so no Poisson rows")
    if "bursts" in opts.shapes and opts.burst_sizes:
        opts.progress(f"{target.variant}: mixed bursts {list(opts.burst_sizes)}:")
        await mixed_bursts(results, opts, target)
    if "flood" in opts.shapes and target.http is not None and opts.flood_size > 0:
        opts.progress(f"{target.variant}: {opts.flood_size} at once from {len(target.keys)} keys:")
        await flood(results, opts, target)


async def docker_series(results: Results, opts: Options, runner: DockerRun) -> None:
    async def run(language: str, workload: Workload) -> Sample:
        assert workload is PRINT
        return await runner.run_once(language)

    await _standard_series(
        results,
        opts,
        DOCKER,
        run,
        n_seq=opts.cold_samples,
        counters=None,
        source="",
        wait_idle=None,
        workloads=False,
        bursts=False,
    )


async def http_suite(results: Results, opts: Options, workdir: Path, config: Config) -> None:
    servers: list[OwnServer] = []
    try:
        async with httpx.AsyncClient(
            # Enough connections that the flood and the open loop are not queued in the client.
            limits=httpx.Limits(
                max_connections=max(256, opts.flood_size + 8),
                max_keepalive_connections=max(256, opts.flood_size + 8),
            )
        ) as client:
            targets: list[tuple[str, HttpTarget]] = []
            if opts.url:
                targets.append((HTTP_WARM, HttpTarget(HTTP_WARM, opts.url, opts.key, client)))
                results.notes.append(f"HTTP warm pool: the given server {opts.url}")
            else:
                opts.progress("starting a Cinch server with warm pools ...")
                warm = await trio.to_thread.run_sync(
                    lambda: start_server(
                        "warm",
                        workdir,
                        pool_python=config.pool_python,
                        pool_javascript=config.pool_javascript,
                        database_url=opts.database_url,
                        extra_accounts=FLOOD_KEYS - 1 if "flood" in opts.shapes else 0,
                    )
                )
                servers.append(warm)
                targets.append((HTTP_WARM, HttpTarget(HTTP_WARM, warm.base_url, warm.key, client)))
                if opts.cold:
                    opts.progress("starting a Cinch server with pool size 0 ...")
                    cold = await trio.to_thread.run_sync(
                        lambda: start_server(
                            "cold",
                            workdir,
                            pool_python=0,
                            pool_javascript=0,
                            database_url=opts.database_url,
                        )
                    )
                    servers.append(cold)
                    targets.append(
                        (HTTP_COLD, HttpTarget(HTTP_COLD, cold.base_url, cold.key, client))
                    )
            for variant, target in targets:
                info = await target.languages_info()
                results.setup.setdefault("http_servers", {})[variant] = {
                    "base_url": target.base_url,
                    "runtimes": info,
                }
                metrics_ok = await target.warm_counters() is not None
                if not metrics_ok:
                    results.notes.append(
                        f"{variant}: the server exports no cinch_runs_warm_hits_total; "
                        "warm-hit ratios there come from queueMs"
                    )
                is_warm = variant == HTTP_WARM
                opts.progress(f"{variant} ({target.base_url}):")
                await _standard_series(
                    results,
                    opts,
                    variant,
                    target.run,
                    n_seq=opts.samples if is_warm else opts.cold_samples,
                    counters=target.warm_counters if metrics_ok else None,
                    source="server counter cinch_runs_warm_hits_total (delta over the series)",
                    wait_idle=functools.partial(target.wait_idle, list(opts.languages)),
                    workloads=is_warm,
                    bursts=is_warm,
                )
                if is_warm:
                    if opts.url:
                        keys, owner = [opts.key, *opts.flood_keys], opts.owner
                    else:
                        keys, owner = [servers[0].key, *servers[0].extra_keys], servers[0].owner
                    if "flood" in opts.shapes and len(set(keys)) < FLOOD_KEYS:
                        results.notes.append(
                            f"flood: {len(set(keys))} API keys, not {FLOOD_KEYS} (--flood-keys)"
                        )
                    if not owner:
                        results.notes.append(
                            f"{variant}: sandboxes' owner label unknown (--owner): no CPU split"
                        )
                    async with DockerClient(socket_path_from_env()) as engine:
                        await load_shapes(
                            results,
                            opts,
                            LoadTarget(
                                variant,
                                target.run,
                                functools.partial(target.wait_idle, list(opts.languages)),
                                engine,
                                [owner] if owner else [],
                                counters=target.warm_counters if metrics_ok else None,
                                http=target,
                                keys=keys,
                            ),
                        )
    finally:
        for server in servers:
            await trio.to_thread.run_sync(stop_server, server)
            # A server that had to be killed leaves its sandboxes: remove exactly those.
            id_file = server.data_dir / "instance-id"
            if id_file.exists():
                async with DockerClient(socket_path_from_env()) as engine:
                    left = await remove_owned(engine, id_file.read_text().strip())
                if left:
                    results.notes.append(f"{server.name} server left {left} sandboxes: removed")


async def scheduler_suite(
    results: Results,
    opts: Options,
    *,
    socket_path: str,
    owner: str,
    images: dict[str, str],
    runtimes: dict[str, str],
    config: Config,
    cgroup_parent: str | None,
) -> None:
    for lang in opts.languages:
        opts.progress(f"sandbox life, phase by phase: {lang} ({opts.probe_lives} lives) ...")
        probe = await lifecycle_probe(
            socket_path,
            owner=f"{owner}-probe",
            language=lang,
            image=images[lang],
            runtime=runtimes[lang],
            cgroup_parent=cgroup_parent,
            lives=opts.probe_lives,
        )
        results.lifecycle.append(probe)
        opts.progress(
            f"  {lang}: tracked CPU per life {probe['life_cpu_ms_mean_tracked']} ms "
            f"(machine {probe['life_cpu_ms_mean']['machine']} ms)"
        )
    client = TimedClient(socket_path)
    try:
        async with open_scheduler(
            client,
            owner=f"{owner}-sched",
            images=images,
            runtimes=runtimes,
            pool_sizes={lang: config.pool_sizes()[lang] for lang in opts.languages},
            start_concurrency=config.start_concurrency,
            max_sandboxes=config.max_sandboxes,
            cgroup_parent=cgroup_parent,
            pause_idle=config.pause_idle,
            scheduler_config=SchedulerConfig(
                queue_timeout_s=config.queue_timeout_s,
                queue_max=config.queue_max,
                max_run_timeout_s=config.run_timeout_s,
            ),
        ) as wired:
            target = SchedulerTarget(wired.scheduler)

            async def counters() -> tuple[int, int]:
                return target.warm_counters()

            async def wait_full() -> None:
                await _wait_pools_full(wired.pools)
                with trio.move_on_after(30):
                    while wired.scheduler.statistics().destroying:  # noqa: ASYNC110
                        await trio.sleep(0.02)

            opts.progress(f"{SCHED_WARM}:")
            calls_before = {k: len(v) for k, v in client.calls.items()}
            await _standard_series(
                results,
                opts,
                SCHED_WARM,
                target.run,
                n_seq=opts.samples,
                counters=counters,
                source="Scheduler.statistics().warm_hits_total (delta over the series)",
                wait_idle=wait_full,
                workloads=False,
                bursts=False,
            )
            results.engine_calls = {
                name: summarize(times[calls_before.get(name, 0) :])
                for name, times in sorted(client.calls.items())
            }
            await load_shapes(
                results,
                opts,
                LoadTarget(
                    SCHED_WARM,
                    target.run,
                    wait_full,
                    client,
                    [f"{owner}-sched"],
                    counters=counters,
                ),
            )
    finally:
        await client.aclose()


def idle_configurations(
    configured: dict[str, str], platforms: dict[str, str], languages: tuple[str, ...]
) -> list[dict[str, str]]:
    """The configured runtime of each language, then every platform for all languages."""
    configs = [{lang: configured[lang] for lang in languages}]
    for runtime in sorted(platforms.values()):
        candidate = dict.fromkeys(languages, runtime)
        if candidate not in configs:
            configs.append(candidate)
    return configs


async def idle_suite(
    results: Results,
    opts: Options,
    *,
    socket_path: str,
    owner: str,
    images: dict[str, str],
    config: Config,
    cgroup_parent: str | None,
    platforms: dict[str, str],
) -> None:
    configured = config.runtimes()
    sizes = {lang: max(2, config.pool_sizes()[lang]) for lang in opts.languages}
    for i, runtimes in enumerate(idle_configurations(configured, platforms, opts.languages)):
        what = ", ".join(f"{sizes[lang]} {lang} on {rt}" for lang, rt in runtimes.items())
        opts.progress(f"idle cost: {what} ...")
        rows = await idle_cost(
            socket_path,
            owner=f"{owner}-idle-{i}",
            images=images,
            runtimes=runtimes,
            sizes=sizes,
            cgroup_parent=cgroup_parent,
            settle_s=opts.idle_settle_s,
            window_s=opts.idle_window_s,
            start_concurrency=config.start_concurrency,
        )
        for row in rows:
            row["platform"] = row["runtime"].removeprefix("runsc-")
            row["configured"] = i == 0
            results.idle.append(row)
            opts.progress(
                f"  {row['language']}/{row['platform']}: {row.get('pss_mb_per_sandbox')} MB PSS "
                f"per sandbox, pool {row.get('pool_cpu_pct_of_core')} % of a core"
            )


async def run_all(opts: Options) -> Results:
    """Everything ``opts.modes`` asks for; returns the raw results (see :mod:`bench._report`)."""
    results = Results()
    config = Config.from_env()
    bench_id = f"bench-{os.getpid()}-{secrets.token_hex(3)}"
    workdir = opts.workdir or Path(tempfile.mkdtemp(prefix="cinch-bench-"))
    images = current_tags()
    runtimes = config.runtimes()
    results.setup.update(
        {
            "bench_id": bench_id,
            "owner_label": f"cinch.owner={bench_id}*",
            "images": images,
            "runtimes": runtimes,
            "pool_sizes": config.pool_sizes(),
            "start_concurrency": config.start_concurrency,
            "max_sandboxes": config.max_sandboxes,
            "pause_idle": config.pause_idle,
            "queue_timeout_s": config.queue_timeout_s,
            "workdir": str(workdir),
            "loadavg_at_start": [round(x, 2) for x in os.getloadavg()],
        }
    )
    t0 = time.monotonic()
    try:
        await _run_parts(results, opts, bench_id, workdir, config, images, runtimes)
    finally:
        results.setup["wall_s"] = round(time.monotonic() - t0, 1)
        results.setup["loadavg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    if opts.workdir is None:
        # Servers' data (embedded databases, logs) is only kept when something failed.
        shutil.rmtree(workdir, ignore_errors=True)
    return results


async def _run_parts(
    results: Results,
    opts: Options,
    bench_id: str,
    workdir: Path,
    config: Config,
    images: dict[str, str],
    runtimes: dict[str, str],
) -> None:
    socket_path = socket_path_from_env()
    async with DockerClient(socket_path) as client:
        info = await client.info()
        for lang in opts.languages:
            if not await client.image_exists(images[lang]):
                raise SystemExit(f"image {images[lang]} is missing: run `cinch setup` first")
        cgroup_parent = await sandbox_cgroup_parent(client)
        platforms = {
            name.removeprefix("runsc-"): name
            for name in info.get("Runtimes", {})
            if name.startswith("runsc-")
        }
        results.setup.update(
            {
                "engine": f"dockerd {info.get('ServerVersion', '?')}",
                "cgroup_parent": cgroup_parent,
                "cgroup_driver": info.get("CgroupDriver"),
                "runsc_runtimes": platforms,
            }
        )
        runner = DockerRun(bench_id, images, runtimes, cgroup_parent)
        try:
            if "http" in opts.modes or "scheduler" in opts.modes:
                if opts.docker:
                    results.setup["docker_client"] = runner.client_name
                    opts.progress(f"{DOCKER} ({runner.client_name}):")
                    await docker_series(results, opts, runner)
            if "http" in opts.modes:
                await http_suite(results, opts, workdir, config)
            if "scheduler" in opts.modes:
                await scheduler_suite(
                    results,
                    opts,
                    socket_path=socket_path,
                    owner=bench_id,
                    images=images,
                    runtimes=runtimes,
                    config=config,
                    cgroup_parent=cgroup_parent,
                )
            if "idle" in opts.modes:
                await idle_suite(
                    results,
                    opts,
                    socket_path=socket_path,
                    owner=bench_id,
                    images=images,
                    config=config,
                    cgroup_parent=cgroup_parent,
                    platforms=platforms,
                )
        finally:
            with trio.CancelScope(shield=True), trio.move_on_after(120):
                left = await runner.cleanup()
                for suffix in (
                    "-probe",
                    "-sched",
                    *(f"-idle-{i}" for i in range(len(platforms) + 1)),
                ):
                    left += await remove_owned(client, bench_id + suffix)
                if left:
                    results.notes.append(f"removed {left} leftover bench containers")
