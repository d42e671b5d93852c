"""The ``asrd`` command line: one function per subcommand.

Exit status: 0 clean stop, 78 configuration error (EX_CONFIG), 1 any other fatal error.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pulsar
import structlog

from . import (
    __version__,
    canary,
    cli_submit,
    clock,
    config,
    dlq,
    observability,
    pulsar_check,
    queueid,
    systemd,
    usage,
    wiring,
)
from .api import ApiContext, ApiServer, serve
from .broker import make_client
from .ci import CiClient, CiError, service_url
from .cmq import CmqError
from .config import ConfigError, HttpSettings, PulsarSettings, Settings
from .console import ConsoleContext
from .consumer import Consumer
from .intake.feeds import Feeds
from .intake.queue import QueueIntake
from .jobs import JobService, job_gauges, sweep_overdue
from .leadership import CHORES, Leadership
from .ledger import USAGE_GROUPS, Ledger, LedgerError, LedgerUnavailable
from .log_observer import LogObserver
from .metrics import Metrics, multiprocess_dir
from .observers import Observers
from .outage import Outage
from .periodic import every
from .pipeline import KEYS, REFUSED, Outcome, Pipeline
from .preflight import check_writable
from .reconcile import Report, reconcile
from .result import InvalidResult, normalise
from .shutdown import Shutdown
from .sinks import build_routes, require_sinks
from .sinks.breaker import Breaker
from .sinks.routing import Route, Router
from .submit import Submitter
from .supervisor import Supervisor, worker_command
from .timeline_observer import TimelineObserver
from .worker import Worker

EX_OK, EX_FATAL, EX_CONFIG = 0, 1, 78

DESCRIPTION = """\
asrd submits speech-recognition jobs to Tencent Cloud CI and delivers each finished job's
transcript to your sinks (files, a webhook, a Pulsar topic, COS) without losing one.
CI notifies a TDMQ-CMQ queue when a job finishes; asrd moves each notification onto a Pulsar
topic, reads the job back from CI and acknowledges it only when every sink has the record."""

EPILOG = """\
Every command but emulator takes --config FILE (TOML; ASRD_SECTION__KEY environment variables
override its keys). Data goes to standard output, log lines to standard error.
Exit status: 0 done, 1 failed (CI, the broker or the ledger), 2 usage, 78 configuration error.
Start with: asrd check --config FILE --connect, then asrd run --config FILE."""

log = structlog.get_logger("asrd")


def _settings(args: argparse.Namespace) -> Settings:
    settings = config.load(Path(args.config))
    observability.configure(settings.log.level, settings.log.format)
    return settings


@dataclass
class Stages:
    """What both the daemon and a one-off reconcile deliver through."""

    ci: CiClient
    routes: list[Route]
    ledger: Ledger
    observers: Observers
    pipeline: Pipeline

    def reconcile(self, settings: Settings, lookback_s: float, grace_s: float) -> Report:
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


def _stages(settings: Settings, observers: Observers) -> Stages:
    check_writable(settings)
    try:
        routes = build_routes(settings)
        ledger = cli_submit.open_ledger(settings)
    except OSError as exc:
        raise ConfigError(f"config error: cannot prepare {exc.filename}: {exc.strerror}") from None
    ci = CiClient(settings.ci, observers=observers)
    pipeline = Pipeline(
        ci,
        Router(routes),
        ledger,
        observers,
        settings.pulsar.max_message_bytes,
        Breaker(settings.pulsar.sink_breaker_failures),
    )
    return Stages(ci, routes, ledger, observers, pipeline)


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


def _supervise(settings: Settings, args: argparse.Namespace) -> int:
    workers = settings.pulsar.workers
    if settings.ledger.is_sqlite:
        log.warning(
            "workers share one SQLite ledger: duplicates are still delivered at most once, but "
            "SQLite takes one writer at a time, so ledger writes do not scale with workers; "
            "use a postgresql:// ledger to scale",
            workers=workers,
        )
    return Supervisor(
        workers, worker_command(str(args.config)), settings.pulsar.shutdown_deadline_s
    ).run()


def _no_probe() -> None:
    """The probe of a source that has none: it passes, and the next messages try again."""


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.pulsar.workers > 1 and args.worker is None:
        return _supervise(settings, args)
    # Worker 0 (or the only process) also runs the intake, the API and the periodic chores.
    primary = not args.worker
    if args.worker is not None:
        structlog.contextvars.bind_contextvars(worker=args.worker)
    # Before any thread exists (the broker client starts some): they inherit the signal mask.
    shutdown = Shutdown(settings.pulsar.shutdown_deadline_s)
    shutdown.install()
    stop = shutdown.stop
    logs = LogObserver()

    def subscribed() -> bool:
        """With workers, /readyz (worker 0's) and asrd_ready wait for every one of them."""
        if settings.pulsar.workers > 1 and multiprocess_dir():
            return metrics.workers_ready() >= settings.pulsar.workers
        return consumer.health.ready

    metrics = Metrics(ready=lambda: subscribed() and feeds.reachable(settings) and not stopped())
    observers = Observers([logs, metrics])
    outage = Outage(observers, stop=stop)
    stages = _stages(settings, observers)
    ci, routes, ledger = stages.ci, stages.routes, stages.ledger
    sinks = {r.sink.name: r.sink for r in routes}
    stages.pipeline.sink_paused = lambda name: outage.paused(name)

    def stopped(but: tuple[str, ...] = ()) -> bool:
        """A paused sink alone keeps the daemon ready and consuming (the others still work)."""
        return outage.stops_work(frozenset(sinks), but)

    keys = ci.credentials
    keys.observers.add(metrics)  # refreshes, and the COS sink's refused keys
    observers.add(TimelineObserver(ledger))  # dead letters in the jobs' timelines
    metrics.gauges = lambda: job_gauges(ledger)
    _pulsar_preflight(settings.pulsar)
    client = make_client(settings.pulsar)
    consumer = Consumer(
        settings.pulsar,
        client=client,
        on_ready=lambda: systemd.notify("READY=1"),
        on_receive_error=observers.receive_failed,
        # The intake's own pause (CMQ) does not stop what is already on the topic.
        paused=lambda: stopped(but=(QueueIntake.SOURCE,)),
    )

    def pause(source: str, reason: str) -> None:
        """A message met an outage: consumption pauses until a probe passes. Refused keys are
        probed with a CI request; anything else (a sink) with the next messages after a wait."""
        if source == KEYS:
            # A clock off by minutes is refused like bad keys: say which it is (only when CI
            # answered; without keys there is nothing to tell apart).
            refused = reason.startswith(REFUSED)
            note = clock.skew_note(service_url(settings.ci), "CI") if refused else ""
            reason += f" ({note})" if note else f" (provider {keys.provider}: {keys.hint})"
        # A source without a probe of its own is tried again by the next messages after the
        # probe's first wait.
        probe: Callable[[], object] = _no_probe
        if source == KEYS:
            probe = ci.probe
        elif source == LedgerUnavailable.SOURCE:
            probe = ledger.probe
        elif source in sinks:
            probe = getattr(sinks[source], "probe", _no_probe)
        outage.pause(source or "delivery", reason, probe=probe)

    worker = Worker(
        settings.pulsar,
        stages.pipeline.handle,
        ledger,
        consumer,
        observers,
        handle_batch=stages.pipeline.handle_batch,
        on_pause=pause,
    )
    shutdown.busy = lambda: consumer.health.subscribed
    feeds = Feeds.build(settings, client, observers, outage)
    submitter = cli_submit.make_submitter(settings, ci, ledger, stop=stop)
    api = _serve_api(
        settings if primary else settings.model_copy(update={"http": HttpSettings()}),
        _api_context(settings, ci, ledger, metrics, feeds, submitter, outage, stages.pipeline),
    )
    systemd.start_watchdog(systemd.loop_alive(lambda: consumer.health.last_tick, 30.0), stop)
    rc = settings.reconcile
    retention_s = settings.ledger.retention_days * 86_400
    # One process of the fleet runs these (the other primaries' timers tick and do nothing).
    leader = Leadership(CHORES, ledger.lock_sessions(), primary)
    metrics.leader = leader.gauges
    prune = leader.only_leader("prune_ledger", lambda: ledger.prune(retention_s))
    chores = [every(6 * 3600.0, stop, prune, "prune-ledger", first_s=60.0)] if primary else []
    # Each process's own readiness, for worker 0 to add up (about as fresh as the consumer's
    # connection check, once a second).
    chores.append(
        # A worker paused by an outage is not ready either: worker 0's /readyz counts it out.
        every(
            0.5,
            stop,
            lambda: metrics.publish_ready(consumer.health.ready and not stopped()),
            "readiness",
        )
    )
    if rc.interval_s > 0 and primary:
        passes = leader.only_leader(
            "reconcile", lambda: stages.reconcile(settings, rc.lookback_s, rc.grace_s)
        )
        chores.append(every(rc.interval_s, stop, passes, "reconcile"))

    if rc.sweep_interval_s > 0 and primary:
        lookup = submitter.lookup
        sweep = leader.only_leader(
            "deadline_sweep",
            lambda: sweep_overdue(
                ci, stages.pipeline, ledger, lookup, observers, settings.ci.get_batch_size
            ),
        )
        chores.append(every(rc.sweep_interval_s, stop, sweep, "deadline-sweep"))
    leader.start(stop)
    log.info("asrd starting", version=__version__, sinks=[r.sink.name for r in routes])
    if primary:
        _log_wiring_warnings(settings)
        feeds.start(stop)
    _settle_heap()
    consumer.run(stop, worker.process, worker.process_batch)
    systemd.notify("STOPPING=1")
    if api is not None:
        api.shutdown()
    feeds.stop()
    for chore in chores:
        chore.join(timeout=settings.pulsar.shutdown_deadline_s)
    leader.stop()
    stages.close()
    client.close()
    log.info("asrd stopped", counters=logs.counters.snapshot())
    shutdown.finished()
    sys.stderr.flush()
    # Worker threads stuck past the deadline must not hold the exit; their messages are unacked.
    os._exit(EX_OK)


def _pulsar_preflight(settings: PulsarSettings) -> None:
    """A refused certificate or token stops start-up with one line; warnings are logged."""
    for warning in pulsar_check.warnings(settings):
        log.warning(warning)
    pulsar_check.preflight(settings)


def _log_wiring_warnings(settings: Settings) -> None:
    for note in wiring.notes(settings):
        if note.warning:
            log.warning(note.text)


def _settle_heap() -> None:
    """What start-up built lives as long as the process: out of the collector's way (``freeze``),
    and collections rarer than CPython's default, which allocates past 700 objects per message
    batch and spent ~6% of a busy daemon's CPU walking the same long-lived objects."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _redeliverer(pipeline: Pipeline) -> Callable[[str], tuple[bool, str]]:
    def redeliver(job_id: str) -> tuple[bool, str]:
        verdict = pipeline.deliver_job(job_id)
        return verdict.outcome is Outcome.DONE, verdict.reason

    return redeliver


def _api_context(
    settings: Settings,
    ci: CiClient,
    ledger: Ledger,
    metrics: Metrics,
    feeds: Feeds,
    submitter: Submitter,
    outage: Outage,
    pipeline: Pipeline | None = None,
) -> ApiContext:
    """What the sidecar API serves, the same for ``asrd run`` and ``asrd intake`` (which has
    no ``pipeline``: the console cannot redeliver there)."""
    return ApiContext(
        ci,
        settings.ci,
        metrics.ready,
        metrics.exposition,
        callbacks=feeds.url,
        ledger=ledger,
        jobs=JobService(submitter, ledger),
        not_ready=outage.reason,
        console=ConsoleContext(
            ledger,
            ci,
            settings.pulsar,
            sinks=[sink.name for sink in settings.sinks],
            actions=settings.http.console_actions,
            max_replays=settings.dlq.max_replays,
            prices=settings.usage,
            redeliver=_redeliverer(pipeline) if pipeline is not None else None,
        ),
    )


def cmd_intake(args: argparse.Namespace) -> int:
    """The CMQ intake alone, for operators who run it apart from the consumers."""
    settings = _settings(args)
    if settings.intake.cmq is None:
        raise ConfigError(f"config error: {args.config}: intake.cmq: section required")
    # Nothing is lost by leaving at once: a batch not yet deleted comes back from CMQ.
    shutdown = Shutdown(deadline_s=settings.pulsar.shutdown_deadline_s)
    shutdown.install()
    stop = shutdown.stop
    logs = LogObserver()
    metrics = Metrics(ready=lambda: feeds.reachable(settings) and not outage.paused())
    observers = Observers([logs, metrics])
    outage = Outage(observers, stop=stop)
    _pulsar_preflight(settings.pulsar)
    client = make_client(settings.pulsar)
    feeds = Feeds.build(settings, client, observers, outage)
    queue = feeds.queue
    assert queue is not None  # built from intake.cmq above
    ci = CiClient(settings.ci, observers=observers)
    ci.credentials.observers.add(metrics)
    ledger = cli_submit.open_ledger(settings)  # a job submitted here is owed like any other
    metrics.gauges = lambda: job_gauges(ledger)
    submitter = cli_submit.make_submitter(settings, ci, ledger, stop=stop)
    ctx = _api_context(settings, ci, ledger, metrics, feeds, submitter, outage)
    api = _serve_api(settings, ctx)
    systemd.start_watchdog(systemd.loop_alive(lambda: queue.health.last_tick, 90.0), stop)
    feeds.start(stop)
    systemd.notify("READY=1")
    stop.wait()
    systemd.notify("STOPPING=1")
    if api is not None:
        api.shutdown()
    feeds.stop()
    client.close()
    ledger.close()
    log.info("asrd intake stopped", counters=logs.counters.snapshot())
    shutdown.finished()
    return EX_OK


def cmd_get(args: argparse.Namespace) -> int:
    settings = _settings(args)
    client = CiClient(settings.ci)
    status = EX_OK
    for job_id in args.job_id:
        detail = client.get_job(job_id)
        if detail is None:
            print(f"asrd get: no job {job_id}", file=sys.stderr)
            status = EX_FATAL
            continue
        try:
            print(json.dumps(normalise(detail).to_dict(), ensure_ascii=False, indent=2))
        except InvalidResult as exc:
            print(f"asrd get: {job_id}: {exc}", file=sys.stderr)
            status = EX_FATAL
    return status


def cmd_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    client = CiClient(settings.ci)
    for d in client.list_jobs(queue_id=client.queue_id(), states=args.states, limit=args.limit):
        obj = (d.get("Input") or {}).get("Object") or (d.get("Input") or {}).get("Url") or ""
        print(f"{d.get('JobId', '')}\t{d.get('State', '')}\t{d.get('CreationTime', '')}\t{obj}")
    return EX_OK


def cmd_usage(args: argparse.Namespace) -> int:
    if args.days < 1:
        print(f"asrd usage: --days must be 1 or more, not {args.days}", file=sys.stderr)
        return 2
    settings = _settings(args)
    since = (time.time() // 86400 - (args.days - 1)) * 86400  # whole UTC days
    ledger = cli_submit.open_ledger(settings)
    try:
        lines = usage.report(ledger, since, args.by, settings.usage)
    finally:
        ledger.close()
    if args.csv:
        print(usage.to_csv(lines, args.by, settings.usage), end="")
        return EX_OK
    priced = bool(settings.usage.prices)
    currency = f" ({settings.usage.currency})" if settings.usage.currency else ""
    print(f"{args.by:24} {'jobs':>8} {'audio h':>10}" + (f"  cost{currency}" if priced else ""))
    for line in lines:
        cost = "" if not priced else "  no price" if line.cost is None else f"  {line.cost:.2f}"
        print(f"{line.key or '(none)':24} {line.jobs:8d} {line.audio_hours:10.3f}{cost}")
    return EX_OK


def cmd_dlq_list(args: argparse.Namespace) -> int:
    settings = _settings(args)
    parked = dlq.list_dead_letters(settings.pulsar, limit=args.limit)
    print(f"{len(parked)} message(s) on {settings.pulsar.dlq_topic}")
    for d in parked:
        print(
            f"{d.message_id}\t{d.job_id}\t{d.published_at}\tattempts={d.attempts}"
            f"\treplays={d.replays}\t{d.reason}"
        )
    return EX_OK


def cmd_dlq_replay(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if not args.all and not args.id:
        print("asrd dlq replay: give --all or at least one --id", file=sys.stderr)
        return 2
    max_replays = settings.dlq.max_replays
    report = dlq.replay(settings.pulsar, None if args.all else set(args.id), max_replays)
    if report.replayed:
        try:
            ledger = cli_submit.open_ledger(settings)
        except (ConfigError, LedgerError) as exc:
            # The messages are back on the topic all the same; only the timelines miss it.
            print(f"asrd dlq replay: timelines not updated: {exc}", file=sys.stderr)
        else:
            try:
                ledger.note_events(report.events(), report.started_at)  # timelines say so
            finally:
                ledger.close()
    for d in report.replayed:
        print(f"replayed {d.message_id}\t{d.job_id}")
    for d in report.refused:
        print(
            f"asrd dlq replay: {d.message_id} (job {d.job_id}) refused: replayed {d.replays} "
            f"times already (dlq.max_replays = {max_replays}); it stays parked",
            file=sys.stderr,
        )
    print(f"{len(report.replayed)} message(s) put back on {settings.pulsar.topic}")
    seen = {d.message_id for d in report.replayed + report.refused}
    seen |= {d.job_id for d in report.replayed + report.refused}
    missing = set(args.id or ()) - seen
    if missing:
        print(f"asrd dlq replay: not found: {', '.join(sorted(missing))}", file=sys.stderr)
    return EX_FATAL if missing or report.refused else EX_OK


def cmd_reconcile(args: argparse.Namespace) -> int:
    settings = _settings(args)
    stages = _stages(settings, Observers())
    try:
        report = stages.reconcile(settings, args.lookback, args.grace)
    finally:
        stages.close()
    print(
        f"checked {report.checked} finished job(s): {report.already} already delivered, "
        f"{len(report.delivered)} delivered now, {len(report.failed)} failed"
    )
    for job_id in report.delivered:
        print(f"delivered {job_id}")
    for job_id, reason in report.failed.items():
        print(f"failed {job_id}: {reason}", file=sys.stderr)
    return EX_FATAL if report.failed else EX_OK


def cmd_check(args: argparse.Namespace) -> int:
    settings = _settings(args)
    # What `asrd run` asks for: a missing [ci] or [pulsar] section is named as it is read.
    _ = settings.ci, settings.pulsar
    require_sinks(settings)
    print(f"config ok: {args.config}")
    for warning in pulsar_check.warnings(settings.pulsar):
        print(f"asrd check: warning: {warning}", file=sys.stderr)
    for note in wiring.notes(settings):
        print(f"warning: {note.text}" if note.warning else note.text)
    if args.canary:
        settings = queueid.resolved(settings)
        ledger = cli_submit.open_ledger(settings)
        try:
            return canary.run(settings, ledger, sys.stdout)
        finally:
            ledger.close()
    if args.connect:
        ci = CiClient(settings.ci)
        how = "configured" if settings.ci.queue_id else "the bucket's ASR queue, looked up"
        settings = queueid.resolved(settings, ci)
        next(iter(ci.list_jobs(queue_id=settings.ci.queue_id, limit=1)), None)
        print(f"CI reachable: bucket {settings.ci.bucket}, queue {settings.ci.queue_id} ({how})")
        print(_keys_line(ci))
        pulsar_check.preflight(settings.pulsar)
        problems = _check_pulsar(settings.pulsar)
        for problem in problems:
            print(f"asrd check: Pulsar: {problem}", file=sys.stderr)
        if problems:
            return EX_FATAL
        if settings.intake.cmq is not None:
            return _check_cmq(settings)
    return EX_OK


def _check_pulsar(settings: PulsarSettings) -> list[str]:
    """The topics exist and the subscription is open on the topic and the retry-letter topic."""
    client = make_client(settings, operation_timeout_s=10, quiet=True)
    try:
        for topic in (settings.topic, settings.retry_letter_topic, settings.dlq_topic):
            client.get_topic_partitions(topic)
        problems = pulsar_check.subscription_problems(settings, client)
    except pulsar.TopicNotFound:
        return [f"topic {topic} does not exist: create it (TDMQ: in the console or its API)"]
    except pulsar.AuthorizationError:
        return [
            f"the token's role may not use {topic} (AuthorizationError): grant it produce "
            "and consume on the namespace"
        ]
    finally:
        client.close()
    if not problems:
        print(f"Pulsar reachable: {settings.topic}, subscription {settings.subscription!r} open")
    return problems


def _keys_line(ci: CiClient) -> str:
    """Which provider gave the keys, which key (masked), and until when."""
    keys = ci.credentials
    snap = keys.current()
    if snap is None:
        return f"credentials: {keys.provider}: no keys yet"
    until = "do not expire"
    if snap.expires_at is not None:
        when = datetime.fromtimestamp(snap.expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        until = f"expire at {when} (in {max(snap.expires_at - time.time(), 0):.0f} s)"
    return f"credentials: {keys.provider}, key id {snap.masked_id}, keys {until}"


def _check_cmq(settings: Settings) -> int:
    """Prove the queue exists and the key may receive from it: one receive without waiting. A
    message it gets is moved to Pulsar as the intake would, so the check loses nothing."""
    cmq = settings.intake.cmq
    assert cmq is not None
    client = make_client(settings.pulsar)
    feeds = Feeds.build(settings, client, Observers())
    assert feeds.queue is not None
    try:
        report = feeds.queue.move_once(wait_s=0)
    except CmqError as exc:
        print(f"asrd check: CMQ: {_cmq_problem(cmq.endpoint, cmq.queue, exc)}", file=sys.stderr)
        return EX_FATAL
    finally:
        feeds.stop()
        client.close()
    print(
        f"CMQ reachable: queue {cmq.queue} at {cmq.endpoint} "
        f"(moved {report.moved} waiting message(s) to Pulsar)"
    )
    return EX_OK


def _cmq_problem(endpoint: str, queue: str, exc: CmqError) -> str:
    if exc.code == 4100:
        return f"{endpoint} refused the key (code 4100): check intake.cmq or ci credentials"
    if exc.code == 4440:
        return f"queue {queue!r} does not exist at {endpoint} (code 4440)"
    if exc.code == 0:
        return f"cannot reach {endpoint}: {exc.message}"
    return f"receive from {queue!r} at {endpoint} failed: {exc}"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="asrd",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"asrd {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(
        subs: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        fn: Callable[[argparse.Namespace], int],
        help_: str,
    ) -> argparse.ArgumentParser:
        sp: argparse.ArgumentParser = subs.add_parser(name, help=help_)
        sp.add_argument("--config", "-c", required=True, help="TOML configuration file")
        sp.set_defaults(fn=fn)
        return sp

    sp = add(sub, "run", cmd_run, "consume callbacks and deliver results (the daemon)")
    sp.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    add(sub, "intake", cmd_intake, "only move CMQ notifications onto the Pulsar topic")
    cli_submit.add_commands(sub, add)
    sp = add(sub, "get", cmd_get, "print the normalised record of jobs as CI has them now")
    sp.add_argument("job_id", nargs="+")
    sp = add(sub, "list", cmd_list, "list jobs of the configured queue")
    sp.add_argument("--states", default="All", help="comma list of states (default All)")
    sp.add_argument("--limit", type=int, default=100)
    sp = add(sub, "reconcile", cmd_reconcile, "deliver finished jobs whose callback never came")
    sp.add_argument("--lookback", type=float, default=86_400.0, help="seconds back (default 1 day)")
    sp.add_argument("--grace", type=float, default=0.0, help="skip jobs created this recently")
    sp = add(sub, "check", cmd_check, "validate the configuration")
    sp.add_argument("--connect", action="store_true", help="also reach CI and the broker")
    sp.add_argument(
        "--canary",
        action="store_true",
        help="submit one short job and follow it through every stage (needs asrd run)",
    )
    dlq_cmds = sub.add_parser("dlq", help="dead letters: list | replay").add_subparsers(
        dest="dlq_command", required=True, metavar="ACTION"
    )
    sp = add(dlq_cmds, "list", cmd_dlq_list, "show parked messages with their reasons")
    sp.add_argument("--limit", type=int, default=1000)
    sp = add(dlq_cmds, "replay", cmd_dlq_replay, "put parked messages back on the main topic")
    sp.add_argument("--id", action="append", help="DLQ message id or job id (repeatable)")
    sp.add_argument("--all", action="store_true", help="replay every parked message")
    sp = add(sub, "usage", cmd_usage, "audio hours (and estimated cost) of delivered jobs")
    sp.add_argument("--days", type=int, default=30, help="the last N UTC days (default 30)")
    sp.add_argument("--by", choices=USAGE_GROUPS, default="day", help="group per day|queue|engine")
    sp.add_argument("--csv", action="store_true", help="CSV instead of a table")
    sub.add_parser("emulator", help="run the local CI emulator (asrd emulator --help)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if args_list[:1] == ["emulator"]:
        # The emulator is an independent implementation of the service with its own options.
        from .emulator.cli import main as emulator_main

        return emulator_main(args_list[1:])
    args = _parser().parse_args(args_list)
    try:
        code: int = args.fn(args)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EX_CONFIG
    except CiError as exc:
        print(f"asrd {args.command}: CI error: {exc}", file=sys.stderr)
        return EX_FATAL
    except LedgerError as exc:
        print(f"asrd {args.command}: {exc}", file=sys.stderr)
        return EX_FATAL
    except pulsar.PulsarException as exc:
        print(f"asrd {args.command}: broker error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return EX_FATAL
    return code


def entry() -> None:
    """The console script: ``main`` and then a hard exit.

    pulsar-client's C++ side can abort (SIGABRT) during interpreter teardown after a client was
    used; every client is closed explicitly by then, so skipping the teardown loses nothing.
    """
    observability.keep_stdout_for_data()
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
