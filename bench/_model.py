"""What the benchmark measures: samples, series of samples, and their summaries."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from ._stats import summarize

# In per-run splits, a run is a "hit" when it waited at most this long for its sandbox
# (queueMs): the head of the pool was ready, no start and no unpause in between.
HIT_QUEUE_MS = 5.0


@dataclass
class Sample:
    """One request (or one ``docker run``): what the client saw and what the server said."""

    client_ms: float
    status: str  # "200", "503", "wrong-output", "exit-1", "timeout", "transport:ReadError"...
    ok: bool
    duration_ms: float | None = None
    queue_ms: float | None = None
    end_s: float = 0.0  # monotonic time the answer arrived
    detail: str = ""  # for errors: the server's message, shortened
    credits: float | None = None  # server-reported creditsCharged (HTTP 200 only)
    retry_after: str | None = None  # the Retry-After header of an error answer, if any
    start_s: float = 0.0  # monotonic time the request was sent


@dataclass
class Series:
    """Samples of one variant x language x workload under one load shape."""

    variant: str
    language: str
    workload: str
    shape: str
    kind: str = ""  # "sequential", "burst" or "closed-loop"
    samples: list[Sample] = field(default_factory=list)
    elapsed_s: float | None = None  # set for closed loops and bursts: wall time of the whole run
    warm_hits: int | None = None  # from the server's or scheduler's own counter
    warm_total: int | None = None
    warm_source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> list[Sample]:
        return [s for s in self.samples if s.ok]

    def errors(self) -> dict[str, int]:
        return dict(Counter(s.status for s in self.samples if not s.ok))

    def error_examples(self) -> dict[str, str]:
        """One message per error status, to tell a queue time-out from a crash."""
        out: dict[str, str] = {}
        for s in self.samples:
            if not s.ok and s.detail and s.status not in out:
                out[s.status] = s.detail
        return out

    def throughput_rps(self) -> float | None:
        if not self.elapsed_s:
            return None
        return round(len(self.ok) / self.elapsed_s, 3)

    def warm_hit_ratio(self) -> float | None:
        if self.warm_hits is not None and self.warm_total:
            return round(self.warm_hits / self.warm_total, 4)
        with_queue = [s for s in self.ok if s.queue_ms is not None]
        if not with_queue:
            return None
        hits = sum(1 for s in with_queue if s.queue_ms is not None and s.queue_ms <= HIT_QUEUE_MS)
        return round(hits / len(with_queue), 4)

    def summary(self) -> dict[str, Any]:
        ok = self.ok
        hits = [s for s in ok if s.queue_ms is not None and s.queue_ms <= HIT_QUEUE_MS]
        misses = [s for s in ok if s.queue_ms is not None and s.queue_ms > HIT_QUEUE_MS]
        out: dict[str, Any] = {
            "variant": self.variant,
            "language": self.language,
            "workload": self.workload,
            "shape": self.shape,
            "kind": self.kind,
            "requests": len(self.samples),
            "ok": len(ok),
            "errors": self.errors(),
            "error_examples": self.error_examples(),
            "client_ms": summarize(s.client_ms for s in ok),
            "duration_ms": summarize(s.duration_ms for s in ok),
            "queue_ms": summarize(s.queue_ms for s in ok),
            "elapsed_s": None if self.elapsed_s is None else round(self.elapsed_s, 3),
            "throughput_rps": self.throughput_rps(),
            "warm_hit_ratio": self.warm_hit_ratio(),
            "warm_hit_source": self.warm_source
            or (f"queueMs <= {HIT_QUEUE_MS:g}" if any(s.queue_ms is not None for s in ok) else ""),
            "hit_client_ms": summarize(s.client_ms for s in hits) if hits or misses else None,
            "miss_client_ms": summarize(s.client_ms for s in misses) if hits or misses else None,
        }
        if self.warm_hits is not None:
            out["warm_hits"] = self.warm_hits
            out["warm_total"] = self.warm_total
        out.update(self.extra)
        return out

    def to_json(self) -> dict[str, Any]:
        data = self.summary()
        data["raw_client_ms"] = [round(s.client_ms, 3) for s in self.samples]
        data["raw_status"] = [s.status for s in self.samples]
        data["raw_duration_ms"] = [s.duration_ms for s in self.samples]
        data["raw_queue_ms"] = [s.queue_ms for s in self.samples]
        return data
