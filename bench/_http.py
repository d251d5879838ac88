"""Drive a live Cinch over HTTP: one ``POST /run`` per sample, and its ``/metrics``."""

from __future__ import annotations

import re
import time

import httpx
import trio

from ._model import Sample
from ._workloads import Workload, check_output

REQUEST_TIMEOUT_S = 60.0
_METRIC_LINE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*(?:\{[^}]*\})?)\s+(\S+)")


def parse_metrics(text: str) -> dict[str, float]:
    """Prometheus text format -> ``{'name{labels}': value}`` (comments skipped)."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _METRIC_LINE.match(line)
        if m:
            try:
                out[m.group(1)] = float(m.group(2))
            except ValueError:
                continue
    return out


class HttpTarget:
    """One Cinch server: ``base_url`` on loopback (or wherever the user points it) and a key."""

    def __init__(self, name: str, base_url: str, key: str, client: httpx.AsyncClient) -> None:
        self.name = name
        self.base_url = base_url.rstrip("/")
        self._key = key
        self._client = client

    async def run(self, language: str, workload: Workload, key: str | None = None) -> Sample:
        """One ``POST /run`` with this target's key (or ``key``)."""
        t0 = time.perf_counter()
        try:
            response = await self._client.post(
                self.base_url + "/run",
                json={"code": workload.code[language], "language": language},
                headers={"Authorization": f"Bearer {key or self._key}"},
                timeout=REQUEST_TIMEOUT_S,
            )
        except httpx.HTTPError as exc:
            t1 = time.perf_counter()
            return Sample(
                (t1 - t0) * 1000,
                f"transport:{type(exc).__name__}",
                False,
                end_s=t1,
                detail=str(exc)[:160],
                start_s=t0,
            )
        t1 = time.perf_counter()
        try:
            body = response.json()
        except ValueError:
            body = {"error": response.text}
        status = str(response.status_code)
        ok = False
        detail = ""
        if not isinstance(body, dict):
            body = {"error": response.text}
        if response.status_code != 200:
            detail = str(body.get("error", response.text))[:160]
        else:
            termination = body.get("termination", "exited")
            if termination != "exited" or body.get("exitCode") != 0:
                status = f"200:{termination}:{body.get('exitCode')}"
                detail = str(body.get("stderr", ""))[-160:]
            elif not check_output(workload, body.get("stdout", "")):
                status = "200:wrong-output"
            else:
                ok = True
        return Sample(
            (t1 - t0) * 1000,
            status,
            ok,
            duration_ms=body.get("durationMs"),
            queue_ms=body.get("queueMs"),
            end_s=t1,
            detail=detail,
            credits=body.get("creditsCharged") if response.status_code == 200 else None,
            retry_after=response.headers.get("Retry-After"),
            start_s=t0,
        )

    async def healthz(self) -> Sample:
        """One ``GET /healthz``: what a request costs this client and the server's HTTP layer."""
        t0 = time.perf_counter()
        try:
            response = await self._client.get(self.base_url + "/healthz", timeout=REQUEST_TIMEOUT_S)
        except httpx.HTTPError as exc:
            t1 = time.perf_counter()
            return Sample((t1 - t0) * 1000, f"transport:{type(exc).__name__}", False, end_s=t1)
        t1 = time.perf_counter()
        code = response.status_code
        return Sample((t1 - t0) * 1000, str(code), code == 200, end_s=t1, start_s=t0)

    async def metrics(self) -> dict[str, float] | None:
        try:
            response = await self._client.get(self.base_url + "/metrics", timeout=10)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        return parse_metrics(response.text)

    async def warm_counters(self) -> tuple[int, int] | None:
        """``(warm hits, runs that waited for a start)`` from the server's own counters."""
        m = await self.metrics()
        if m is None or "cinch_runs_warm_hits_total" not in m:
            return None
        return int(m["cinch_runs_warm_hits_total"]), int(
            m.get("cinch_runs_waited_for_sandbox_total", 0)
        )

    async def pool_gauges(self) -> dict[str, dict[str, float]] | None:
        """Per language: ``ready``, ``paused``, ``starting`` and ``target`` from ``/metrics``.

        ``target`` is ``cinch_pool_target`` (the demand-following target) when the
        server exports it, else ``cinch_pool_target_size`` (the configured size).
        """
        m = await self.metrics()
        if m is None:
            return None
        out: dict[str, dict[str, float]] = {}
        for lang in ("python", "javascript"):
            label = f'{{language="{lang}"}}'
            if f"cinch_pool_ready{label}" not in m:
                continue
            target = m.get(f"cinch_pool_target{label}")
            out[lang] = {
                "ready": m.get(f"cinch_pool_ready{label}", 0.0),
                "paused": m.get(f"cinch_pool_paused{label}", 0.0),
                "starting": m.get(f"cinch_pool_starting{label}", 0.0),
                "target": target
                if target is not None
                else m.get(f"cinch_pool_target_size{label}", 0.0),
                "target_source": 1.0 if target is not None else 0.0,
            }
        return out

    async def wait_idle(self, languages: list[str], timeout_s: float = 90.0) -> bool:
        """Wait until no run is in flight and every pool is full again. False on time-out."""
        with trio.move_on_after(timeout_s):
            while True:
                m = await self.metrics()
                if m is None:
                    await trio.sleep(2.0)  # no metrics: give the pools a moment and hope
                    return False
                full = all(
                    m.get(f'cinch_pool_ready{{language="{lang}"}}', 0)
                    >= m.get(f'cinch_pool_target_size{{language="{lang}"}}', 0)
                    and m.get(f'cinch_pool_starting{{language="{lang}"}}', 0) == 0
                    for lang in languages
                )
                if full and m.get("cinch_runs_in_flight", 0) == 0:
                    return True
                await trio.sleep(0.05)
        return False

    async def languages_info(self) -> dict[str, str]:
        """``{language: runtime}`` from ``GET /languages`` (empty when unavailable)."""
        try:
            response = await self._client.get(self.base_url + "/languages", timeout=10)
            data = response.json()
        except (httpx.HTTPError, ValueError):
            return {}
        return {item.get("name", ""): item.get("runtime", "") for item in data.get("languages", [])}
