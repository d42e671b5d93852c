"""Prometheus metrics (``prometheus-client``), fed by the observer hooks and served on /metrics.

Every family lives in a registry owned by one ``Metrics`` (no module-level state), together
with the library's process, platform and garbage-collector collectors.

With ``[pulsar] workers = N`` the supervisor sets ``PROMETHEUS_MULTIPROC_DIR`` before the
workers start (prometheus-client's multiprocess mode): every worker's counters, histograms and
``asrd_in_flight`` (summed over the live workers) go to files there, and worker 0's /metrics
serves ``MultiProcessCollector`` over all of them, so one endpoint counts for all workers.
``asrd_ready``, the intake's poll age, the ledger's gauges and ``asrd_leader`` are computed at
scrape time by worker 0 (the intake and the chores run there); the process collectors are left
out then (they would describe worker 0 alone).

Readiness across workers goes the same way: each worker keeps ``asrd_workers_ready`` at 1 while
it is subscribed and connected (a ``livesum`` gauge, so the supervisor's ``mark_process_dead``
drops a dead worker's file), and worker 0 is ready only while the sum over the live workers is
the configured count (``workers_ready``).
"""

from __future__ import annotations

import glob
import os
import time
from collections.abc import Callable, Iterator

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
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.registry import Collector

from .observers import Observer
from .vocabulary import (
    Action,
    MessageInfo,
    Outcome,
    ReconcileReport,
    Settlement,
    SweepReport,
    Verdict,
)

__all__ = ["CONTENT_TYPE_LATEST", "OPENMETRICS", "Metrics", "TraceOf"]

# What a scraper that sends ``Accept: application/openmetrics-text`` gets: the one format that
# carries exemplars.
OPENMETRICS = om_exposition.CONTENT_TYPE_LATEST

# The sampled trace id (32 hex digits) of a message's work, or of the work this thread is doing
# when given None; None when there is none (tracing off, or the trace not sampled).
TraceOf = Callable[[str | None], str | None]


def _no_trace(message_id: str | None) -> str | None:
    return None


# Seconds from a callback reaching the broker to the last selected sink having the record:
# sub-second when all is well, minutes while a sink or CI is retried.
LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 900, 3600)
OUTCOMES = ("done", "ignored", "retried", "dead_lettered", "kept", "paused")
# The outcome a settlement counts as; an acknowledgement counts as the verdict's (done, ignored).
# Put back without an attempt is "paused", whether for an outage or held for a sink not yet
# known to be down.
_SETTLED = {Action.RETRY: "retried", Action.DEAD_LETTER: "dead_lettered", Action.RELEASE: "paused"}
CI_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class _IntakeAge(Collector):
    """``asrd_intake_seconds_since_last_poll``, computed when scraped; absent until the intake
    starts (a process has one intake queue at most, hence no label)."""

    def __init__(self) -> None:
        self.last_ok: float | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.last_ok is not None:
            yield GaugeMetricFamily(
                "asrd_intake_seconds_since_last_poll",
                "Seconds since the intake's last successful poll of its CMQ queue (since its "
                "start before the first).",
                value=time.monotonic() - self.last_ok,
            )


class _Gauges(Collector):
    """Gauges read from elsewhere when scraped (the ledger's owed jobs): name → value, each
    exposed as ``asrd_<name>``."""

    def __init__(self, read: Callable[[], dict[str, float]]) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, value in sorted(self.read().items()):
            yield GaugeMetricFamily(f"asrd_{name}", _GAUGE_HELP.get(name, name), value=value)


_GAUGE_HELP = {
    "jobs_owed": "Jobs asrd submitted whose result some selected sink still lacks.",
    "jobs_overdue": "Owed jobs past their deadline.",
    "jobs_oldest_owed_age_seconds": "Age of the oldest owed job.",
    "deliveries_pending": "Callbacks begun and not yet settled for good, fleet-wide: in a "
    "worker's hands or waiting on the retry topic.",
}


class _Ready(Collector):
    """``asrd_ready``, computed when scraped (a collector, so it works in multiprocess mode)."""

    HELP = "1 when subscribed and connected to the broker."

    def __init__(self, ready: Callable[[], bool]) -> None:
        self.ready = ready

    def describe(self) -> Iterator[GaugeMetricFamily]:
        # Registering asks for the names; the daemon is not ready to be asked yet.
        yield GaugeMetricFamily("asrd_ready", self.HELP)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("asrd_ready", self.HELP, value=float(self.ready()))


class _Leader(Collector):
    """``asrd_leader{chore}``, computed when scraped: 1 for the chores this process leads."""

    HELP = "1 for each singleton chore (reconcile, deadline sweep, pruning) this process runs."

    def __init__(self) -> None:
        self.read: Callable[[], dict[str, bool]] = dict

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("asrd_leader", self.HELP, labels=["chore"])
        for chore, leads in sorted(self.read().items()):
            family.add_metric([chore], float(leads))
        yield family


def multiprocess_dir() -> str:
    """Where the workers of a supervisor keep their metrics ('' when one process serves)."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR", "")


class Metrics(Observer):
    def __init__(self, ready: Callable[[], bool] = lambda: False) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        # Tracing's lookup, set when tracing is on: the latency histograms' exemplars point at
        # the traces of the observed work (shown in the OpenMetrics exposition only).
        self.trace_of: TraceOf = _no_trace
        self._shared_dir = multiprocess_dir()
        if not self._shared_dir:
            ProcessCollector(registry=r)
            PlatformCollector(registry=r)
            GCCollector(registry=r)
        self.messages = Counter(
            "asrd_messages_total",
            "Messages settled, by outcome: done, ignored, retried, dead_lettered, kept "
            "(a retry or dead-letter publish failed; the broker keeps the message), paused "
            "(put back during an outage, its attempt not counted).",
            ["outcome"],
            registry=r,
        )
        for outcome in OUTCOMES:  # every outcome shows from the start, at 0
            self.messages.labels(outcome)
        self.deliveries = Counter(
            "asrd_deliveries_total",
            "Records handed to a sink, by sink and result (delivered, failed).",
            ["sink", "result"],
            registry=r,
        )
        self.latency = Histogram(
            "asrd_delivery_latency_seconds",
            "From the callback's arrival on the broker to every selected sink having the record.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ci_requests = Counter(
            "asrd_ci_requests_total",
            "Requests to CI/COS, by operation and status (ok, transient, permanent, error).",
            ["operation", "status"],
            registry=r,
        )
        self.audio = Counter(
            "asrd_audio_seconds",
            "Audio of the jobs settled (CI's AudioTime), by engine model and CI queue.",
            ["engine", "queue"],
            registry=r,
        )
        self.ci_duration = Histogram(
            "asrd_ci_request_duration_seconds",
            "Duration of requests to CI/COS, by operation.",
            ["operation"],
            buckets=CI_BUCKETS,
            registry=r,
        )
        self.in_flight = Gauge(
            "asrd_in_flight",
            "Messages received and not yet settled.",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._worker_ready = Gauge(
            "asrd_workers_ready",
            "Workers subscribed and connected to the broker (with [pulsar] workers: summed over "
            "the live workers).",
            registry=r,
            multiprocess_mode="livesum",
        )
        self._ready = _Ready(ready)
        self.dead_letters = Counter(
            "asrd_dead_letters_total", "Messages published to the dead-letter topic.", registry=r
        )
        self.reconciled = Counter(
            "asrd_reconciled_jobs_total",
            "Finished jobs whose callback never came, delivered by the reconciler.",
            registry=r,
        )
        self.reconcile_passes = Counter(
            "asrd_reconcile_passes_total", "Reconcile passes over finished jobs.", registry=r
        )
        self._moved = Counter(
            "asrd_intake_messages_moved_total",
            "Notifications moved from the CMQ queue to the Pulsar topic.",
            registry=r,
        )
        self.intake_lag_s = Gauge(
            "asrd_intake_lag_seconds",
            "At the intake's latest poll, how long the oldest notification it received had waited "
            "in the CMQ queue (0: the poll found none).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self._intake_errors = Counter(
            "asrd_intake_receive_errors_total", "Failed polls of the CMQ queue.", registry=r
        )
        self._produce_errors = Counter(
            "asrd_intake_produce_errors_total",
            "Notifications the intake could not put on Pulsar (left in CMQ, they come again).",
            registry=r,
        )
        self._delete_errors = Counter(
            "asrd_intake_delete_errors_total",
            "Moved notifications CMQ refused to delete (they come again as duplicates).",
            registry=r,
        )
        self._url_callbacks = Counter(
            "asrd_url_callbacks_total",
            "URL callbacks with a valid token, by result (accepted, broker_unavailable).",
            ["result"],
            registry=r,
        )
        for result in ("accepted", "broker_unavailable"):
            self._url_callbacks.labels(result)
        self._sweep = Counter(
            "asrd_deadline_sweep_jobs_total",
            "Overdue jobs the deadline sweep looked up, by result (delivered, unfinished, failed).",
            ["result"],
            registry=r,
        )
        for result in ("delivered", "unfinished", "failed"):
            self._sweep.labels(result)
        self._credentials_expiry = Gauge(
            "asrd_credentials_expiry_timestamp_seconds",
            "When the keys in use expire (Unix time); 0 for keys without expiry.",
            registry=r,
            multiprocess_mode="max",
        )
        self._credentials_refresh = Counter(
            "asrd_credentials_refresh_total",
            "Requests for keys to the credentials provider, by result (ok, error).",
            ["result"],
            registry=r,
        )
        for result in ("ok", "error"):
            self._credentials_refresh.labels(result)
        self._auth_failures = Counter(
            "asrd_auth_failures_total",
            "Requests refused for their keys, or not made for want of keys, by service "
            "(ci, cos, cmq, credentials).",
            ["service"],
            registry=r,
        )
        self._paused = Gauge(
            "asrd_paused",
            "1 while work is paused by an outage (refused keys, a sink down as a whole), "
            "by source.",
            ["source"],
            registry=r,
            multiprocess_mode="max",
        )
        self._intake_age = _IntakeAge()
        if not self._shared_dir:
            r.register(self._intake_age)
        self._gauges = _Gauges(dict)
        self._leader = _Leader()
        self._scraped: list[Collector] = [self._ready, self._intake_age, self._gauges, self._leader]
        if not self._shared_dir:
            r.register(self._gauges)
            r.register(self._ready)
            r.register(self._leader)

    @property
    def ready(self) -> Callable[[], bool]:
        return self._ready.ready

    @ready.setter
    def ready(self, read: Callable[[], bool]) -> None:
        self._ready.ready = read

    @property
    def gauges(self) -> Callable[[], dict[str, float]]:
        return self._gauges.read

    @gauges.setter
    def gauges(self, read: Callable[[], dict[str, float]]) -> None:
        self._gauges.read = read

    @property
    def leader(self) -> Callable[[], dict[str, bool]]:
        return self._leader.read

    @leader.setter
    def leader(self, read: Callable[[], dict[str, bool]]) -> None:
        self._leader.read = read

    def publish_ready(self, ready: bool) -> None:
        """This process's own readiness, where ``workers_ready`` (in worker 0) reads it."""
        self._worker_ready.set(float(ready))

    def workers_ready(self) -> int:
        """How many live workers last published that they are ready (from the shared
        directory; 0 without one)."""
        from prometheus_client.multiprocess import MultiProcessCollector

        if not self._shared_dir:
            return 0
        files = glob.glob(os.path.join(self._shared_dir, "gauge_livesum_*.db"))
        for family in MultiProcessCollector.merge(files, accumulate=False):  # type: ignore[no-untyped-call]
            if family.name == "asrd_workers_ready":
                return int(sum(sample.value for sample in family.samples))
        return 0

    def exposition(self) -> bytes:
        """The registry in the Prometheus text format (``CONTENT_TYPE_LATEST``); with workers,
        every worker's figures from the shared directory."""
        return generate_latest(self._served())

    def openmetrics(self) -> bytes:
        """The same figures in the OpenMetrics text format (``OPENMETRICS``), with exemplars.
        prometheus-client keeps no exemplars in its multiprocess files: with workers, none."""
        return om_exposition.generate_latest(self._served())  # type: ignore[no-untyped-call,no-any-return]

    def _served(self) -> CollectorRegistry:
        if not self._shared_dir:
            return self.registry
        from prometheus_client.multiprocess import MultiProcessCollector

        shared = CollectorRegistry()
        MultiProcessCollector(shared, path=self._shared_dir)  # type: ignore[no-untyped-call]
        for collector in self._scraped:
            shared.register(collector)
        return shared

    def _exemplar(self, message_id: str | None) -> dict[str, str] | None:
        trace = self.trace_of(message_id)
        return {"trace_id": trace} if trace else None

    # -- hooks ----------------------------------------------------------------------------
    def message_received(self, info: MessageInfo) -> None:
        self.in_flight.inc()

    def settled(self, info: MessageInfo, verdict: Verdict, settlement: Settlement) -> None:
        self.in_flight.dec()
        self.messages.labels(_SETTLED.get(settlement.action, verdict.outcome.value)).inc()
        if verdict.outcome is Outcome.DONE and verdict.delivered and info.published_ms > 0:
            self.latency.observe(
                max(time.time() - info.published_ms / 1000, 0.0),
                exemplar=self._exemplar(info.message_id),
            )

    def publish_failed(self, info: MessageInfo, settlement: Settlement, error: str) -> None:
        self.in_flight.dec()
        self.messages.labels("kept").inc()

    def dead_lettered(self, info: MessageInfo, reason: str) -> None:
        self.dead_letters.inc()

    def sink_delivered(self, sink: str, job_id: str, seconds: float) -> None:
        self.deliveries.labels(sink, "delivered").inc()

    def sink_failed(self, sink: str, job_id: str, error: str, permanent: bool) -> None:
        self.deliveries.labels(sink, "failed").inc()

    def audio_delivered(self, queue: str, engine: str, seconds: float) -> None:
        self.audio.labels(engine, queue).inc(seconds)

    def ci_call(self, operation: str, status: str, seconds: float) -> None:
        self.ci_requests.labels(operation, status).inc()
        self.ci_duration.labels(operation).observe(seconds, exemplar=self._exemplar(None))

    def reconcile_pass(self, report: ReconcileReport, seconds: float) -> None:
        self.reconcile_passes.inc()
        self.reconciled.inc(len(report.delivered))

    def deadline_sweep(self, report: SweepReport) -> None:
        self._sweep.labels("delivered").inc(len(report.delivered))
        self._sweep.labels("unfinished").inc(len(report.still_running))
        self._sweep.labels("failed").inc(len(report.failed))

    def intake_started(self, queue: str) -> None:
        self._intake_age.last_ok = time.monotonic()

    def intake_moved(self, queue: str, count: int) -> None:
        self._moved.inc(count)

    def intake_lag(self, queue: str, seconds: float) -> None:
        self.intake_lag_s.set(seconds)

    def intake_receive_error(self, queue: str, error: str) -> None:
        self._intake_errors.inc()

    def intake_poll_ok(self, queue: str) -> None:
        self._intake_age.last_ok = time.monotonic()

    def intake_produce_errors(self, queue: str, count: int) -> None:
        self._produce_errors.inc(count)

    def intake_delete_errors(self, queue: str, count: int) -> None:
        self._delete_errors.inc(count)

    def url_callback(self, accepted: bool) -> None:
        self._url_callbacks.labels("accepted" if accepted else "broker_unavailable").inc()

    def credentials_refreshed(self, provider: str, expires_at: float | None, error: str) -> None:
        self._credentials_refresh.labels("error" if error else "ok").inc()
        if not error:
            self._credentials_expiry.set(expires_at or 0.0)

    def auth_failed(self, service: str, cause: str) -> None:
        self._auth_failures.labels(service).inc()

    def outage_changed(self, source: str, reason: str) -> None:
        self._paused.labels(source).set(1.0 if reason else 0.0)
