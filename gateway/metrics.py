"""Prometheus metrics, one registry per app (tests build several apps in one process).

With ``serve --workers N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before the
workers import prometheus_client, which then keeps every value in a file per process there;
``make_metrics`` sees it and /metrics adds up the files of every worker (counters and
histograms of the workers a reload retired included, so a counter never goes down). Each
gauge says how its workers' values combine (``multiprocess_mode``, ignored in one process):
docs/reliability.md, "Metrics with several workers".
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import values as _values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

__all__ = ["Metrics", "make_metrics"]

_STAGE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064,
                  0.128, 0.256, 0.512, 1.0, 2.0, 5.0)
_LAT_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                60.0, 120.0)


class Metrics:
    def __init__(self) -> None:
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter("expertgate_requests", "Requests answered",
                                ["endpoint", "policy", "expert", "status"], registry=r)
        self.decisions = Counter("expertgate_decisions", "Routing decisions",
                                 ["policy", "expert", "mode"], registry=r)
        self.cache = Counter("expertgate_decision_cache", "Decision cache lookups",
                             ["result"], registry=r)
        self.stage = Histogram("expertgate_stage_seconds", "Time per pipeline stage",
                               ["stage"], buckets=_STAGE_BUCKETS, registry=r)
        self.latency = Histogram("expertgate_request_seconds", "Whole request latency",
                                 ["endpoint"], buckets=_LAT_BUCKETS, registry=r)
        self.upstream_errors = Counter("expertgate_upstream_errors", "Upstream failures",
                                       ["expert", "kind"], registry=r)
        self.fallbacks = Counter("expertgate_fallbacks", "Requests served by a fallback",
                                 ["policy", "reason"], registry=r)
        # one count per response that took a degraded path, per component named in its
        # x-expertgate-degraded header (a response with two components counts in both)
        self.degraded = Counter("expertgate_degraded",
                                "Responses that took a degraded path, by component",
                                ["component"], registry=r)
        # the HTTP layer's own answers before there is a request (connection cap, a head
        # too large, too slow or malformed): no request counter sees them
        self.http_refused = Counter("expertgate_http_refused",
                                    "Connections refused by the HTTP layer before a request "
                                    "(503 over the connection cap, 431, 408, 400)",
                                    ["status", "code"], registry=r)
        self.rejections = Counter("expertgate_rejections", "Rejected requests",
                                  ["policy", "reason"], registry=r)
        # a request (chat, embeddings, dry run) whose message named a media URL the
        # media_urls setting does not let an expert fetch (gateway/request/media.py)
        self.media_refused = Counter("expertgate_media_urls_refused",
                                     "Requests refused for a media URL in a message part, "
                                     "by why (loopback, private, link-local, scheme, ...)",
                                     ["reason"], registry=r)
        self.log_dropped = Counter("expertgate_log_records_dropped",
                                   "Routing-log records dropped (queue full, not "
                                   "serialisable, or not written by shutdown)", registry=r)
        # set when a worker answers a scrape: per worker (a pid label), the others' as of
        # the last scrape they answered
        self.log_queue = Gauge("expertgate_log_queue_depth",
                               "Routing-log records waiting to be written", registry=r,
                               multiprocess_mode="liveall")
        self.inflight = Gauge("expertgate_inflight_requests", "Requests in progress",
                              registry=r, multiprocess_mode="livesum")
        #: requests in progress, read when the gauge is scraped (a plain count on the request
        #: path instead of two locked gauge updates per request)
        self.inflight_now = 0
        self.inflight.set_function(lambda: self.inflight_now)
        # each worker has its own breakers, its own canary state and its own limiter backend:
        # per worker (a pid label), the series of a worker that exits removed with it
        self.circuit_open = Gauge("expertgate_circuit_open",
                                  "1 while a replica's circuit breaker is open",
                                  ["expert", "replica"], registry=r,
                                  multiprocess_mode="liveall")
        self.explored = Counter("expertgate_explored",
                                "Requests sent to an expert other than the router's choice "
                                "by the policy's exploration", ["policy", "expert"], registry=r)
        self.shadow = Counter("expertgate_shadow_decisions",
                              "Decisions of a shadow candidate router (logged, not served)",
                              ["policy", "agreement"], registry=r)
        self.canary_active = Gauge("expertgate_canary_active",
                                   "1 while a policy's canary serves its share of traffic",
                                   ["policy"], registry=r, multiprocess_mode="liveall")
        self.canary_reverts = Counter("expertgate_canary_reverts",
                                      "Canaries reverted automatically by the sequential test",
                                      ["policy", "signal"], registry=r)
        self.canary_shared = Gauge("expertgate_canary_shared",
                                   "1 while a policy's canary is tested on the counts of all "
                                   "processes (Redis), 0 while on this process's own",
                                   ["policy"], registry=r, multiprocess_mode="liveall")
        self.online_updates = Counter("expertgate_online_updates",
                                      "Router updates from /v1/feedback (online policies)",
                                      ["policy"], registry=r)
        self.tokens = Counter("expertgate_tokens", "Tokens reported by upstreams",
                              ["expert", "kind"], registry=r)
        self.guard_stage = Counter("expertgate_guard_stage",
                                   "Verdicts of a two-stage guard by the stage that decided "
                                   "(back: the front guard was unsure and the back encoder "
                                   "ran)", ["policy", "stage"], registry=r)
        # POST /admin/reload and SIGHUP alike; a failed one kept the running configuration
        self.reloads = Counter("expertgate_config_reloads",
                               "Configuration reloads by result (failed: the running "
                               "configuration was kept)", ["result"], registry=r)
        for result in ("ok", "failed"):  # both series from the start: a rate needs a zero
            self.reloads.labels(result)
        #: (expert, calls holding one of its max_concurrency slots) of the running
        #: configuration's pool, read when /metrics is scraped (set by the dispatcher when
        #: it goes into service): no gauge update on the request path
        self.upstream_inflight_source: Callable[[], list[tuple[str, int]]] | None = None
        r.register(_UpstreamInflight(self))

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, memoised: the hot path skips prometheus' lock + lookup.
        Label values come from the config (policies, experts) and fixed sets, so the memo is
        bounded."""
        key = (id(metric), values)
        c = self._children.get(key)
        if c is None:
            c = self._children[key] = metric.labels(*values)
        return c

    def sync_circuits(self, open_now: dict[tuple[str, str], bool]) -> None:
        """Make ``expertgate_circuit_open`` describe exactly the replicas of ``open_now``
        ((expert, replica) -> open), read when /metrics is scraped: a replica a reload
        removed (or one an old dispatcher's late call set) loses its series rather than
        keeping its last value for ever."""
        g = self.circuit_open
        for (expert, replica), is_open in open_now.items():
            self.child(g, expert, replica).set(1.0 if is_open else 0.0)
        self.keep_only(g, set(open_now))

    def keep_only(self, metric: Any, keep: set[tuple[str, ...]]) -> None:
        """Remove ``metric``'s series whose label values are not in ``keep`` (what a reload
        took away: a policy, a replica), so none keeps its last value for ever."""
        names = metric._labelnames  # prometheus_client keeps them only there
        for fam in metric.collect():
            for sample in fam.samples:
                key = tuple(sample.labels[n] for n in names)
                if key not in keep:
                    metric.remove(*key)
                    # the memo would hand out the removed child, which nothing renders
                    self._children.pop((id(metric), key), None)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MultiProcessMetrics(Metrics):
    """``Metrics`` of one worker of several: values in prometheus_client's files per process,
    rendered added up over the workers. In-flight requests are written to this worker's file
    as they change (each worker's count, summed over the live ones); the other gauges as in
    ``Metrics``, each with its ``multiprocess_mode``."""

    def __init__(self) -> None:
        self._inflight_now = 0
        super().__init__()
        view = self.view = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(view)  # reads PROMETHEUS_MULTIPROC_DIR, as the values do
        # computed at scrape time in the answering worker only: its own, with its pid
        view.register(_UpstreamInflight(self, pid=str(os.getpid())))

    @property
    def inflight_now(self) -> int:
        return self._inflight_now

    @inflight_now.setter
    def inflight_now(self, n: int) -> None:
        self._inflight_now = n
        self.inflight.set(n)  # a scrape answered by another worker reads it from the file

    def render(self) -> bytes:
        return generate_latest(self.view)


def make_metrics() -> Metrics:
    """``MultiProcessMetrics`` when prometheus_client keeps its values in files per process
    (it was imported with ``PROMETHEUS_MULTIPROC_DIR`` set: ``serve --workers N``), else
    ``Metrics``: one process renders its own registry, as it always did."""
    if getattr(_values.ValueClass, "_multiprocess", False):
        return MultiProcessMetrics()
    return Metrics()


class _UpstreamInflight:
    """``expertgate_upstream_inflight{expert}``: calls to an expert in progress, a stream
    until its end (what the expert's ``max_concurrency`` bounds; requests waiting for a
    slot are not counted). With several workers, the answering worker's own, labelled with
    its ``pid`` (each worker has its own slots)."""

    def __init__(self, metrics: Metrics, pid: str | None = None) -> None:
        self.metrics = metrics
        self.pid = pid

    def collect(self) -> Iterator[GaugeMetricFamily]:
        g = GaugeMetricFamily("expertgate_upstream_inflight",
                              "Calls to an expert in progress (a stream until its end), "
                              "each holding one of its max_concurrency slots",
                              labels=["expert"] if self.pid is None else ["expert", "pid"])
        source = self.metrics.upstream_inflight_source
        for expert, n in source() if source is not None else ():
            g.add_metric([expert] if self.pid is None else [expert, self.pid], n)
        yield g
