"""Results as JSON, a Markdown table for README, and a PNG of latency CDFs."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ._load import burst_kind, poisson_kind
from ._model import HIT_QUEUE_MS, Series
from ._procs import COMPONENTS
from ._sched import PHASES
from ._stats import fmt_ms
from ._suite import DOCKER, HTTP_WARM, SCHED_WARM, Options, Results

SCHEMA = "cinch-bench/1"


def _git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
            cwd=Path(__file__).resolve().parent,
        )
        return out.stdout.strip()
    except OSError:
        return ""


def _runsc_version() -> str:
    try:
        out = subprocess.run(
            ["runsc", "--version"], capture_output=True, text=True, timeout=10, check=False
        )
        return out.stdout.splitlines()[0] if out.stdout else ""
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "runsc": _runsc_version(),
        "commit": _git_commit(),
    }


# -- targets -------------------------------------------------------------------------------


def _p(series: Series | None, key: str) -> float | None:
    if series is None:
        return None
    value = series.summary()["client_ms"][key]
    return None if value is None else float(value)


def _check(
    name: str, issue: int, measured: float | None, limit: float, *, at_least: bool = False
) -> dict[str, Any]:
    met = None if measured is None else (measured >= limit if at_least else measured <= limit)
    return {
        "issue": issue,
        "target": name,
        "limit": limit,
        "measured": None if measured is None else round(measured, 3),
        "met": met,
    }


def targets(r: Results) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seq = "sequential"
    print_ = "print(2+2)"
    for variant, issue, limits in (
        (HTTP_WARM, 7, {"python": 10.0, "javascript": 15.0, "p99": 50.0}),
        (SCHED_WARM, 3, {"python": 5.0, "javascript": 10.0, "p99": 40.0}),
    ):
        for lang in ("python", "javascript"):
            s = r.find(variant, lang, print_, seq)
            if s is None:
                continue
            out.append(
                _check(f"{variant}: warm hit p50, {lang} (ms)", issue, _p(s, "p50"), limits[lang])
            )
            out.append(
                _check(f"{variant}: warm hit p99, {lang} (ms)", issue, _p(s, "p99"), limits["p99"])
            )
    docker_py = r.find(DOCKER, "python", print_, seq)
    warm_py = r.find(HTTP_WARM, "python", print_, seq)
    if docker_py and warm_py and _p(warm_py, "p50"):
        ratio = (_p(docker_py, "p50") or 0) / (_p(warm_py, "p50") or 1)
        out.append(
            _check(
                "HTTP warm hit vs docker run, p50 speed-up, python (x)", 7, ratio, 30, at_least=True
            )
        )
    for lang in ("python", "javascript"):
        docker_loop = r.find(DOCKER, lang, print_, "closed-loop")
        for variant, issue in ((HTTP_WARM, 7), (SCHED_WARM, 3)):
            loop = r.find(variant, lang, print_, "closed-loop")
            if docker_loop is None or loop is None:
                continue
            d = docker_loop.throughput_rps() or 0
            ratio = (loop.throughput_rps() or 0) / d if d else None
            out.append(
                _check(
                    f"{variant}: closed-loop throughput vs docker run, {lang} (x; 2x stretch)",
                    issue,
                    ratio,
                    1.5,
                    at_least=True,
                )
            )
    out += targets_issue15(r)
    for row in r.idle:
        if not row.get("configured"):
            continue
        limit = 25.0 if row["language"] == "python" else 40.0
        out.append(
            _check(
                f"idle sandbox PSS, {row['language']} on {row['runtime']} (MB)",
                7,
                row.get("pss_mb_per_sandbox"),
                limit,
            )
        )
    return out


def _load_row(r: Results, variant: str, kind: str) -> dict[str, Any] | None:
    return next((x for x in r.load if x["variant"] == variant and x["kind"] == kind), None)


def targets_issue15(r: Results) -> list[dict[str, Any]]:
    """Issue 15's targets, each from this run's rows; a shape not run gives no row."""
    out: list[dict[str, Any]] = []
    print_ = "print(2+2)"
    for lang, limit in (("python", 40.0), ("javascript", 60.0)):
        s = r.find(HTTP_WARM, lang, print_, poisson_kind(0.5))
        if s is not None:
            out.append(
                _check(
                    f"HTTP, Poisson at 50% of capacity: p99, {lang} (ms)", 15, _p(s, "p99"), limit
                )
            )
    b16 = _load_row(r, HTTP_WARM, burst_kind(16))
    if b16 is not None:
        out.append(
            _check(
                "HTTP, burst of 16 on defaults: answered 200 (of 16)",
                15,
                b16["answered_ok"],
                16,
                at_least=True,
            )
        )
    loop = r.find(HTTP_WARM, "python", print_, "closed-loop")
    if loop is not None:
        callers = loop.extra.get("callers", 8)
        out.append(
            _check(
                f"HTTP, closed loop of {callers}: 503 answers",
                15,
                float(loop.errors().get("503", 0)),
                0,
            )
        )
        docker_loop = r.find(DOCKER, "python", print_, "closed-loop")
        d = docker_loop.throughput_rps() if docker_loop is not None else None
        if d:
            out.append(
                _check(
                    f"HTTP, closed loop of {callers}: throughput vs parallel docker run (x)",
                    15,
                    (loop.throughput_rps() or 0) / d,
                    1.0,
                    at_least=True,
                )
            )
    fl = _load_row(r, HTTP_WARM, "flood")
    if fl is not None:
        n = fl["size"]
        bad = fl["503_without_retry_after"] + fl["other_5xx"] + fl["other"]
        out.append(
            _check(f"{n} at once: answers other than 200 or 503 with Retry-After", 15, bad, 0)
        )
        l503 = fl["latency_503_ms"]["max"]
        if fl["503_with_retry_after"] + fl["503_without_retry_after"]:
            out.append(_check(f"{n} at once: slowest 503 (ms)", 15, l503, 100.0))
        for lang, row in fl["by_language"].items():
            out.append(
                _check(
                    f"{n} at once: charge p99 / idle charge p50, {lang} (x)",
                    15,
                    row["charge_p99_over_idle_p50"],
                    3.0,
                )
            )
        back = fl["back_at_target_s"]
        out.append(
            _check(
                f"{n} at once: pools back at target after the last answer (s; "
                f"{fl['timeout_s']:g} = never within the wait)",
                15,
                fl["timeout_s"] if back is None else back,
                10.0,
            )
        )
    sched_js = r.find(SCHED_WARM, "javascript", print_, "sequential")
    if sched_js is not None:
        out.append(_check("scheduler, warm Node p99 (ms)", 15, _p(sched_js, "p99"), 25.0))
    return out


# -- JSON ---------------------------------------------------------------------------------------


def to_json(r: Results, opts: Options, argv: list[str], started: datetime) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": argv,
        "machine": machine(),
        "setup": r.setup,
        "options": {
            k: (list(v) if isinstance(v, tuple) else v)
            for k, v in vars(opts).items()
            if k not in ("progress", "key", "workdir")
        },
        "definitions": {
            "client_ms": "wall time of one request as the client saw it (HTTP: POST sent -> body "
            "read, keep-alive connection; docker run: process start -> exit; scheduler: "
            "Scheduler.run call -> return)",
            "duration_ms": "server-reported durationMs: code handed to the runner -> program ended",
            "queue_ms": "server-reported queueMs: time waiting for a sandbox",
            "warm_hit_ratio": "runs that found a ready sandbox / runs, from the server's (or "
            "scheduler's) own counter over the series; without it, share of runs with queueMs "
            f"<= {HIT_QUEUE_MS:g}",
            "hit_client_ms/miss_client_ms": f"latency of runs with queueMs <= {HIT_QUEUE_MS:g} "
            "(no wait for a start or an unpause) and of the others",
            "throughput_rps": "successful runs / wall time of the series (closed loops, bursts)",
            "latencies": "percentiles over successful requests only; errors are counted by status",
        },
        "targets": targets(r),
        "series": [s.to_json() for s in r.series],
        "load": r.load,
        "lifecycle": r.lifecycle,
        "engine_calls_during_scheduler_series": r.engine_calls,
        "idle": r.idle,
        "notes": r.notes,
    }


# -- Markdown -------------------------------------------------------------------------------------


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _table(header: list[str], rows: list[list[str]], right_from: int = 1) -> list[str]:
    align = [":--" if i < right_from else "--:" for i in range(len(header))]
    return [_row(header), _row(align), *(_row(r) for r in rows)]


def markdown(report: dict[str, Any]) -> str:
    setup = report["setup"]
    m = report["machine"]
    lines = [
        f"## Cinch benchmark ({report['started'][:10]})",
        "",
        f"{m['cpus']} cores, Linux {m['kernel']}, {setup.get('engine', '?')}, {m['runsc']}, "
        f"commit {m['commit'] or '?'}. Runtimes: "
        + ", ".join(f"{k} on `{v}`" for k, v in setup.get("runtimes", {}).items())
        + f". Pools: {setup.get('pool_sizes')}, start concurrency "
        f"{setup.get('start_concurrency')}. Load average at start / end: "
        f"{setup.get('loadavg_at_start')} / {setup.get('loadavg_at_end')}; took "
        f"{setup.get('wall_s')} s. Baseline client: {setup.get('docker_client', 'not run')}"
        f" (`docker run --rm` with the sandbox's hardening flags). Command: "
        f"`{' '.join(report['command'])}`.",
        "",
    ]
    if report["targets"]:
        lines += ["### Targets", ""]
        rows = []
        for t in report["targets"]:
            verdict = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
            measured = "-" if t["measured"] is None else f"{t['measured']:g}"
            rows.append([t["target"], f"{t['limit']:g}", measured, verdict])
        lines += _table(["target", "limit", "measured", ""], rows, right_from=1)
        lines.append("")
    series = report["series"]
    if series:
        lines += [
            "### Latency and throughput",
            "",
            "Client-side latency in ms over successful requests; `dur`/`queue` are the server's "
            "durationMs/queueMs p50; warm-hit is the server's own counter over the series.",
            "",
        ]
        rows = []
        for s in series:
            c = s["client_ms"]
            errors = ", ".join(f"{k}: {v}" for k, v in sorted(s["errors"].items())) or "0"
            hit = "-" if s["warm_hit_ratio"] is None else f"{s['warm_hit_ratio'] * 100:.0f}%"
            split = ""
            if s.get("hit_client_ms") and s.get("miss_client_ms"):
                h, mi = s["hit_client_ms"], s["miss_client_ms"]
                split = (
                    f"hit {fmt_ms(h['p50'])} (n={h['n']}) / miss {fmt_ms(mi['p50'])} (n={mi['n']})"
                )
            rows.append(
                [
                    s["variant"],
                    s["language"],
                    s["workload"],
                    s["kind"],
                    str(s["ok"]),
                    fmt_ms(c["p50"]),
                    fmt_ms(c["p90"]),
                    fmt_ms(c["p99"]),
                    fmt_ms(c["max"]),
                    fmt_ms(s["duration_ms"]["p50"]),
                    fmt_ms(s["queue_ms"]["p50"]),
                    "-" if s["throughput_rps"] is None else f"{s['throughput_rps']:.2f}",
                    hit,
                    split or "-",
                    errors,
                ]
            )
        lines += _table(
            [
                "variant",
                "lang",
                "workload",
                "shape",
                "n",
                "p50",
                "p90",
                "p99",
                "max",
                "dur",
                "queue",
                "runs/s",
                "warm-hit",
                "p50 hit / miss",
                "errors",
            ],
            rows,
            right_from=4,
        )
        examples = sorted(
            {
                (s["variant"], status, text)
                for s in series
                for status, text in s.get("error_examples", {}).items()
            }
        )
        if examples:
            lines += ["", "Errors seen (one message per status):", ""]
            lines += [f"- {v}, {st}: {text}" for v, st, text in examples[:12]]
        shapes = sorted({(s["kind"], s["shape"]) for s in series})
        lines += ["", "Load shapes:", ""] + [f"- {kind}: {shape}" for kind, shape in shapes]
        lines.append("")
    if report.get("load"):
        lines += _load_markdown(report["load"])
    if report["lifecycle"]:
        lines += [
            "### A sandbox's life, phase by phase (scheduler level)",
            "",
            "One sandbox at a time, nothing else of ours running. Wall ms p50 of the step; CPU ms "
            "per life (mean) of dockerd, containerd, the shim and the runsc processes from "
            "/proc/<pid>/stat (10 ms ticks, sampled every 10 ms), and of the whole machine.",
            "",
        ]
        for probe in report["lifecycle"]:
            lines += [f"{probe['language']} on `{probe['runtime']}`, {probe['lives']} lives:", ""]
            rows = []
            for phase in PHASES:
                p = probe["phases"].get(phase)
                if p is None:
                    continue
                cpu = p["cpu_ms_mean"]
                tracked = sum(cpu[k] for k in COMPONENTS)
                rows.append(
                    [
                        phase if phase != "gap" else f"(next {probe['gap_s']:g} s, not in total)",
                        fmt_ms(p["wall_ms"]["p50"]),
                        *(f"{cpu[k]:.1f}" for k in COMPONENTS),
                        f"{tracked:.1f}",
                        f"{cpu['machine']:.1f}",
                    ]
                )
            t = probe["life_cpu_ms_mean"]
            rows.append(
                [
                    "**life total**",
                    "",
                    *(f"{t[k]:.1f}" for k in COMPONENTS),
                    f"**{probe['life_cpu_ms_mean_tracked']:.1f}**",
                    f"{t['machine']:.1f}",
                ]
            )
            lines += _table(["phase", "wall p50", *COMPONENTS, "tracked CPU", "machine CPU"], rows)
            if probe.get("failures"):
                lines.append(f"\nfailures: {probe['failures'][:3]}")
            lines.append("")
    calls = report["engine_calls_during_scheduler_series"]
    if calls:
        lines += ["Engine API calls during the scheduler series (wall ms):", ""]
        rows = [
            [name, str(s["n"]), fmt_ms(s["p50"]), fmt_ms(s["p90"]), fmt_ms(s["p99"])]
            for name, s in calls.items()
            if s["n"]
        ]
        lines += _table(["call", "n", "p50", "p90", "p99"], rows)
        lines.append("")
    if report["idle"]:
        lines += [
            "### Idle cost",
            "",
            "Full, idle pools, all languages' pools up at once (each head ready, the rest "
            "paused). PSS: sum over every process of a language's sandboxes (runsc sandbox and "
            "gofer, stubs, containerd shim) / their number; pages shared by all sandboxes are "
            "split over every pool that is up. CPU: utime+stime of the same processes over the "
            "window, in % of one core. USS: the sandboxes' private pages only (what one more "
            "sandbox adds, whatever else runs). The first rows are the configured runtimes.",
            "",
        ]
        rows = []
        for row in report["idle"]:
            runtime = f"`{row['runtime']}`" + (" (configured)" if row.get("configured") else "")
            if "error" in row:
                rows.append([row["language"], runtime, "-", "-", "-", "-", "-", "-", row["error"]])
                continue
            states = ", ".join(f"{k} {v:.2f}" for k, v in row["cpu_pct_of_core_by_state"].items())
            rows.append(
                [
                    row["language"],
                    runtime,
                    "; ".join(f"{k} {v}" for k, v in row.get("pools_up", {}).items()),
                    str(row["sandboxes"]),
                    f"{row['pss_mb_per_sandbox']:.1f} ("
                    + ", ".join(
                        f"{k} {v:.1f}"
                        for k, v in row.get("pss_mb_per_sandbox_by_process", {}).items()
                    )
                    + ")",
                    "-"
                    if row.get("uss_mb_per_sandbox") is None
                    else f"{row['uss_mb_per_sandbox']:.1f}",
                    f"{row['pool_cpu_pct_of_core']:.2f}",
                    states,
                    f"{row['window_s']:g} s",
                ]
            )
        lines += _table(
            [
                "language",
                "runtime",
                "pools up",
                "sandboxes",
                "PSS MB / sandbox",
                "USS MB / sandbox",
                "pool CPU %",
                "CPU % per sandbox by state",
                "window",
            ],
            rows,
            right_from=3,
        )
        lines.append("")
    if report["notes"]:
        lines += ["Notes:", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


def _cpu_cells(cpu: dict[str, Any]) -> list[str]:
    share = "-" if cpu.get("run_share") is None else f"{cpu['run_share'] * 100:.0f}%"
    return [
        f"{cpu.get('run_cpu_ms', 0):.0f}",
        f"{cpu.get('start_cpu_ms', 0):.0f}",
        share,
        str(cpu.get("containers", 0)),
        "-"
        if cpu.get("sandboxes_cpu_pct_of_core") is None
        else f"{cpu['sandboxes_cpu_pct_of_core']:g}",
    ]


def _load_markdown(load: list[dict[str, Any]]) -> list[str]:
    lines = [
        "### Load shapes: offered load and CPU of runs vs starts",
        "",
        "Latencies of these rows are in the table above (kinds `poisson N%`, `burst N`, `flood`). "
        "CPU: our sandboxes' cgroups (`cinch-sandboxes/<id>`) over the shape's window, split "
        "into runs and starts (bench/README.md says how); dockerd, containerd and the shims are "
        "in neither.",
        "",
    ]
    rows = []
    for x in load:
        if x["kind"].startswith("poisson"):
            what = (
                f"{x['offered_rps']:.2f}/s offered ({x['capacity_rps']:.2f}/s capacity), "
                f"{x['sent']} sent, {x['skipped']} skipped, send lag p99 {x['late_ms_p99']:g} ms"
            )
        else:
            statuses = ", ".join(f"{k}: {v}" for k, v in sorted(x.get("statuses", {}).items()))
            what = f"{x['size']} at once, {statuses}; wall {x['wall_ms']:g} ms"
        rows.append([x["variant"], x["kind"], what, *_cpu_cells(x["cpu"]), x["cpu"]["method"]])
    lines += _table(
        [
            "variant",
            "shape",
            "load",
            "run CPU ms",
            "start CPU ms",
            "run share",
            "sandboxes",
            "% of a core",
            "split by",
        ],
        rows,
        right_from=3,
    )
    lines.append("")
    for x in load:
        if x["kind"] != "flood":
            continue
        lines += [
            f"{x['size']} at once from {x['keys']} keys ({x['variant']}): {x['answered_200']} answered "
            f"200, {x['503_with_retry_after']} 503 with Retry-After, {x['503_without_retry_after']} "
            f"503 without, {x['other_5xx']} other 5xx, {x['other']} other. 503 latency p50/p99/max "
            f"{fmt_ms(x['latency_503_ms']['p50'])} / {fmt_ms(x['latency_503_ms']['p99'])} / "
            f"{fmt_ms(x['latency_503_ms']['max'])} ms; 200 latency p50/p99 "
            f"{fmt_ms(x['latency_200_ms']['p50'])} / {fmt_ms(x['latency_200_ms']['p99'])} ms; the "
            f"client's floor, {x['size']} `GET /healthz` at once just before, p50/p99/max "
            f"{fmt_ms(x['floor_healthz_ms']['p50'])} / {fmt_ms(x['floor_healthz_ms']['p99'])} / "
            f"{fmt_ms(x['floor_healthz_ms']['max'])} ms. Pools "
            f"back at target ({x['target_source']}) "
            + (
                f"{x['back_at_target_s']:g} s after the last answer"
                if x["back_at_target_s"] is not None
                else f"not within {x['timeout_s']:g} s"
            )
            + "; largest pool seen: "
            + ", ".join(f"{k} {v:g}" for k, v in x["largest_pool_seen"].items())
            + ".",
            "",
        ]
        rows = []
        for lang, b in x["by_language"].items():
            ic, c = b["idle_charge"], b["charge"]
            rows.append(
                [
                    lang,
                    str(b["answered_200"]),
                    str(b["503_with_retry_after"] + b["503_without_retry_after"]),
                    f"{ic['p50']} (n={ic['n']})",
                    f"{c['p50']} / {c['p99']} / {c['max']} (n={c['n']})",
                    "-"
                    if b["charge_p99_over_idle_p50"] is None
                    else f"{b['charge_p99_over_idle_p50']:g}",
                ]
            )
        lines += _table(
            ["language", "200", "503", "idle charge p50", "charge p50 / p99 / max", "p99 / idle"],
            rows,
        )
        lines.append("")
    return lines


# -- chart ----------------------------------------------------------------------------------------


def chart(report: dict[str, Any], path: Path) -> bool:
    """Latency CDF per variant (one panel per language). False when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    present = {s["language"] for s in report["series"]}
    languages = [lang for lang in ("python", "javascript") if lang in present]
    if not languages:
        return False
    fig, axes = plt.subplots(1, len(languages), figsize=(6.5 * len(languages), 4.6), squeeze=False)
    styles = {"sequential": "-", "closed-loop": "--", "burst": ":"}
    colors = {HTTP_WARM: "tab:green", SCHED_WARM: "tab:blue", DOCKER: "tab:red"}
    for ax, lang in zip(axes[0], languages, strict=True):
        for s in report["series"]:
            if s["language"] != lang or s["workload"] != "print(2+2)":
                continue
            values = sorted(
                v
                for v, st in zip(s["raw_client_ms"], s["raw_status"], strict=True)
                if st in ("200", "ok")
            )
            if not values:
                continue
            ys = [(i + 1) / len(values) for i in range(len(values))]
            ax.step(
                values,
                ys,
                where="post",
                linestyle=styles.get(s["kind"], "-"),
                color=colors.get(s["variant"], "tab:orange"),
                label=f"{s['variant']}, {s['kind']} (n={len(values)})",
            )
        ax.set_xscale("log")
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("client-side latency, ms (log)")
        ax.set_ylabel("fraction of requests")
        ax.set_title(f"print(2+2), {lang}")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Cinch latency CDF ({report['started'][:10]}, {report['machine']['cpus']} cores)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def write(report: dict[str, Any], out_dir: Path, *, png: bool = True) -> dict[str, Path]:
    """``<out>/bench-<stamp>.json`` (+ ``latest.json``), ``latest.md`` and ``latest.png``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    stamp = report["started"].replace(":", "").replace("-", "")[:15]
    paths = {"json": out_dir / f"bench-{stamp}.json", "md": out_dir / "latest.md"}
    text = json.dumps(report, indent=1, ensure_ascii=False)
    paths["json"].write_text(text)
    (out_dir / "latest.json").write_text(text)
    paths["md"].write_text(markdown(report) + "\n")
    if png and chart(report, out_dir / "latest.png"):
        paths["png"] = out_dir / "latest.png"
    return paths
