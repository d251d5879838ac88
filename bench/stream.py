"""``python -m bench.stream``: time to first chunk of a streamed run, and the warm one-shot p50.

Starts its own server (small pools, embedded database), then, one request at a
time with a pause for the pool to refill (every run is warm):

- one-shot ``print(2 + 2)``: client-side latency of the whole ``POST /run``;
- streamed ``print('x'); time.sleep(0.2)``: from sending the request to the
  first ``stdout`` event (the program is still running then), and to ``result``.

``--server-cwd`` runs another checkout's server (e.g. the base branch, for the
one-shot number before a change).  Numbers on a shared 2-core machine are noisy:
compare runs taken close together.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx

from ._servers import start_server, stop_server

STREAM_CODE = {
    "python": "import time\nprint('x')\ntime.sleep(0.2)\n",
    "javascript": "console.log('x'); setTimeout(() => {}, 200);\n",
}
ONE_SHOT = {"python": "print(2 + 2)", "javascript": "console.log(2 + 2)"}


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def one_shot_ms(client: httpx.Client, key: str, language: str) -> float:
    t0 = time.perf_counter()
    r = client.post(
        "/run",
        json={"code": ONE_SHOT[language], "language": language},
        headers={"Authorization": f"Bearer {key}"},
    )
    ms = (time.perf_counter() - t0) * 1000
    if r.status_code != 200 or r.json()["exitCode"] != 0:
        raise RuntimeError(f"one-shot run failed: {r.text[:300]}")
    return ms


def stream_ms(client: httpx.Client, key: str, language: str) -> tuple[float, float]:
    """(first chunk, result) in ms from sending the request."""
    t0 = time.perf_counter()
    first = end = 0.0
    with client.stream(
        "POST",
        "/run",
        json={"code": STREAM_CODE[language], "language": language},
        headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream"},
    ) as r:
        if r.status_code != 200:
            raise RuntimeError(f"streamed run failed: {r.read()[:300]!r}")
        event = ""
        for line in r.iter_lines():
            if line.startswith("event: "):
                event = line[7:]
            elif line.startswith("data: "):
                now = (time.perf_counter() - t0) * 1000
                if event == "stdout" and not first:
                    first = now
                if event == "result":
                    end = now
                    if json.loads(line[6:])["stdout"] != "x\n":
                        raise RuntimeError(f"wrong result: {line[:300]}")
    if not (first and end):
        raise RuntimeError("the stream had no chunk or no result")
    return first, end


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--server-cwd", type=Path, default=None)
    parser.add_argument("--no-stream", action="store_true", help="one-shot only (old servers)")
    parser.add_argument(
        "--pause",
        type=float,
        default=0.4,
        help="seconds before each request (0.4: the replacement may still be starting; "
        "1.0 or more: an idle machine)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cinch-bench-stream-") as tmp:
        server = start_server(
            "stream", Path(tmp), pool_python=1, pool_javascript=1, cwd=args.server_cwd
        )
        try:
            with httpx.Client(base_url=server.base_url, timeout=60) as client:
                for language in ("python", "javascript"):
                    shots, firsts, ends = [], [], []
                    for i in range(args.runs):
                        time.sleep(args.pause)  # the pool refills: every run is warm
                        shots.append(one_shot_ms(client, server.key, language))
                        if not args.no_stream and i % 2 == 0:
                            time.sleep(args.pause)
                            first, end = stream_ms(client, server.key, language)
                            firsts.append(first)
                            ends.append(end)
                    line = (
                        f"{language:10} one-shot p50 {statistics.median(shots):6.1f} ms "
                        f"p90 {_pct(shots, 0.9):6.1f} (n={len(shots)})"
                    )
                    if firsts:
                        line += (
                            f" | stream first chunk p50 {statistics.median(firsts):6.1f} ms "
                            f"p90 {_pct(firsts, 0.9):6.1f}, result p50 "
                            f"{statistics.median(ends):6.1f} (n={len(firsts)})"
                        )
                    print(line, flush=True)
        finally:
            stop_server(server)


if __name__ == "__main__":
    main()
