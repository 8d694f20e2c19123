"""Prometheus metrics. Names and labels are a fixed contract (dashboards and alerts in
deploy/ are written against them): change them only together with those.

Each app instance owns a `CollectorRegistry`, so several apps in one process (tests)
never collide on registration. Metrics are per process: run one uvicorn process per
replica and let Prometheus aggregate across replicas. The registry also carries the
standard process_* (memory, CPU, file descriptors; Linux), python_info and python_gc_*
collectors, which the default global registry would have had.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                    30.0, 60.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)
_ACCEPTANCE_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.574, 0.6, 0.7, 0.8, 0.9, 0.95, 1.0)

CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """All meg_ metrics, registered on one registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.requests = Counter("meg_requests_total", "HTTP requests by route, model and status",
                                ["endpoint", "model", "status"], registry=r)
        self.request_duration = Histogram(
            "meg_request_duration_seconds", "HTTP request latency", ["endpoint", "model"],
            buckets=_LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("meg_requests_in_flight", "HTTP requests being served", registry=r)
        # gRPC (Open Inference Protocol) calls: method = the RPC's name, code = its status.
        self.grpc_requests = Counter("meg_grpc_requests_total",
                                     "gRPC calls by method, model and status code",
                                     ["method", "model", "code"], registry=r)
        self.grpc_duration = Histogram("meg_grpc_request_duration_seconds", "gRPC call latency",
                                       ["method", "model"], buckets=_LATENCY_BUCKETS, registry=r)
        self.batch_size = Histogram("meg_batch_size", "rows per inference call",
                                    ["model", "op"], buckets=_BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("meg_queue_depth", "requests waiting in the batch queue",
                                 ["model", "op"], registry=r)
        self.queue_wait = Histogram("meg_queue_wait_seconds", "time a request waits to be batched",
                                    ["model", "op"], buckets=_LATENCY_BUCKETS, registry=r)
        self.inference_duration = Histogram(
            "meg_inference_duration_seconds", "one inference call (a whole batch)",
            ["model", "op", "backend"], buckets=_LATENCY_BUCKETS, registry=r)
        self.samples = Counter("meg_samples_total", "samples generated", ["model", "mcmc"],
                               registry=r)
        self.mala_acceptance = Histogram("meg_mala_acceptance", "mean MALA acceptance per request",
                                         ["model"], buckets=_ACCEPTANCE_BUCKETS, registry=r)
        self.anomaly_scored = Counter("meg_anomaly_scored_total", "rows scored by /anomaly",
                                      ["model"], registry=r)
        self.anomalies_flagged = Counter("meg_anomalies_flagged_total",
                                         "rows flagged as anomalies", ["model"], registry=r)
        self.model_info = Gauge("meg_model_info", "loaded models (value 1)",
                                ["model", "version", "provider", "device"], registry=r)
        # Read at scrape time from meg_model_info, which the model registry sets on every
        # load and removes on every unload: one source of truth, nothing else to update.
        # 0 on a replica that is up means it serves nothing (alert MegNoModelLoaded).
        self.models_loaded = Gauge("meg_models_loaded", "number of models being served",
                                   registry=r)
        self.models_loaded.set_function(self._count_models)
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def _count_models(self) -> float:
        return float(sum(1 for fam in self.model_info.collect() for _ in fam.samples))

    def exposition(self) -> bytes:
        """The Prometheus text format of every metric in this registry."""
        return generate_latest(self.registry)
