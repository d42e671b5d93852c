"""Submitting many jobs: rows from a manifest (CSV with a header, or JSON lines) or from the
objects under a COS prefix, sent by a bounded pool through the rate limiter, each outcome
written to a JSON-lines report as it happens."""

from __future__ import annotations

import csv
import io
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

import structlog

from . import backoff, clienttoken
from .ci import CiClient
from .config import CiSettings
from .ledger import LedgerUnavailable
from .submit import ADOPTED, FAILED_ROW, SKIPPED, SUBMITTED, JobSpec, SubmitOutcome, Submitter

COLUMNS = (
    "input", "url", "output", "output_bucket", "output_region", "user_data", "job_level",
    "template_id", "client_token",
)  # fmt: skip


class ManifestError(ValueError):
    """A manifest (or a row of it) cannot be used; the message names the file and line."""


@dataclass(frozen=True)
class Row:
    where: str  # "FILE:LINE" or "PREFIX#N", for messages and the report
    spec: JobSpec


def _spec(values: dict[str, Any], where: str) -> JobSpec:
    unknown = sorted(set(values) - set(COLUMNS))
    if unknown:
        raise ManifestError(f"{where}: unknown column(s) {', '.join(unknown)}")

    def text(key: str) -> str | None:
        value = values.get(key)
        if value is None or value == "":
            return None
        if not isinstance(value, str | int):
            raise ManifestError(f"{where}: {key} must be text")
        return str(value)

    level = text("job_level")
    if level is not None and level not in ("0", "1", "2"):
        raise ManifestError(f"{where}: job_level must be 0, 1 or 2, not {level!r}")
    token = text("client_token")
    if token is not None and not clienttoken.valid_token(token):
        raise ManifestError(f"{where}: client_token must be {clienttoken.TOKEN_RULE}")
    spec = JobSpec(
        input_object=text("input"),
        input_url=text("url"),
        output_object=text("output"),
        output_bucket=text("output_bucket"),
        output_region=text("output_region"),
        user_data=text("user_data"),
        job_level=int(level) if level is not None else None,
        template_id=text("template_id"),
        client_token=token,
    )
    if bool(spec.input_object) == bool(spec.input_url):
        raise ManifestError(f"{where}: give exactly one of input or url")
    return spec


def read_manifest(path: Path) -> list[Row]:
    """Every row of a CSV (with a header) or JSON-lines manifest. Raises ManifestError."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise ManifestError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ManifestError(f"{path}: not UTF-8 text") from None
    first = text.lstrip()[:1]
    rows = _json_lines(path, text) if first == "{" else _csv_rows(path, text)
    if not rows:
        raise ManifestError(f"{path}: no rows")
    return rows


def _json_lines(path: Path, text: str) -> list[Row]:
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            values = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ManifestError(f"{where}: not a JSON object: {exc.msg}") from None
        if not isinstance(values, dict):
            raise ManifestError(f"{where}: not a JSON object")
        rows.append(Row(where, _spec(values, where)))
    return rows


def _csv_rows(path: Path, text: str) -> list[Row]:
    reader = csv.DictReader(io.StringIO(text))
    header = reader.fieldnames or []
    if "input" not in header and "url" not in header:
        raise ManifestError(f"{path}:1: the header needs an input or a url column")
    rows = []
    for values in reader:
        where = f"{path}:{reader.line_num}"
        if None in values:
            raise ManifestError(f"{where}: more fields than the header has")
        if not any((v or "").strip() for v in values.values()):
            continue
        rows.append(Row(where, _spec({k: v.strip() for k, v in values.items() if v}, where)))
    return rows


def prefix_rows(
    ci: CiClient, prefix: str, suffixes: list[str], page_size: int, template: JobSpec
) -> list[Row]:
    """One row per object under ``prefix`` whose key ends with one of ``suffixes`` (any when
    empty); ``template`` gives every row's other settings."""
    wanted = tuple(s.lower() for s in suffixes)
    rows: list[Row] = []
    for key, _ in ci.list_objects(prefix, page_size):
        if key.endswith("/") or (wanted and not key.lower().endswith(wanted)):
            continue
        rows.append(Row(f"{prefix}#{len(rows) + 1}", replace(template, input_object=key)))
    return rows


def with_defaults(rows: list[Row], defaults: JobSpec) -> list[Row]:
    """Fill what a row leaves empty from command-line defaults."""
    fill = {k: v for k, v in vars(defaults).items() if v is not None}
    if not fill:
        return rows
    out = []
    for row in rows:
        missing = {k: v for k, v in fill.items() if getattr(row.spec, k) is None}
        out.append(Row(row.where, replace(row.spec, **missing)) if missing else row)
    return out


@dataclass
class Planned:
    row: Row
    token: str
    duplicate_of: str | None = None  # an earlier row with the same token


def plan(rows: list[Row], settings: CiSettings, force_nonce: str | None) -> list[Planned]:
    """Tokens for every row, checked before anything is sent (bad input stops the whole run).

    With ``force_nonce`` every token is new, so rows already in the ledger are sent again.
    """
    planned = []
    first: dict[str, str] = {}
    for row in rows:
        token = row.spec.token(settings.bucket)
        if force_nonce is not None:
            token = clienttoken.derive({"token": token, "force": force_nonce})
        try:
            row.spec.request(settings, token)
        except ValueError as exc:
            raise ManifestError(f"{row.where}: {exc}") from None
        planned.append(Planned(row, token, first.get(token)))
        first.setdefault(token, row.where)
    return planned


@dataclass
class Summary:
    total: int
    counts: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.counts[FAILED_ROW] == 0 and sum(self.counts.values()) == self.total

    def line(self) -> str:
        c = self.counts
        made = c[SUBMITTED] + c[ADOPTED]
        rate = made / self.elapsed_s if self.elapsed_s > 0 else 0.0
        return (
            f"{self.total} row(s) in {self.elapsed_s:.2f} s: {made} submitted "
            f"({c[ADOPTED]} found by client token after a lost answer), {c[SKIPPED]} skipped "
            f"as already submitted, {c[FAILED_ROW]} failed ({rate:.1f} jobs/s)"
        )


class Report:
    """The JSON-lines report: one line per row, written as each row ends."""

    def __init__(self, stream: IO[str] | None) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, item: Planned, outcome: SubmitOutcome) -> None:
        if self._stream is None:
            return
        line = {
            "row": item.row.where,
            "input": item.row.spec.input,
            "client_token": outcome.client_token,
            "status": outcome.status,
            "job_id": outcome.job_id,
            "error": outcome.error,
            "submitted_at": _iso(outcome.submitted_at),
        }
        with self._lock:
            self._stream.write(json.dumps(line, ensure_ascii=False) + "\n")
            self._stream.flush()


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds") if ts else None


log = structlog.get_logger("asrd.submit")
LEDGER_WAIT_MAX_S = 10.0  # the longest wait between tries of a ledger that cannot be written


def run_batch(
    planned: list[Planned],
    submitter: Submitter,
    concurrency: int,
    report: Report,
    on_done: Callable[[str], None],
    stop: threading.Event,
) -> Summary:
    """Submit every planned row with at most ``concurrency`` in flight; never raises for a
    row (its failure is in the report and the summary)."""
    summary = Summary(len(planned))
    lock = threading.Lock()
    ledger_out = threading.Event()  # set while the ledger cannot be written
    todo: Iterator[Planned]

    def finish(item: Planned, outcome: SubmitOutcome) -> None:
        report.write(item, outcome)
        with lock:
            summary.counts[outcome.status] += 1
        on_done(outcome.status)

    def worker() -> None:
        while True:
            with lock:
                item = next(todo, None)
            if item is None:
                return
            if stop.is_set():
                finish(item, SubmitOutcome(FAILED_ROW, item.token, error="interrupted"))
                continue
            finish(item, submit_one(item))

    def submit_one(item: Planned) -> SubmitOutcome:
        # A ledger that cannot be written (its disk full, its server gone) is an outage, not
        # the row's fault: wait for it, as the daemon does, instead of failing every row left.
        # Submitting the row again is safe: its client token finds a create already made.
        waits = 0
        while True:
            try:
                outcome = submitter.submit(item.row.spec, item.token)
            except LedgerUnavailable as exc:
                waits += 1
                with lock:
                    first = not ledger_out.is_set()
                    ledger_out.set()
                if first:
                    log.error("paused: the ledger cannot be written; waiting", error=str(exc))
                if stop.wait(backoff.delay(waits, 0.5, LEDGER_WAIT_MAX_S)):
                    return SubmitOutcome(FAILED_ROW, item.token, error=f"interrupted: {exc}")
                continue
            except Exception as exc:  # noqa: BLE001 - one row's bug must not stop the rest
                outcome = SubmitOutcome(FAILED_ROW, item.token, error=f"{exc}")
            with lock:
                resumed = ledger_out.is_set()
                ledger_out.clear()
            if resumed:
                log.info("resumed: the ledger works again")
            return outcome

    started = time.monotonic()
    todo = iter([p for p in planned if p.duplicate_of is None])
    with ThreadPoolExecutor(concurrency, thread_name_prefix="asrd-submit") as pool:
        for fut in [pool.submit(worker) for _ in range(min(concurrency, len(planned)) or 1)]:
            fut.result()
    # Repeats last, once the row they repeat has its outcome in the ledger.
    for item in planned:
        if item.duplicate_of is not None:
            finish(item, _duplicate(item, submitter))
    summary.elapsed_s = time.monotonic() - started
    return summary


def _duplicate(item: Planned, submitter: Submitter) -> SubmitOutcome:
    known = submitter.known(item.token)
    if known is None or known.job_id is None:
        return SubmitOutcome(
            FAILED_ROW, item.token, error=f"same job as {item.duplicate_of}, which failed"
        )
    return SubmitOutcome(SKIPPED, item.token, known.job_id, submitted_at=known.submitted_at)
