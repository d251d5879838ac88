"""Prometheus metrics: our own registry; pool and scheduler gauges read at scrape time."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15)


class _PoolCollector(Collector):
    def __init__(self, scheduler: Any) -> None:
        self._scheduler = scheduler

    def collect(self) -> Iterator[Any]:
        ready = GaugeMetricFamily(
            "cinch_pool_ready", "Warm sandboxes ready to run", labels=["language"]
        )
        paused = GaugeMetricFamily(
            "cinch_pool_paused", "Warm sandboxes paused", labels=["language"]
        )
        starting = GaugeMetricFamily(
            "cinch_pool_starting", "Sandboxes being started", labels=["language"]
        )
        size = GaugeMetricFamily(
            "cinch_pool_target_size",
            "Warm sandboxes the pool aims to hold now (follows demand)",
            labels=["language"],
        )
        min_size = GaugeMetricFamily(
            "cinch_pool_min_size", "The configured minimum warm target", labels=["language"]
        )
        max_size = GaugeMetricFamily(
            "cinch_pool_max_size",
            "The maximum warm target (configured, bounded by memory and the global cap)",
            labels=["language"],
        )
        arrival = GaugeMetricFamily(
            "cinch_pool_arrival_rate",
            "Runs arriving per second (smoothed over 5 s)",
            labels=["language"],
        )
        start_estimate = GaugeMetricFamily(
            "cinch_pool_start_estimate_seconds",
            "Smoothed time one sandbox start takes",
            labels=["language"],
        )
        replace_estimate = GaugeMetricFamily(
            "cinch_pool_replace_estimate_seconds",
            "Smoothed time from asking for a replacement sandbox to its being ready "
            "(the start and its wait for a start slot)",
            labels=["language"],
        )
        shrunk = CounterMetricFamily(
            "cinch_pool_shrunk",
            "Warm sandboxes destroyed as surplus above the target",
            labels=["language"],
        )
        queued_lang = GaugeMetricFamily(
            "cinch_pool_queued", "Runs waiting for a sandbox of this language", labels=["language"]
        )
        predicted = GaugeMetricFamily(
            "cinch_pool_predicted_wait_seconds",
            "Predicted wait of a new run arriving now",
            labels=["language"],
        )
        breaker = GaugeMetricFamily(
            "cinch_pool_breaker_open",
            "1 while the start circuit breaker is open",
            labels=["language"],
        )
        starts = CounterMetricFamily(
            "cinch_sandbox_starts", "Sandboxes started", labels=["language"]
        )
        failures = CounterMetricFamily(
            "cinch_sandbox_start_failures", "Sandbox starts that failed", labels=["language"]
        )
        start_seconds = CounterMetricFamily(
            "cinch_sandbox_start_seconds",
            "Total time spent starting sandboxes",
            labels=["language"],
        )
        utilization = GaugeMetricFamily(
            "cinch_start_slots_utilization",
            "Share of the sandbox start slots that the arrivals keep busy (each run "
            "consumes its sandbox); the warm targets grow steeply as it nears 1",
        )
        stats = self._scheduler.statistics()
        shared_utilization = 0.0
        for language in self._scheduler.languages:
            s = self._scheduler.pool(language).statistics()
            min_size.add_metric([language], s.min_size)
            max_size.add_metric([language], s.max_size)
            arrival.add_metric([language], s.arrival_rate)
            start_estimate.add_metric([language], s.start_estimate_s)
            replace_estimate.add_metric([language], s.replace_estimate_s)
            shrunk.add_metric([language], s.shrunk_total)
            queued_lang.add_metric([language], stats.queued_by_language.get(language, 0))
            predicted.add_metric([language], stats.predicted_wait_s.get(language, 0.0))
            ready.add_metric([language], s.ready)
            paused.add_metric([language], s.paused)
            starting.add_metric([language], s.starting)
            size.add_metric([language], s.size)
            breaker.add_metric([language], 1 if s.breaker_open else 0)
            starts.add_metric([language], s.started_total)
            failures.add_metric([language], s.start_failures_total)
            start_seconds.add_metric([language], s.start_seconds_sum)
            shared_utilization = s.start_utilization  # the pools share the slots
        utilization.add_metric([], shared_utilization)
        in_flight = GaugeMetricFamily("cinch_runs_in_flight", "Runs executing now")
        in_flight.add_metric([], stats.in_flight)
        queued = GaugeMetricFamily("cinch_runs_queued", "Runs waiting for a sandbox")
        queued.add_metric([], stats.queued)
        rejected = CounterMetricFamily(
            "cinch_runs_rejected", "Runs turned away for lack of capacity", labels=["reason"]
        )
        for reason, n in stats.rejected_total.items():
            rejected.add_metric([reason], n)
        warm_hits = CounterMetricFamily(
            "cinch_runs_warm_hits", "Runs that found a warm sandbox ready on arrival"
        )
        warm_hits.add_metric([], stats.warm_hits_total)
        waited = CounterMetricFamily(
            "cinch_runs_waited_for_sandbox", "Runs that had to wait for a sandbox to start"
        )
        waited.add_metric([], stats.queued_runs_total)
        yield from (ready, paused, starting, size, breaker, starts, failures, start_seconds)
        yield from (
            min_size,
            max_size,
            arrival,
            start_estimate,
            replace_estimate,
            shrunk,
            queued_lang,
            predicted,
            utilization,
        )
        yield from (in_flight, queued, rejected, warm_hits, waited)


# (kind, name, help, value): a sample read at scrape time; kind is "gauge" or "counter".
Sample = tuple[str, str, str, float]


class _SampleCollector(Collector):
    def __init__(self, source: Callable[[], Iterable[Sample]]) -> None:
        self._source = source

    def collect(self) -> Iterator[Any]:
        for kind, name, help_text, value in self._source():
            family = GaugeMetricFamily if kind == "gauge" else CounterMetricFamily
            metric = family(name, help_text)
            metric.add_metric([], value)
            yield metric


class Metrics:
    """Every metric Cinch exports, on a registry of its own."""

    def __init__(self, scheduler: Any | None = None) -> None:
        disable_created_metrics()  # type: ignore[no-untyped-call]  # *_created series only add noise here
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.runs = Counter("cinch_runs", "Runs finished", ["language", "termination"], registry=r)
        self.run_duration = Histogram(
            "cinch_run_duration_seconds",
            "Program run time (durationMs)",
            ["language"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "cinch_run_queue_wait_seconds",
            "Time waiting for a sandbox",
            ["language"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.credits_charged = Counter(
            "cinch_credits_charged", "Credits charged for runs", registry=r
        )
        self.http_requests = Counter(
            "cinch_http_requests",
            "HTTP requests answered",
            ["route", "method", "status"],
            registry=r,
        )
        self.http_duration = Histogram(
            "cinch_http_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "cinch_http_requests_in_flight", "HTTP requests in progress", registry=r
        )
        if scheduler is not None:
            r.register(_PoolCollector(scheduler))

    def watch(self, source: Callable[[], Iterable[Sample]]) -> None:
        """Export the samples ``source`` returns, read at every scrape."""
        self.registry.register(_SampleCollector(source))

    def render(self) -> bytes:
        return generate_latest(self.registry)
