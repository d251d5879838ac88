"""``python -m bench`` (or ``cinch-bench``): end-to-end and scheduler-level load tests.

See bench/README.md for what each number means and the full command.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

import trio

from ._report import markdown as render_markdown
from ._report import to_json, write
from ._suite import LANGUAGES, SHAPES, Options, run_all
from ._workloads import WORKLOADS

T = TypeVar("T", int, float)

DEFAULT_OUT = Path(__file__).resolve().parent / "results"
MODES = {
    "all": ("http", "scheduler", "idle"),
    "http": ("http",),
    "scheduler": ("scheduler",),
    "idle": ("idle",),
}


def _languages(value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [n for n in names if n not in LANGUAGES]
    if bad or not names:
        raise argparse.ArgumentTypeError(f"languages are python and/or javascript, not {bad}")
    return names


def _workloads(value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [n for n in names if n not in WORKLOADS or n == "print"]
    if bad:
        raise argparse.ArgumentTypeError(
            f"workloads are {', '.join(n for n in WORKLOADS if n != 'print')}, not {bad}"
        )
    return names


def _shapes(value: str) -> tuple[str, ...]:
    names = tuple(v.strip() for v in value.split(",") if v.strip())
    bad = [n for n in names if n not in SHAPES]
    if bad:
        raise argparse.ArgumentTypeError(f"shapes are {','.join(SHAPES)}, not {bad}")
    return names


def _numbers(
    value: str, cast: Callable[[str], T], what: str, ok: Callable[[T], bool], rule: str
) -> tuple[T, ...]:
    """Comma-separated numbers for an option: each parsed by ``cast`` and checked by ``ok``."""
    try:
        numbers = tuple(cast(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{what} are numbers, not {value!r}") from None
    if not numbers or not all(ok(n) for n in numbers):
        raise argparse.ArgumentTypeError(f"{what} are {rule}")
    return numbers


def _sizes(value: str) -> tuple[int, ...]:
    return _numbers(value, int, "sizes", lambda n: n > 0, "positive integers")


def _fractions(value: str) -> tuple[float, ...]:
    return _numbers(value, float, "levels", lambda x: 0 < x <= 2, "fractions in (0, 2]")


def _keys(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def build_parser() -> argparse.ArgumentParser:
    d = Options()
    p = argparse.ArgumentParser(
        prog="python -m bench",
        description="Load tests for Cinch: over HTTP, at the scheduler level, and idle cost. "
        "Traffic goes to loopback servers this command starts (or --url); every loop is "
        "bounded in count and time.",
    )
    p.add_argument("mode", nargs="?", default="all", choices=sorted(MODES))
    p.add_argument("--quick", action="store_true", help="a smoke run: a few samples of each")
    p.add_argument("--languages", type=_languages, default=d.languages, help="python,javascript")
    p.add_argument(
        "--samples", type=int, default=d.samples, help="warm print(2+2) samples per language"
    )
    p.add_argument(
        "--cold-samples",
        type=int,
        default=d.cold_samples,
        help="cold path and docker run samples per language",
    )
    p.add_argument(
        "--workload-samples",
        type=int,
        default=d.workload_samples,
        help="samples per other workload",
    )
    p.add_argument(
        "--pause",
        type=float,
        default=d.pause_s,
        dest="pause_s",
        help="seconds between sequential requests",
    )
    p.add_argument(
        "--workloads",
        type=_workloads,
        default=d.workloads,
        help="besides print(2+2), on the warm server: " + ",".join(d.workloads),
    )
    p.add_argument("--bursts", type=int, default=d.bursts)
    p.add_argument("--burst-size", type=int, default=d.burst_size)
    p.add_argument("--callers", type=int, default=d.callers, help="closed-loop callers")
    p.add_argument(
        "--duration",
        type=float,
        default=d.closed_loop_s,
        dest="closed_loop_s",
        help="closed-loop seconds",
    )
    p.add_argument("--closed-loop-languages", type=_languages, default=d.closed_loop_languages)
    p.add_argument(
        "--probe-lives", type=int, default=d.probe_lives, help="sandbox lives timed phase by phase"
    )
    p.add_argument("--idle-window", type=float, default=d.idle_window_s, dest="idle_window_s")
    p.add_argument("--idle-settle", type=float, default=d.idle_settle_s, dest="idle_settle_s")
    p.add_argument("--url", default="", help="drive this running Cinch instead of starting servers")
    p.add_argument("--key", default="", help="API key for --url")
    p.add_argument("--no-cold", dest="cold", action="store_false", help="skip the pool-0 server")
    p.add_argument("--no-docker", dest="docker", action="store_false", help="skip plain docker run")
    p.add_argument(
        "--database-url", default="", help="PostgreSQL for the servers (default: embedded)"
    )
    p.add_argument(
        "--series-max",
        type=float,
        default=d.series_max_s,
        dest="series_max_s",
        help="upper bound in seconds for one sequential series",
    )
    p.add_argument(
        "--shapes",
        type=_shapes,
        default=d.shapes,
        help="load shapes besides the sequential rows: " + ",".join(SHAPES) + " (default: all)",
    )
    p.add_argument(
        "--poisson-duration",
        type=float,
        default=d.poisson_duration_s,
        dest="poisson_duration_s",
        help="seconds of each open-loop Poisson level (25%%, 50%%, 80%% of the closed loop)",
    )
    p.add_argument(
        "--poisson-levels",
        type=_fractions,
        default=d.poisson_levels,
        help="fractions of the capacity the Poisson shape offers (0.25,0.5,0.8)",
    )
    p.add_argument(
        "--capacity",
        type=float,
        default=d.capacity_rps,
        dest="capacity_rps",
        help="runs/s the Poisson levels are fractions of, instead of measuring it with a "
        "closed loop first (for A/B runs at the same offered rate)",
    )
    p.add_argument(
        "--burst-sizes",
        type=_sizes,
        default=d.burst_sizes,
        help="mixed bursts released at once, languages taking turns (16,64)",
    )
    p.add_argument(
        "--flood-size", type=int, default=d.flood_size, help="requests at once from 8 API keys"
    )
    p.add_argument(
        "--flood-keys",
        type=_keys,
        default=d.flood_keys,
        help="with --url: API keys of other accounts for the flood (comma-separated)",
    )
    p.add_argument(
        "--owner",
        default=d.owner,
        help="with --url: the cinch.owner label of that server's sandboxes (its instance id), "
        "for the CPU split of runs and starts",
    )
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="where the JSON, Markdown and PNG go"
    )
    p.add_argument("--no-chart", action="store_true")
    return p


def options_from_args(args: argparse.Namespace) -> Options:
    opts = Options(
        modes=MODES[args.mode],
        languages=args.languages,
        samples=args.samples,
        cold_samples=args.cold_samples,
        workload_samples=args.workload_samples,
        workloads=args.workloads,
        bursts=args.bursts,
        burst_size=args.burst_size,
        callers=args.callers,
        closed_loop_s=args.closed_loop_s,
        closed_loop_languages=args.closed_loop_languages,
        pause_s=args.pause_s,
        probe_lives=args.probe_lives,
        idle_settle_s=args.idle_settle_s,
        idle_window_s=args.idle_window_s,
        url=args.url,
        key=args.key,
        cold=args.cold and not args.url,
        docker=args.docker,
        database_url=args.database_url,
        series_max_s=args.series_max_s,
        shapes=args.shapes,
        poisson_duration_s=args.poisson_duration_s,
        poisson_levels=args.poisson_levels,
        capacity_rps=args.capacity_rps,
        burst_sizes=args.burst_sizes,
        flood_size=args.flood_size,
        flood_keys=args.flood_keys,
        owner=args.owner,
    )
    if args.quick:
        opts.samples = min(opts.samples, 5)
        opts.cold_samples = min(opts.cold_samples, 3)
        opts.workload_samples = min(opts.workload_samples, 2)
        opts.bursts = min(opts.bursts, 1)
        opts.burst_size = min(opts.burst_size, 4)
        opts.callers = min(opts.callers, 2)
        opts.closed_loop_s = min(opts.closed_loop_s, 3.0)
        opts.probe_lives = min(opts.probe_lives, 2)
        opts.idle_settle_s = min(opts.idle_settle_s, 1.0)
        opts.idle_window_s = min(opts.idle_window_s, 2.0)
        opts.pause_s = min(opts.pause_s, 0.3)
        opts.poisson_duration_s = min(opts.poisson_duration_s, 3.0)
        opts.burst_sizes = tuple(min(n, 4) for n in opts.burst_sizes[:1])
        opts.flood_size = min(opts.flood_size, 12)
        opts.flood_idle_samples = min(opts.flood_idle_samples, 2)
        opts.flood_recovery_max_s = min(opts.flood_recovery_max_s, 30.0)
    return opts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser().parse_args(argv)
    if args.url and not args.key:
        print("--url needs --key", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    opts = options_from_args(args)
    started = datetime.now(UTC)
    results = trio.run(run_all, opts)
    report = to_json(results, opts, ["python -m bench", *argv], started)
    paths = write(report, args.out, png=not args.no_chart)
    print()
    print(render_markdown(report))
    print()
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
