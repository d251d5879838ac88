"""The bench tool end to end, a few samples against the session's live server.

No timing assertions: speed targets belong to the measured run (bench/README.md).
This checks that the tool drives a real Cinch and a real ``docker run``, that the
report has the structure README and the chart rely on, and that no container
of the baseline is left behind.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bench.__main__ import main

pytestmark = [pytest.mark.gvisor, pytest.mark.postgres]

SUMMARY_KEYS = {
    "variant",
    "language",
    "workload",
    "shape",
    "kind",
    "requests",
    "ok",
    "errors",
    "client_ms",
    "duration_ms",
    "queue_ms",
    "throughput_rps",
    "warm_hit_ratio",
    "warm_hit_source",
    "raw_client_ms",
    "raw_status",
}
PERCENTILES = {"n", "p50", "p90", "p99", "max", "mean"}


def _find(report: dict[str, Any], variant: str, language: str, workload: str, kind: str) -> Any:
    found = [
        s
        for s in report["series"]
        if (s["variant"], s["language"], s["workload"], s["kind"])
        == (variant, language, workload, kind)
    ]
    assert len(found) == 1, (
        variant,
        language,
        workload,
        kind,
        [s["variant"] for s in report["series"]],
    )
    return found[0]


def test_bench_http_smoke(cinch_live: Any, tmp_path: Path) -> None:
    key = cinch_live.new_key(1_000_000)
    out = tmp_path / "results"
    code = main(
        [
            "http",
            "--url",
            cinch_live.base_url,
            "--key",
            key,
            "--samples",
            "3",
            "--cold-samples",
            "1",
            "--workload-samples",
            "1",
            "--bursts",
            "1",
            "--burst-size",
            "3",
            "--callers",
            "2",
            "--duration",
            "2",
            "--pause",
            "0.05",
            "--shapes",
            "closed",  # the load shapes of issue 15 have their own test below
            "--out",
            str(out),
        ]
    )
    assert code == 0
    report = json.loads((out / "latest.json").read_text())
    assert report["schema"] == "cinch-bench/1"
    assert report["command"][0] == "python -m bench"
    assert report["machine"]["cpus"] >= 1
    for s in report["series"]:
        assert SUMMARY_KEYS <= set(s), s["variant"]
        assert PERCENTILES <= set(s["client_ms"])
        assert s["ok"] + sum(s["errors"].values()) == s["requests"]
        assert len(s["raw_client_ms"]) == s["requests"]

    for language in ("python", "javascript"):
        warm = _find(report, "HTTP, warm pool", language, "print(2+2)", "sequential")
        assert warm["requests"] == warm["ok"] == 3, warm["errors"]
        assert warm["client_ms"]["n"] == 3
        assert warm["client_ms"]["p50"] > 0
        # the server's own numbers came back with every answer
        assert warm["duration_ms"]["n"] == 3
        assert warm["queue_ms"]["n"] == 3
        assert warm["client_ms"]["p50"] >= warm["duration_ms"]["p50"]
        # the warm-hit ratio comes from the server's counter, not from a guess
        assert "cinch_runs_warm_hits_total" in warm["warm_hit_source"]
        assert warm["warm_total"] == 3
        assert 0 <= warm["warm_hit_ratio"] <= 1
        for workload in (
            "200 ms CPU",
            "500 KB output, one write",
            "500 KB output, 100 B lines, flush each",
        ):
            s = _find(report, "HTTP, warm pool", language, workload, "sequential")
            # ok means exit 0 and exactly the expected output (512,000 bytes for the output ones)
            assert s["ok"] == s["requests"] == 1, (workload, s["errors"], s["error_examples"])
        burst = _find(report, "HTTP, warm pool", language, "print(2+2)", "burst")
        assert burst["requests"] == 3
        assert len(burst["burst_wall_ms"]) == 1
        docker = _find(report, "docker run", language, "print(2+2)", "sequential")
        assert docker["ok"] == docker["requests"] == 1, docker["error_examples"]
        assert docker["duration_ms"]["n"] == 0  # docker run reports no server-side time

    loop = _find(report, "HTTP, warm pool", "python", "print(2+2)", "closed-loop")
    assert loop["requests"] >= 2
    assert loop["elapsed_s"] >= 2
    assert loop["throughput_rps"] is not None
    assert loop["throughput_rps"] > 0
    assert _find(report, "docker run", "python", "print(2+2)", "closed-loop")["ok"] >= 1
    assert "docker CLI" in report["setup"]["docker_client"]

    targets = {t["target"]: t for t in report["targets"]}
    assert "HTTP, warm pool: warm hit p50, python (ms)" in targets
    assert all({"issue", "limit", "measured", "met"} <= set(t) for t in targets.values())

    md = (out / "latest.md").read_text()
    assert "| variant | lang | workload |" in md
    assert "### Targets" in md
    assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # every baseline container carried our label and is gone
    bench_id = report["setup"]["bench_id"]
    left = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=cinch.owner={bench_id}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert left.stdout.strip() == ""


def test_bench_load_shapes_smoke(cinch_live: Any, tmp_path: Path) -> None:
    """Issue 15's shapes in --quick form: Poisson levels, a mixed burst, a flood from 8 keys."""
    keys = [cinch_live.new_key(1_000_000) for _ in range(8)]
    id_file = cinch_live.data_dir / "instance-id"
    owner = id_file.read_text().strip() if id_file.exists() else ""
    out = tmp_path / "results"
    code = main(
        [
            "http",
            "--quick",
            "--url",
            cinch_live.base_url,
            "--key",
            keys[0],
            "--flood-keys",
            ",".join(keys[1:]),
            "--owner",
            owner,
            "--no-docker",
            "--workloads",
            "",
            "--samples",
            "2",
            "--bursts",
            "0",
            "--shapes",
            "closed,poisson,bursts,flood",
            "--callers",
            "2",
            "--duration",
            "2",
            "--poisson-duration",
            "2",
            "--burst-sizes",
            "4",
            "--flood-size",
            "10",
            "--out",
            str(out),
            "--no-chart",
        ]
    )
    assert code == 0
    report = json.loads((out / "latest.json").read_text())
    for s in report["series"]:
        assert s["ok"] + sum(s["errors"].values()) == s["requests"], s["kind"]
    kinds = {(s["kind"], s["language"]) for s in report["series"]}
    for level in ("poisson 25%", "poisson 50%", "poisson 80%", "burst 4", "flood"):
        for language in ("python", "javascript"):
            assert (level, language) in kinds, (level, language, sorted(kinds))
    # the burst was 2 + 2, the flood 5 + 5
    assert sum(1 for s in report["series"] for _ in s["raw_status"] if s["kind"] == "burst 4") == 4

    load = {row["kind"]: row for row in report["load"]}
    assert set(load) == {"poisson 25%", "poisson 50%", "poisson 80%", "burst 4", "flood"}
    for row in load.values():
        assert {"run_cpu_ms", "start_cpu_ms", "run_share", "method"} <= set(row["cpu"])
    poisson50 = load["poisson 50%"]
    assert poisson50["offered_rps"] > 0
    assert poisson50["skipped"] == 0
    flood = load["flood"]
    assert flood["size"] == flood["requests"] == 10
    assert flood["keys"] == 8
    parts = (
        "answered_200",
        "503_with_retry_after",
        "503_without_retry_after",
        "other_5xx",
        "other",
    )
    assert sum(flood[k] for k in parts) == 10
    assert flood["target_source"] in ("cinch_pool_target", "cinch_pool_target_size")
    for row in flood["by_language"].values():
        assert row["idle_charge"]["n"] == 2  # --quick: two idle runs per language
        assert row["charge"]["n"] == row["answered_200"]
    if owner:
        assert flood["cpu"]["containers"] >= 1

    targets = {t["target"] for t in report["targets"] if t["issue"] == 15}
    assert "HTTP, Poisson at 50% of capacity: p99, python (ms)" in targets
    assert "HTTP, closed loop of 2: 503 answers" in targets
    assert "10 at once: answers other than 200 or 503 with Retry-After" in targets
    md = (out / "latest.md").read_text()
    assert "### Load shapes: offered load and CPU of runs vs starts" in md
    assert flood["floor_healthz_ms"]["n"] == 10
