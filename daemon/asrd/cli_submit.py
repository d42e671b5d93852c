"""``asrd submit`` (one job, a manifest, or a COS prefix) and ``asrd jobs``: the command-line
side of submitting and of what the ledger owes. ``cli.py`` registers these commands."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from types import FrameType
from typing import IO

from . import clienttoken, config, observability, tracing
from .batch import (
    ManifestError,
    Report,
    Row,
    plan,
    prefix_rows,
    read_manifest,
    run_batch,
    with_defaults,
)
from .ci import CiClient
from .config import ConfigError, Settings
from .jobs import STATES, parse_since, select, show
from .ledger import JobBook, JobEntry, Ledger, LedgerError, from_settings
from .limiter import RateLimiter
from .observers import Observers
from .progress import tracker
from .submit import SKIPPED, JobSpec, Submitter, TokenLookup

EX_OK, EX_FATAL, EX_USAGE = 0, 1, 2


def make_submitter(
    settings: Settings,
    ci: CiClient,
    ledger: JobBook,
    rate: float | None = None,
    stop: threading.Event | None = None,
    observers: Observers | None = None,
) -> Submitter:
    """The one way asrd creates jobs (CLI, batches, sidecar API): limited, recorded, by token.
    Without ``observers``, only tracing's (when it is on) watch the submits."""
    s = settings.submit
    if observers is None:
        observers = Observers(tracing.observers(ledger))
    return Submitter(
        ci,
        settings.ci,
        ledger,
        settings.reconcile.deadline_s,
        TokenLookup(ci, settings.ci.queue_id, s.lookup_margin_s),
        RateLimiter(rate or s.rate),
        attempts=s.attempts,
        stop=stop,
        observers=observers,
    )


def open_ledger(settings: Settings) -> Ledger:
    """The configured ledger. One the configuration gets wrong (a path that cannot be used,
    refused credentials, no such database) is a configuration error (78); a server that does
    not answer stays a ``LedgerError`` (exit 1: the service manager tries again)."""
    try:
        return from_settings(settings.ledger)
    except LedgerError as exc:
        if exc.config:
            raise ConfigError(f"config error: {exc}") from None
        raise


def _settings(args: argparse.Namespace) -> Settings:
    settings = config.load(Path(args.config))
    observability.configure(settings.log.level, settings.log.format)
    return settings


def _defaults(args: argparse.Namespace) -> JobSpec:
    return JobSpec(
        user_data=args.user_data,
        job_level=args.job_level,
        template_id=args.template_id,
    )


def cmd_submit(args: argparse.Namespace) -> int:
    settings = _settings(args)
    if args.manifest or args.prefix is not None:
        return _submit_batch(args, settings)
    if args.force or args.report:
        print("asrd submit: --force and --report go with --manifest or --prefix", file=sys.stderr)
        return EX_USAGE
    token = args.client_token or clienttoken.fresh()
    spec = JobSpec(
        input_object=args.input,
        input_url=args.url,
        output_object=args.output,
        user_data=args.user_data,
        job_level=args.job_level,
        template_id=args.template_id,
        client_token=token,
    )
    ci = CiClient(settings.ci)
    ledger = open_ledger(settings)
    try:
        outcome = make_submitter(settings, ci, ledger).submit(spec, token)
    except ValueError as exc:
        print(f"asrd submit: {exc}", file=sys.stderr)
        return EX_USAGE
    finally:
        ledger.close()
    if not outcome.ok:
        print(f"asrd submit: {outcome.error}", file=sys.stderr)
        return EX_FATAL
    if outcome.status == SKIPPED:
        print(f"asrd submit: client token {token} was already submitted", file=sys.stderr)
    print(outcome.job_id)
    return EX_OK


def _rows(args: argparse.Namespace, settings: Settings, ci: CiClient) -> list[Row]:
    defaults = _defaults(args)
    if args.manifest:
        return with_defaults(read_manifest(Path(args.manifest)), defaults)
    suffixes = [s.strip() for s in (args.suffix or "").split(",") if s.strip()]
    rows = prefix_rows(ci, args.prefix, suffixes, settings.submit.list_page_size, defaults)
    if not rows:
        raise ManifestError(f"no objects under prefix {args.prefix!r} match")
    return rows


def _submit_batch(args: argparse.Namespace, settings: Settings) -> int:
    concurrency = args.concurrency or settings.submit.concurrency
    # Enough pooled connections for every worker, so none is opened and dropped per create.
    ci_settings = settings.ci.model_copy(
        update={"max_connections": max(settings.ci.max_connections, concurrency)}
    )
    ci = CiClient(ci_settings)
    try:
        rows = _rows(args, settings, ci)
        planned = plan(rows, settings.ci, uuid.uuid4().hex if args.force else None)
    except ManifestError as exc:
        print(f"asrd submit: {exc}", file=sys.stderr)
        return EX_USAGE
    stop = threading.Event()
    _stop_on_signals(stop)
    ledger = open_ledger(settings)
    report_file: IO[str] | None = None
    try:
        if args.report:
            report_file = Path(args.report).open("w", encoding="utf-8")  # noqa: SIM115
        submitter = make_submitter(settings, ci, ledger, args.rate, stop)
        interval = args.progress_interval or settings.submit.progress_interval_s
        progress = tracker(len(planned), sys.stderr, "asrd submit", interval)
        try:
            summary = run_batch(
                planned, submitter, concurrency, Report(report_file), progress.advance, stop
            )
        finally:
            progress.close()
    except OSError as exc:
        print(f"asrd submit: cannot write {exc.filename}: {exc.strerror}", file=sys.stderr)
        return EX_FATAL
    finally:
        if report_file is not None:
            report_file.close()
        ledger.close()
    print(f"asrd submit: {summary.line()}")
    return EX_OK if summary.ok else EX_FATAL


def _stop_on_signals(stop: threading.Event) -> None:
    def on_signal(signum: int, _: FrameType | None) -> None:
        # Rows under way finish (and are recorded); the rest are reported as not sent.
        print(f"asrd submit: {signal.Signals(signum).name}, stopping", file=sys.stderr)
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)


def cmd_jobs(args: argparse.Namespace) -> int:
    settings = _settings(args)
    ledger = open_ledger(settings)
    now = time.time()
    try:
        if args.action == "show":
            if not args.job_id:
                print("asrd jobs show: give a JOB_ID", file=sys.stderr)
                return EX_USAGE
            view = show(ledger, CiClient(settings.ci), args.job_id, now)
            print(json.dumps(view, ensure_ascii=False, indent=2))
            return EX_OK if view["ledger"] is not None or view.get("ci") else EX_FATAL
        try:
            since = parse_since(args.since, now) if args.since else None
            entries = select(ledger, args.state, since, now, args.limit)
        except ValueError as exc:
            print(f"asrd jobs: {exc}", file=sys.stderr)
            return EX_USAGE
    finally:
        ledger.close()
    if args.json or not sys.stdout.isatty():
        for entry in entries:
            print(json.dumps(entry.to_dict(now), ensure_ascii=False))
    else:
        _table(entries, now)
    return EX_OK


def _table(entries: list[JobEntry], now: float) -> None:
    from rich.console import Console
    from rich.table import Table

    def local(ts: float | None) -> str:
        return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"

    table = Table(title=f"{len(entries)} job(s)")
    for column in ("job id", "status", "CI state", "input", "submitted", "deadline", "reason"):
        table.add_column(column, overflow="fold")
    for entry in entries:
        status = entry.status + (" (overdue)" if entry.overdue(now) else "")
        table.add_row(
            entry.job_id or "-",
            status,
            entry.ci_state or "-",
            entry.input,
            local(entry.submitted_at),
            local(entry.deadline_at),
            entry.reason or "",
        )
    Console().print(table)


def _positive(kind: Callable[[str], float]) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be above 0, not {text}")
        return value

    return parse


def add_commands(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    add: Callable[..., argparse.ArgumentParser],
) -> None:
    """``submit`` and ``jobs``; ``add`` is cli.py's helper (adds ``--config``)."""
    sp = add(
        sub, "submit", cmd_submit, "submit jobs: one, a manifest, or every object under a prefix"
    )
    src = sp.add_mutually_exclusive_group(required=True)
    src.add_argument("--input", help="input object key in the configured bucket")
    src.add_argument("--url", help="public URL of the input audio")
    src.add_argument("--manifest", help="CSV (with a header) or JSON-lines file, a job per row")
    src.add_argument("--prefix", help="every object under this key prefix of the bucket")
    sp.add_argument("--suffix", help="with --prefix: only keys ending so (comma list: .mp3,.wav)")
    sp.add_argument("--output", help="result object key (default: <output_prefix><input>.<type>)")
    sp.add_argument("--user-data", help="free text echoed back in the result (printable ASCII)")
    sp.add_argument("--job-level", type=int, choices=(0, 1, 2), help="priority, 2 = soonest")
    sp.add_argument("--template-id", help="ASR template instead of [ci.recognition]")
    sp.add_argument("--client-token", help=f"one job: its client token ({clienttoken.TOKEN_RULE})")
    sp.add_argument("--rate", type=_positive(float), help="creates per second (default [submit])")
    sp.add_argument("--concurrency", type=_positive(int), help="creates in flight ([submit])")
    sp.add_argument("--report", help="write a JSON line per row here (input, job id or error)")
    sp.add_argument("--force", action="store_true", help="send rows the ledger already has")
    sp.add_argument(
        "--progress-interval", type=_positive(float), help="seconds between progress lines"
    )
    sp = add(sub, "jobs", cmd_jobs, "jobs asrd submitted: what is owed, settled, overdue, failed")
    sp.add_argument("action", nargs="?", choices=("show",), help="show: one job, ledger and CI")
    sp.add_argument("job_id", nargs="?", help="with show: the job id")
    sp.add_argument("--state", choices=STATES, help="only jobs in this state")
    sp.add_argument(
        "--since", help="submitted since: 90s, 30m, 2h, 1d or an RFC 3339 time with its offset"
    )
    sp.add_argument("--json", action="store_true", help="JSON lines even on a terminal")
    sp.add_argument(
        "--limit", type=_positive(int), default=1000, help="at most this many (newest first)"
    )
