"""Prometheus metrics: `lambent_` names, `_total` counters, `_seconds` histograms.

Each process counts what it does (invocations by function, version, trigger and outcome; durations;
throttles; concurrency; warm and cold starts; schedule fires; stream lag). The gateway also reports
cluster-wide numbers read from Redis at scrape time (queue depth, oldest queued event, DLQ depth), and
`lambent_redis_up`: 0 while Redis is not reachable (the cluster numbers are then left out, the rest is served).
`lambent worker --concurrency N` runs prometheus-client's multiprocess mode: the children write to
PROMETHEUS_MULTIPROC_DIR and the parent serves the sum on one port.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import threading
from http import HTTPStatus
from socketserver import ThreadingMixIn
from typing import Any, Callable, Iterable, Mapping, Protocol
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import redis
from prometheus_client import (CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram,
                               generate_latest, make_wsgi_app)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from .outage import UNREACHABLE, RedisHealth

log = logging.getLogger(__name__)

_DURATION_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900)

INVOCATIONS = Counter("lambent_invocations_total", "Invocations by function, version, trigger and outcome",
                      ["function", "version", "trigger", "outcome"])
DURATION = Histogram("lambent_invocation_duration_seconds", "Handler duration", ["function", "trigger"],
                     buckets=_DURATION_BUCKETS)
INIT_DURATION = Histogram("lambent_init_duration_seconds", "Handler import time of a cold start", ["function"],
                          buckets=_DURATION_BUCKETS)
THROTTLES = Counter("lambent_throttles_total", "Invocations refused at reserved concurrency", ["function", "trigger"])
CONCURRENT = Gauge("lambent_concurrent_executions", "Invocations running now in this process", ["function"],
                   multiprocess_mode="livesum")
STARTS = Counter("lambent_sandbox_starts_total", "Invocations by whether their sandbox was warm or cold",
                 ["function", "kind"])
SCHEDULE_FIRES = Counter("lambent_schedule_fires_total", "Schedule occurrences fired", ["function", "schedule"])
SCHEDULE_LATE = Counter("lambent_schedule_late_fires_total", "Occurrences fired more than a second late",
                        ["function", "schedule"])
SCHEDULE_MISSED = Counter("lambent_schedule_missed_total", "Occurrences not fired (past the grace time, or "
                          "coalesced)", ["function", "schedule"])
STREAM_LAG = Gauge("lambent_stream_lag_records", "Records behind the end of the partition",
                   ["function", "mapping", "topic", "partition"], multiprocess_mode="liveall")
STREAM_COMMITTED = Gauge("lambent_stream_committed_offset", "Last committed offset",
                         ["function", "mapping", "topic", "partition"], multiprocess_mode="liveall")
STREAM_LAST_COMMIT = Gauge("lambent_stream_last_commit_timestamp_seconds", "When a partition last committed",
                           ["function", "mapping", "topic", "partition"], multiprocess_mode="liveall")


@functools.lru_cache(maxsize=4096)
def child(metric: Any, *labels: str) -> Any:
    """`metric.labels(*labels)`, looked up once: the lookup costs more than the increment (hot path)."""
    return metric.labels(*labels)


def observe_invocation(*, function: str, version: str, trigger: str, outcome: str, duration_s: float,
                       init_s: float | None) -> None:
    child(INVOCATIONS, function, version, trigger, outcome).inc()
    if outcome == "throttled":
        child(THROTTLES, function, trigger).inc()
        return
    child(DURATION, function, trigger).observe(duration_s)
    child(STARTS, function, "cold" if init_s is not None else "warm").inc()
    if init_s is not None:
        INIT_DURATION.labels(function).observe(init_s)


class AsyncNumbers(Protocol):
    """What the cluster's async invocations wait on (asyncq's AsyncStore.depths gives it)."""
    @property
    def queued(self) -> int: ...                        # jobs waiting on the queue
    @property
    def delayed(self) -> int: ...                       # invocations waiting for a retry or a throttle
    @property
    def oldest_age_s(self) -> float: ...                # age of the oldest queued event (0: none)
    @property
    def dead_letters(self) -> Mapping[str, int]: ...    # function name -> DLQ depth


class ClusterCollector(Collector):
    """Numbers about the whole cluster, read from Redis when scraped (the gateway registers it). `read` reads
    them (the gateway passes the async store's, for its functions): this module knows no Redis layout."""

    def __init__(self, read: Callable[[], AsyncNumbers], *, health: RedisHealth | None = None) -> None:
        self._read = read
        self._health = health

    def collect(self) -> Iterable[GaugeMetricFamily]:
        up = GaugeMetricFamily("lambent_redis_up", "1 when this gateway reaches Redis, 0 during an outage")
        if self._health is not None and self._health.down:
            up.add_metric([], 0)
            return [up]                        # not asked while known to be down: the scrape stays quick
        try:
            cluster = self._cluster()
        except UNREACHABLE as exc:
            if self._health is not None:
                self._health.failed(exc)       # logged once per outage, there
            else:
                log.warning("metrics: Redis is not reachable; cluster gauges left out")
            up.add_metric([], 0)
            return [up]
        except redis.RedisError:
            log.warning("metrics: Redis refused a read; cluster gauges left out", exc_info=True)
            cluster = []
        up.add_metric([], 1)
        return [up, *cluster]

    def _cluster(self) -> list[GaugeMetricFamily]:
        numbers = self._read()
        depth = GaugeMetricFamily("lambent_async_queue_depth", "Async invocations waiting on the RQ queue")
        delayed = GaugeMetricFamily("lambent_async_delayed", "Async invocations waiting for a retry or a throttle")
        oldest = GaugeMetricFamily("lambent_async_oldest_event_age_seconds", "Age of the oldest queued event")
        dlq = GaugeMetricFamily("lambent_dlq_depth", "Dead letters per function", labels=["function"])
        depth.add_metric([], numbers.queued)
        delayed.add_metric([], numbers.delayed)
        oldest.add_metric([], numbers.oldest_age_s)
        for name, count in numbers.dead_letters.items():
            dlq.add_metric([name], count)
        return [depth, delayed, oldest, dlq]


def render(registry: CollectorRegistry | None = None) -> tuple[bytes, str]:
    """The exposition text of this process (or of every process in multiprocess mode)."""
    if registry is None:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            MultiProcessCollector(registry)
        else:
            registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST


# Whether a caller of a role's metrics port may read it (None) or what to answer instead (status, JSON body):
# set by the role's command from the keys (require_key), as the gateway's /metrics needs a key.
Guard = Callable[[Mapping[str, str], "str | None"], "tuple[int, bytes] | None"]
_guard: Guard | None = None


def require_key(guard: Guard) -> None:
    """Every metrics port this process serves from now on answers only the callers `guard` lets through."""
    global _guard
    _guard = guard


def serve(port: int, host: str, *, role: str, multiprocess_dir: str | None = None) -> int | None:
    """A metrics port for a role without a gateway; returns the port it serves on (None: none).

    A port that another process holds (a second stack, or a second replica of the role, on this host) is never
    fatal and never leaves the role without metrics: it serves on a free port instead and logs where, as
    `lambent up` does for a Redis port that is taken. Any other failure to bind is a warning and no metrics."""
    if port <= 0:
        return None
    registry: CollectorRegistry = REGISTRY
    if multiprocess_dir:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=multiprocess_dir)
    app = make_wsgi_app(registry)
    if _guard is not None:
        app = _guarded(app, _guard)
    server = _listen(host, port, app, role=role)
    if server is None:
        return None
    threading.Thread(target=server.serve_forever, name=f"metrics-{role}", daemon=True).start()
    address = f"http://{host}:{server.server_port}/metrics"
    log.info("metrics served at %s", address, extra={"role": role, "address": address})
    return server.server_port


def _listen(host: str, port: int, app: Any, *, role: str) -> _ThreadingServer | None:
    """The server on host:port, else (that port taken) on a free port of host; None, with a warning, when
    neither can be had."""
    try:
        return make_server(host, port, app, _ThreadingServer, handler_class=_QuietHandler)
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            log.warning("metrics port %s:%d is not available (%s): no metrics; set metrics.host or metrics.%s_port",
                        host, port, exc, role)
            return None
    try:
        server = make_server(host, 0, app, _ThreadingServer, handler_class=_QuietHandler)
    except OSError as exc:
        log.warning("metrics port %s:%d is taken and no other port is free (%s): no metrics", host, port, exc)
        return None
    log.warning("metrics port %s:%d is taken (another Lambent stack or %s on this host?): serving on port %d "
                "instead; give each its own metrics.%s_port to scrape it at a fixed address",
                host, port, role, server.server_port, role,
                extra={"role": role, "configured_port": port, "port": server.server_port})
    return server


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:     # scrapes are not worth a log line each
        pass


def _guarded(app: Any, guard: Guard) -> Any:
    def guarded(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        headers = {name[5:].replace("_", "-").lower(): value for name, value in environ.items()
                   if name.startswith("HTTP_")}
        refusal = guard(headers, environ.get("REMOTE_ADDR"))
        if refusal is None:
            return app(environ, start_response)
        status, body = refusal
        start_response(f"{status} {HTTPStatus(status).phrase}", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
            ("WWW-Authenticate", 'Bearer realm="lambent"')])
        return [body]
    return guarded
