"""Every Prometheus metric of the daemon, on an injected registry.

Base units (seconds, bytes), `_total` counters, and never a call id as a label: call ids go
into exemplars (OpenMetrics exposition) and logs. Histogram bucket edges sit at the thresholds
an operator would put in an SLO (20 ms chunk latency, 2.5 s result latency, 5 s alert latency).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from daemon import __version__

#: Audio received → chunk written to the upstream stream (SLO edge at 20 ms).
CHUNK_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.1, 0.25, 0.5, 1.0)
#: Chunk written → result read. A segment result needs 2 s of audio, so this is mostly upstream time.
RESULT_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5, 3.0, 5.0, 10.0)
#: One garbage collection: the event loop stands still meanwhile, so these edges match chunk latency's.
GC_PAUSE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
#: Result read → webhook 2xx.
ALERT_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0)


#: OpenMetrics caps an exemplar's label names and values at 128 characters in all.
EXEMPLAR_MAX_CHARS = 128
#: Chunk latency gets an exemplar only above this: the slow chunks are the ones worth tracing to a call.
CHUNK_EXEMPLAR_OVER_S = 0.01


def exemplar(**labels: str) -> dict[str, str]:
    """Exemplar labels (e.g. call_id) cut to fit the OpenMetrics limit: a long id must never turn an
    observation into an exception."""
    out: dict[str, str] = {}
    room = EXEMPLAR_MAX_CHARS
    for name, value in labels.items():
        room -= len(name)
        if room <= 0:
            break
        out[name] = value[:room]
        room -= len(out[name])
    return out


#: `[daemon] capacity_calls` until the daemon sets its own (the default there)
DEFAULT_CAPACITY_CALLS = 200


def gauge_total(gauge: Gauge) -> float:
    """The sum of a gauge's series (e.g. calls_active over every ingest)."""
    return sum(s.value for family in gauge.collect() for s in family.samples)


class Metrics:
    """One instance per daemon (tests make their own with a fresh registry)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry(auto_describe=True)
        self.registry = r
        p = "spoofwatch"
        self.build_info = Info(f"{p}_build", "Build information", registry=r)
        self.build_info.info({"version": __version__})

        # calls and legs
        self.calls_active = Gauge(f"{p}_calls_active", "Calls in progress", ["ingest"], registry=r)
        self.legs_active = Gauge(f"{p}_legs_active", "Analysed legs in progress", ["ingest"], registry=r)
        self.calls = Counter(f"{p}_calls", "Calls ended, by outcome (alerted, clean, unanalysed, error)",
                             ["ingest", "outcome"], registry=r)
        self.calls_refused = Counter(f"{p}_calls_refused", "Calls refused at admission, by reason",
                                     ["ingest", "reason"], registry=r)
        self.capacity_headroom = Gauge(f"{p}_capacity_headroom", "1 - calls_active / [daemon] capacity_calls: how "
                                       "far this process is from its measured knee (0 at the knee, below 0 past it)",
                                       registry=r)
        self.set_capacity(DEFAULT_CAPACITY_CALLS)

        # audio in
        self.frames_in = Counter(f"{p}_frames_received", "Media frames/packets received", ["ingest"], registry=r)
        self.audio_in_seconds = Counter(f"{p}_audio_received_seconds", "Seconds of leg audio received",
                                        ["ingest"], registry=r)
        self.gap_fill_seconds = Counter(f"{p}_gap_fill_seconds",
                                        "Seconds of silence inserted for audio the sender lost",
                                        ["ingest"], registry=r)
        self.drops = Counter(f"{p}_drops", "Input or audio dropped, by where and why",
                             ["ingest", "reason"], registry=r)
        self.ingest_lag_seconds = Counter(f"{p}_ingest_lag_seconds",
                                          "Seconds media arrived later than its own timestamps imply (our socket "
                                          "or the network stalled; nothing lost, nothing filled)",
                                          ["ingest"], registry=r)
        self.chunks = Counter(f"{p}_chunks_sent", "250 ms chunks written to upstream streams", registry=r)
        self.rtp_packets_lost = Counter(f"{p}_rtp_packets_lost", "RTP packets missing at playout",
                                        registry=r)
        self.rtp_ports_usable = Gauge(f"{p}_rtp_ports_usable", "RTP ports (each with its RTCP port+1) bound at "
                                      "start; ports of the range that were taken are not counted", registry=r)

        # upstream
        self.upstream_streams_active = Gauge(f"{p}_upstream_streams_active", "Open DeepfakeDetection streams",
                                             registry=r)
        self.upstream_streams = Counter(f"{p}_upstream_streams_opened", "DeepfakeDetection streams opened",
                                        registry=r)
        self.upstream_errors = Counter(f"{p}_upstream_errors", "Upstream stream errors by gRPC status code",
                                       ["code"], registry=r)
        self.upstream_reconnects = Counter(f"{p}_upstream_reconnects", "Streams reopened after an error",
                                           registry=r)
        self.upstream_replayed_chunks = Counter(f"{p}_upstream_replayed_chunks",
                                                "Chunks replayed to a reopened stream", registry=r)
        self.upstream_up = Gauge(f"{p}_upstream_up", "1 while upstream is healthy, 0 while degraded",
                                 registry=r)
        self.upstream_simulated = Gauge(f"{p}_upstream_simulated",
                                        "1 when upstream is the built-in simulator (results are not real "
                                        "detections)", registry=r)
        self.breaker_open = Gauge(f"{p}_upstream_breaker_open", "Channels whose circuit breaker is open",
                                  registry=r)
        self.results = Counter(f"{p}_results", "deepfake results read, by label and level",
                               ["label", "level", "simulated"], registry=r)
        self.legs_unanalysed = Counter(f"{p}_legs_unanalysed", "Legs that ended without upstream analysis",
                                       registry=r)

        # latency
        self.chunk_latency = Histogram(f"{p}_chunk_latency_seconds",
                                       "Last sample of a chunk received → chunk written to its stream",
                                       buckets=CHUNK_LATENCY_BUCKETS, registry=r)
        self.result_latency = Histogram(f"{p}_result_latency_seconds",
                                        "Last chunk of a result's span written → result read",
                                        buckets=RESULT_LATENCY_BUCKETS, registry=r)
        self.alert_latency = Histogram(f"{p}_alert_latency_seconds",
                                       "Deciding result read → webhook answered 2xx",
                                       buckets=ALERT_LATENCY_BUCKETS, registry=r)

        # alerts and delivery
        self.alerts = Counter(f"{p}_alerts", "Events committed to the outbox, by type", ["type"], registry=r)
        self.webhook_attempts = Counter(f"{p}_webhook_attempts",
                                        "Webhook delivery attempts by outcome (delivered, http_error, "
                                        "redirect, timeout, connect_error, gone)", ["outcome"], registry=r)
        self.outbox_pending = Gauge(f"{p}_outbox_pending", "Deliveries waiting in the outbox", registry=r)
        self.outbox_dead = Gauge(f"{p}_outbox_dead_letters", "Deliveries that exhausted their retries",
                                 registry=r)
        self.endpoint_disabled = Gauge(f"{p}_webhook_endpoint_disabled",
                                       "1 when an endpoint was disabled (410 Gone)", ["endpoint"], registry=r)

        # process
        self.ready = Gauge(f"{p}_ready", "1 while the daemon accepts calls", registry=r)
        self.gc_pause = Histogram(f"{p}_gc_pause_seconds", "Garbage collections (the event loop stalls meanwhile)",
                                  ["generation"], buckets=GC_PAUSE_BUCKETS, registry=r)
        self.config_reloads = Counter(f"{p}_config_reloads", "SIGHUP reloads by result", ["result"],
                                      registry=r)
        # supervision (daemon.ops.supervise) and outbox faults
        self.task_restarts = Counter(f"{p}_task_restarts", "Supervised long-lived tasks restarted after a failure",
                                     ["task"], registry=r)
        self.task_up = Gauge(f"{p}_task_up", "1 while a supervised task runs, 0 while it waits to be restarted",
                             ["task"], registry=r)
        self.outbox_held = Gauge(f"{p}_outbox_held_events", "Events the outbox could not commit yet, held in "
                                 "memory and retried (lost on a crash until committed)", registry=r)
        self.outbox_write_errors = Counter(f"{p}_outbox_write_errors", "Outbox writes that failed and will be "
                                           "retried, by operation (commit, mark, register, purge)", ["operation"],
                                           registry=r)

    def set_capacity(self, capacity_calls: int) -> None:
        """`spoofwatch_capacity_headroom` is computed at each scrape against this many calls."""
        calls = self.calls_active
        self.capacity_headroom.set_function(lambda: 1.0 - gauge_total(calls) / capacity_calls)
