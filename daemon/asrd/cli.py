"""The ``asrd`` command line: parses the arguments, loads the configuration and runs one
subcommand (``asrd run`` and ``asrd intake`` through ``daemon.Daemon``).

Exit status: 0 clean stop, 78 configuration error (EX_CONFIG), 1 any other fatal error.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import pulsar

from . import (
    __version__,
    canary,
    cli_submit,
    config,
    dlq,
    observability,
    pulsar_check,
    queueid,
    tracing,
    usage,
    wiring,
)
from .broker import make_client
from .ci import CiClient, CiError
from .cmq import CmqError
from .config import ConfigError, PulsarSettings, Settings
from .daemon import Daemon, Role, build_stages, supervise
from .intake.feeds import Feeds
from .ledger import USAGE_GROUPS, LedgerError
from .observers import Observers
from .result import InvalidResult, normalise
from .sinks import require_sinks

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

# What `asrd COMMAND --help` says above the options: what the command does, and which sections
# of the configuration it needs (one it does not need may be absent).
ABOUT = {
    "run": "Run the daemon: move CI's notifications onto the Pulsar topic, read each finished "
    "job back from CI and deliver its record to every sink, acknowledging a message only when "
    "every sink has it. SIGTERM or SIGINT stop it after the messages in hand.\n"
    "Needs [ci], [pulsar] and [[sinks]].",
    "intake": "Only move CI's notifications from the TDMQ-CMQ queue onto the Pulsar topic (and "
    "serve the API, when [http] listen is set); run asrd run elsewhere to deliver them.\n"
    "Needs [ci], [pulsar] and [intake.cmq].",
    "submit": "Submit speech-recognition jobs: one (--input or --url), every row of a manifest "
    "(--manifest) or every object under a prefix (--prefix). Each job is recorded in the "
    "ledger before CI is asked, so a repeated row or client token is not submitted twice.\n"
    "Needs [ci]; no [pulsar] and no [[sinks]].",
    "jobs": "List the jobs asrd submitted, as the ledger has them (owed, settled, overdue, "
    "failed), or show one (asrd jobs show JOB_ID) with CI's view of it.\n"
    "Needs no section ([ledger] has a default); show also needs [ci].",
    "get": "Print the normalised record of each job as CI has it now (JSON).\nNeeds [ci].",
    "list": "List the jobs of the configured CI queue: id, state, creation time, input.\n"
    "Needs [ci].",
    "reconcile": "Deliver the finished jobs of the last --lookback seconds whose notification "
    "never arrived (the daemon does this every [reconcile] interval_s).\n"
    "Needs [ci] and [[sinks]]; [pulsar] only for a sink that publishes there.",
    "check": "Validate the configuration as asrd run reads it; with --connect also reach CI, "
    "the broker and the CMQ queue; with --canary follow one short job through every stage.\n"
    "Needs [ci], [pulsar] and [[sinks]], as asrd run does.",
    "dlq list": "List the messages parked on the dead-letter topic, with why.\n"
    "Needs [pulsar]; no [ci].",
    "dlq replay": "Put parked messages back on the main topic (--all, or --id per message or "
    "job), at most [dlq] max_replays times each.\nNeeds [pulsar]; no [ci].",
    "usage": "Audio hours of the jobs delivered over the last --days UTC days, per day, queue "
    "or engine, priced when [usage] has prices.\nNeeds no section ([ledger] has a default).",
}


def _settings(args: argparse.Namespace) -> Settings:
    settings = config.load(Path(args.config))
    observability.configure(settings.log.level, settings.log.format)
    return settings


def cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.pulsar.workers > 1 and args.worker is None:
        return supervise(settings, str(args.config))
    role = (
        Role.PRIMARY if args.worker is None else Role.worker(args.worker, settings.pulsar.workers)
    )
    Daemon(settings, role).run_until_signalled()
    return EX_OK


def cmd_intake(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if settings.intake.cmq is None:
        raise ConfigError(f"config error: {args.config}: intake.cmq: section required")
    Daemon(settings, Role.INTAKE_ONLY).run_until_signalled()
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
    stages = build_stages(settings, Observers())
    try:
        report = stages.reconcile(args.lookback, args.grace)
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
        sp: argparse.ArgumentParser = subs.add_parser(
            name, help=help_, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        about = ABOUT.get(sp.prog.removeprefix("asrd "), help_)
        sp.description = "\n".join(textwrap.fill(line, 88) for line in about.splitlines())
        sp.add_argument("--config", "-c", required=True, help="TOML configuration file")
        sp.set_defaults(fn=fn)
        return sp

    sp = add(sub, "run", cmd_run, "consume callbacks and deliver results (the daemon)")
    sp.add_argument("--worker", type=int, default=None, help=argparse.SUPPRESS)
    add(sub, "intake", cmd_intake, "only move CMQ notifications onto the Pulsar topic")
    cli_submit.add_commands(sub, add)
    sp = add(sub, "get", cmd_get, "print the normalised record of jobs as CI has them now")
    sp.add_argument("job_id", nargs="+", help="CI job id (s + 32 hex digits)")
    sp = add(sub, "list", cmd_list, "list jobs of the configured queue")
    sp.add_argument("--states", default="All", help="comma list of states (default All)")
    sp.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
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
    dlq_help = "dead letters: list | replay"
    dlq_cmds = sub.add_parser("dlq", help=dlq_help, description=dlq_help).add_subparsers(
        dest="dlq_command", required=True, metavar="ACTION"
    )
    sp = add(dlq_cmds, "list", cmd_dlq_list, "show parked messages with their reasons")
    sp.add_argument("--limit", type=int, default=1000, help="at most this many (default 1000)")
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
    tracing.shutdown()  # the spans still buffered go out first (no atexit after os._exit)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    entry()
