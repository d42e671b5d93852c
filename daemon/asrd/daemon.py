"""The daemon as one object: what ``asrd run`` and ``asrd intake`` start, built from the settings
and the process's role.

- ``Role.PRIMARY``: the only process. It consumes and delivers, and also runs the intake, the
  sidecar API and the singleton chores (reconcile, deadline sweep, pruning; with a PostgreSQL
  ledger only while it leads them).
- ``Role.worker(i, n)``: one of ``n`` processes started by the supervisor (``[pulsar] workers``).
  Worker 0 is primary as above; the others only consume and deliver, and publish their
  readiness for worker 0's ``/readyz``.
- ``Role.INTAKE_ONLY``: the intake and the API (submission, job lookup), no consumer and no
  sinks, for operators who run the intake apart from the consumers.

``start()`` builds what the role uses and starts its threads; ``stop()`` asks it to wind down
(any thread may call it); ``wait()`` returns once it has. ``run_until_signalled()`` is the whole
life of a service process: SIGTERM/SIGINT stop it (``shutdown``).
"""

from __future__ import annotations

import gc
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import pulsar
import structlog

from . import __version__, cli_submit, clock, observability, pulsar_check, systemd, tracing, wiring
from .api import ApiContext, ApiServer, serve
from .broker import make_client
from .ci import CiClient, service_url
from .config import ConfigError, PulsarSettings, Settings
from .console import ConsoleContext
from .consumer import Consumer
from .hourly import HourlyFigures
from .intake.feeds import Feeds
from .intake.queue import QueueIntake
from .jobs import JobService, job_gauges, sweep_overdue
from .leadership import CHORES, Leadership
from .ledger import Ledger, LedgerUnavailable
from .log_observer import LogObserver
from .metrics import Metrics, multiprocess_dir
from .observers import Observers
from .outage import Outage
from .periodic import every
from .pipeline import KEYS, REFUSED, Outcome, Pipeline
from .preflight import check_writable
from .reconcile import Report, reconcile
from .services import Services
from .shutdown import Shutdown
from .sinks import build_routes
from .sinks.breaker import Breaker
from .sinks.routing import Route, Router
from .submit import Submitter
from .supervisor import Supervisor, worker_command
from .timeline_observer import TimelineObserver
from .worker import Worker

__all__ = ["Daemon", "Role", "Stages", "build_stages", "supervise"]

log = structlog.get_logger("asrd")


@dataclass(frozen=True)
class Role:
    """What one process of a deployment does (see the module's docstring)."""

    consumes: bool = True  # the consumer, the pipeline and the sinks
    index: int | None = None  # the worker's number under the supervisor
    workers: int = 1  # how many workers the supervisor runs

    PRIMARY: ClassVar[Role]
    INTAKE_ONLY: ClassVar[Role]

    @classmethod
    def worker(cls, index: int, workers: int) -> Role:
        return cls(index=index, workers=workers)

    @property
    def primary(self) -> bool:
        """Runs the intake, the API and the chores: the only process, or worker 0."""
        return not self.index


Role.PRIMARY = Role()
Role.INTAKE_ONLY = Role(consumes=False)


# -- what delivers: the daemon and a one-off reconcile alike -------------------------------------
@dataclass
class Stages:
    """The CI client, the sinks, the ledger and the pipeline over them."""

    ci: CiClient
    routes: list[Route]
    ledger: Ledger
    observers: Observers
    pipeline: Pipeline

    def reconcile(self, lookback_s: float, grace_s: float) -> Report:
        return reconcile(
            self.ci,
            self.pipeline,
            self.ci.queue_id(),  # configured, or the bucket's queue looked up once
            lookback_s,
            grace_s,
            observers=self.observers,
        )

    def close(self) -> None:
        for route in self.routes:
            route.sink.close()
        self.ledger.close()


def _pulsar_limits(settings: Settings) -> tuple[int, int]:
    """The largest callback body and the sink breaker's threshold: ``[pulsar]``'s, or their
    defaults for a command that reads nothing from the broker (``asrd reconcile``)."""
    pulsar_settings = settings.pulsar_section
    if pulsar_settings is None:
        fields = PulsarSettings.model_fields
        return fields["max_message_bytes"].default, fields["sink_breaker_failures"].default
    return pulsar_settings.max_message_bytes, pulsar_settings.sink_breaker_failures


def build_stages(settings: Settings, observers: Observers) -> Stages:
    check_writable(settings)
    ci = CiClient(settings.ci, observers=observers)
    try:
        routes = build_routes(settings, Services(ci, observers))
        ledger = cli_submit.open_ledger(settings)
    except OSError as exc:
        raise ConfigError(f"config error: cannot prepare {exc.filename}: {exc.strerror}") from None
    max_bytes, breaker_failures = _pulsar_limits(settings)
    pipeline = Pipeline(ci, Router(routes), ledger, observers, max_bytes, Breaker(breaker_failures))
    return Stages(ci, routes, ledger, observers, pipeline)


def supervise(settings: Settings, config_path: str) -> int:
    """``asrd run`` with ``[pulsar] workers`` > 1: start and watch that many worker processes."""
    workers = settings.pulsar.workers
    if settings.ledger.is_sqlite:
        log.warning(
            "workers share one SQLite ledger: duplicates are still delivered at most once, but "
            "SQLite takes one writer at a time, so ledger writes do not scale with workers; "
            "use a postgresql:// ledger to scale",
            workers=workers,
        )
    return Supervisor(
        workers, worker_command(config_path), settings.pulsar.shutdown_deadline_s
    ).run()


def _no_probe() -> None:
    """The probe of a source that has none: it passes, and the next messages try again."""


def _settle_heap() -> None:
    """What start-up built lives as long as the process: out of the collector's way (``freeze``),
    and collections rarer than CPython's default, which allocates past 700 objects per message
    batch and spent ~6% of a busy daemon's CPU walking the same long-lived objects."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _redeliverer(pipeline: Pipeline) -> Callable[[str], tuple[bool, str]]:
    def redeliver(job_id: str) -> tuple[bool, str]:
        verdict = pipeline.deliver_jobs([job_id])[job_id]
        return verdict.outcome is Outcome.DONE, verdict.reason

    return redeliver


class Daemon:
    """One process of asrd, as its ``role`` says. No thread starts before ``start()``: signal
    handling (``run_until_signalled``) must be in place before the first one."""

    def __init__(self, settings: Settings, role: Role = Role.PRIMARY) -> None:
        self.settings = settings
        self.role = role
        self._stop = threading.Event()
        self._shutdown: Shutdown | None = None
        self._logs = LogObserver()
        self.metrics = Metrics(ready=self._ready)
        self.hourly = HourlyFigures()  # the console's intake and CI charts
        self.observers = Observers([self._logs, self.metrics, self.hourly])
        self.outage = Outage(self.observers, stop=self._stop)
        # Built by start(), as the role needs them.
        self._ci: CiClient | None = None
        self._ledger: Ledger | None = None
        self._stages: Stages | None = None
        self._client: pulsar.Client | None = None
        self._consumer: Consumer | None = None
        self._worker: Worker | None = None
        self._sinks: dict[str, object] = {}
        self._sink_names: frozenset[str] = frozenset()
        self._submitter: Submitter | None = None
        self._feeds: Feeds | None = None
        self._api: ApiServer | None = None
        self._leader: Leadership | None = None
        self._chores: list[threading.Thread] = []
        self._loop: threading.Thread | None = None
        self._timeline: TimelineObserver | None = None
        self._closed = False

    # -- life -------------------------------------------------------------------------------
    def run_until_signalled(self) -> None:
        """Start, serve until SIGTERM/SIGINT (or ``stop()``), wind down. A daemon stuck past the
        shutdown deadline is ended by the signal thread (``Shutdown``)."""
        # Before any thread exists (the broker client starts some): they inherit the signal mask.
        self._shutdown = Shutdown(self.settings.pulsar.shutdown_deadline_s, stop=self._stop)
        self._shutdown.install()
        self.start()
        self.wait()
        self._shutdown.finished()
        sys.stderr.flush()

    def start(self) -> None:
        if self.role.index is not None:
            observability.bind_process(worker=self.role.index)
        self._build()
        self._launch()

    def _build(self) -> None:
        """What the role uses, in the order its problems are best reported (config first)."""
        if self.role.consumes:
            self._build_delivery()
        else:
            self._build_intake_side()
        self._pulsar_preflight()
        self._client = make_client(self.settings.pulsar)
        if self.role.consumes:
            self._build_consumer(self._client)
        if self.role.primary:
            self._serve(self._client)

    def _launch(self) -> None:
        self._start_chores()
        if self.role.consumes:
            self._log_start()
        if self._feeds is not None:
            self._feeds.start(self._stop)
        if self.role.consumes:
            self._start_consuming()
        else:
            systemd.notify("READY=1")

    def stop(self) -> None:
        """Ask the daemon to wind down; ``wait()`` returns once it has."""
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the daemon has stopped and closed what it built (False: ``timeout``
        passed first). The consumer drains its in-flight messages within the deadline."""
        if self._loop is not None:
            self._loop.join(timeout)
            if self._loop.is_alive():
                return False
        elif not self._stop.wait(timeout):
            return False
        self._close()
        return True

    # -- building -----------------------------------------------------------------------------
    def _build_delivery(self) -> None:
        self._stages = stages = build_stages(self.settings, self.observers)
        self._ci, self._ledger = stages.ci, stages.ledger
        self._sinks = {route.sink.name: route.sink for route in stages.routes}
        self._sink_names = frozenset(self._sinks)
        stages.pipeline.sink_paused = lambda name: self.outage.paused(name)
        stages.ci.credentials.observers.add(self.metrics)  # refreshes, and refused keys
        self._add_timeline(stages.ledger)
        if self.role.primary:
            self.metrics.gauges = lambda: job_gauges(stages.ledger)

    def _build_intake_side(self) -> None:
        settings = self.settings
        self._ci = CiClient(settings.ci, observers=self.observers)
        self._ci.credentials.observers.add(self.metrics)
        # A job submitted here is owed like any other.
        self._ledger = ledger = cli_submit.open_ledger(settings)
        self._add_timeline(ledger)
        self.metrics.gauges = lambda: job_gauges(ledger)

    def _add_timeline(self, ledger: Ledger) -> None:
        """Callbacks moved and failed attempts, in the jobs' timelines; and the jobs' traces."""
        self._timeline = TimelineObserver(ledger)
        self.observers.add(self._timeline)
        tracers = tracing.observers(ledger)  # none unless OTEL_* asks (docs/tracing.md)
        for tracer in tracers:
            self.observers.add(tracer)
        self.metrics.trace_of = tracing.trace_lookup(tracers)  # the histograms' exemplars

    def _pulsar_preflight(self) -> None:
        """A refused certificate or token stops start-up with one line; warnings are logged."""
        for warning in pulsar_check.warnings(self.settings.pulsar):
            log.warning(warning)
        pulsar_check.preflight(self.settings.pulsar)

    def _build_consumer(self, client: pulsar.Client) -> None:
        stages = self._stages
        assert stages is not None
        self._consumer = consumer = Consumer(
            self.settings.pulsar,
            client=client,
            on_ready=lambda: systemd.notify("READY=1"),
            on_receive_error=self.observers.receive_failed,
            # The intake's own pause (CMQ) does not stop what is already on the topic.
            paused=lambda: self._stopped(but=(QueueIntake.SOURCE,)),
        )
        self._worker = Worker(
            self.settings.pulsar,
            stages.pipeline.handle_batch,
            stages.ledger,
            consumer,
            self.observers,
            on_pause=self._pause,
        )
        if self._shutdown is not None:
            self._shutdown.busy = lambda: consumer.health.subscribed

    def _serve(self, client: pulsar.Client) -> None:
        """The intake and the sidecar API (the primary's, or the intake's alone)."""
        settings, ci, ledger = self.settings, self._ci, self._ledger
        assert ci is not None and ledger is not None
        self._feeds = feeds = Feeds.build(settings, client, self.observers, self.outage)
        self._submitter = submitter = cli_submit.make_submitter(
            settings, ci, ledger, stop=self._stop, observers=self.observers
        )
        pipeline = self._stages.pipeline if self._stages is not None else None
        self._api = _serve_api(settings, self._api_context(feeds, submitter, pipeline))

    def _api_context(
        self, feeds: Feeds, submitter: Submitter, pipeline: Pipeline | None
    ) -> ApiContext:
        """What the sidecar API serves; without a ``pipeline`` (the intake alone) the console
        cannot redeliver."""
        settings, ci, ledger = self.settings, self._ci, self._ledger
        assert ci is not None and ledger is not None
        return ApiContext(
            ci,
            settings.ci,
            self.metrics.ready,
            self.metrics.exposition,
            callbacks=feeds.url,
            ledger=ledger,
            jobs=JobService(submitter, ledger),
            not_ready=self.outage.reason,
            openmetrics=self.metrics.openmetrics,
            console=ConsoleContext(
                ledger,
                ci,
                settings.pulsar,
                sinks=[sink.name for sink in settings.sinks],
                actions=settings.http.console_actions,
                max_replays=settings.dlq.max_replays,
                prices=settings.usage,
                redeliver=_redeliverer(pipeline) if pipeline is not None else None,
                hourly=self.hourly,
            ),
        )

    # -- running ----------------------------------------------------------------------------
    def _start_chores(self) -> None:
        systemd.start_watchdog(self._loop_alive(), self._stop)
        if self.role.consumes:
            self._chores = self._consumer_chores()
        if self._leader is not None:
            self._leader.start(self._stop)

    def _loop_alive(self) -> Callable[[], bool]:
        """What the systemd watchdog checks: the consumer's loop, or the intake's."""
        if self._consumer is not None:
            health = self._consumer.health
            return systemd.loop_alive(lambda: health.last_tick, 30.0)
        assert self._feeds is not None and self._feeds.queue is not None  # intake.cmq: checked
        queue_health = self._feeds.queue.health
        return systemd.loop_alive(lambda: queue_health.last_tick, 90.0)

    def _consumer_chores(self) -> list[threading.Thread]:
        stop, consumer = self._stop, self._consumer
        assert consumer is not None
        # Each process's own readiness, for worker 0 to add up (about as fresh as the
        # consumer's connection check, once a second). A worker paused by an outage is not
        # ready either: worker 0's /readyz counts it out.
        chores = [
            every(
                0.5,
                stop,
                lambda: self.metrics.publish_ready(consumer.health.ready and not self._stopped()),
                "readiness",
            )
        ]
        if self.role.primary:
            chores += self._singleton_chores()
        return chores

    def _singleton_chores(self) -> list[threading.Thread]:
        """Pruning, reconcile and the deadline sweep: one process of the fleet runs each (the
        other primaries' timers tick and do nothing)."""
        settings, stop, stages = self.settings, self._stop, self._stages
        assert stages is not None and self._submitter is not None
        ledger, rc = stages.ledger, settings.reconcile
        self._leader = leader = Leadership(CHORES, ledger.lock_sessions(), True)
        self.metrics.leader = leader.gauges
        retention_s = settings.ledger.retention_days * 86_400
        prune = leader.only_leader("prune_ledger", lambda: ledger.prune(retention_s))
        chores = [every(6 * 3600.0, stop, prune, "prune-ledger", first_s=60.0)]
        if rc.interval_s > 0:
            passes = leader.only_leader(
                "reconcile", lambda: stages.reconcile(rc.lookback_s, rc.grace_s)
            )
            chores.append(every(rc.interval_s, stop, passes, "reconcile"))
        if rc.sweep_interval_s > 0:
            lookup = self._submitter.lookup
            sweep = leader.only_leader(
                "deadline_sweep",
                lambda: sweep_overdue(
                    stages.ci,
                    stages.pipeline,
                    ledger,
                    lookup,
                    self.observers,
                    settings.ci.get_batch_size,
                ),
            )
            chores.append(every(rc.sweep_interval_s, stop, sweep, "deadline-sweep"))
        return chores

    def _log_start(self) -> None:
        log.info("asrd starting", version=__version__, sinks=list(self._sinks))
        if self.role.primary:
            for note in wiring.notes(self.settings):
                if note.warning:
                    log.warning(note.text)

    def _start_consuming(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        _settle_heap()
        worker = self._worker
        assert worker is not None
        self._loop = threading.Thread(
            target=consumer.run,
            args=(self._stop, worker.process_batch),
            name="asrd-consumer",
            daemon=True,  # one stuck past the deadline must not hold the exit
        )
        self._loop.start()

    def _close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._stop.set()  # the intake and the chores stop with the consumer
        systemd.notify("STOPPING=1")
        self._stop_serving()
        self._release()
        what = "asrd stopped" if self.role.consumes else "asrd intake stopped"
        log.info(what, counters=self._logs.counters.snapshot())
        observability.unbind_process("worker")

    def _stop_serving(self) -> None:
        """The API, the intake and the chores, before what they use is closed."""
        if self._api is not None:
            self._api.shutdown()
        if self._feeds is not None:
            self._feeds.stop()
        for chore in self._chores:
            chore.join(timeout=self.settings.pulsar.shutdown_deadline_s)
        if self._leader is not None:
            self._leader.stop()

    def _release(self) -> None:
        if self._timeline is not None:
            self._timeline.drain()  # the steps observed so far, before the ledger closes
        if self._stages is not None:
            self._stages.close()
        elif self._ledger is not None:
            self._ledger.close()
        if self._client is not None:
            self._client.close()

    # -- state the probes and the consumer read -------------------------------------------------
    def _ready(self) -> bool:
        intake = self._feeds is None or self._feeds.reachable(self.settings)
        return self._subscribed() and intake and not self._stopped()

    def _subscribed(self) -> bool:
        """With workers, /readyz (worker 0's) and asrd_ready wait for every one of them."""
        if not self.role.consumes:
            return True
        if self.role.workers > 1 and multiprocess_dir():
            return self.metrics.workers_ready() >= self.role.workers
        return self._consumer is not None and self._consumer.health.ready

    def _stopped(self, but: tuple[str, ...] = ()) -> bool:
        """A paused sink alone keeps the daemon ready and consuming (the others still work)."""
        return self.outage.stops_work(self._sink_names, but)

    def _pause(self, source: str, reason: str) -> None:
        """A message met an outage: consumption pauses until a probe passes. Refused keys are
        probed with a CI request; anything else (a sink) with the next messages after a wait."""
        assert self._ci is not None and self._ledger is not None
        keys = self._ci.credentials
        # A source without a probe of its own is tried again by the next messages after the
        # probe's first wait.
        probe: Callable[[], object] = _no_probe
        if source == KEYS:
            # A clock off by minutes is refused like bad keys: say which it is (only when CI
            # answered; without keys there is nothing to tell apart).
            refused = reason.startswith(REFUSED)
            note = clock.skew_note(service_url(self.settings.ci), "CI") if refused else ""
            reason += f" ({note})" if note else f" (provider {keys.provider}: {keys.hint})"
            probe = self._ci.probe
        elif source == LedgerUnavailable.SOURCE:
            probe = self._ledger.probe
        elif source in self._sinks:
            probe = getattr(self._sinks[source], "probe", _no_probe)
        self.outage.pause(source or "delivery", reason, probe=probe)


def _serve_api(settings: Settings, ctx: ApiContext) -> ApiServer | None:
    if not settings.http.listen:
        return None
    ctx.token, ctx.max_body_bytes = settings.http.bearer_token, settings.http.max_body_bytes
    try:
        return serve(settings.http.listen, ctx)
    except OSError as exc:
        listen = settings.http.listen
        raise ConfigError(
            f"config error: http.listen: cannot listen on {listen}: {exc.strerror}"
        ) from None
