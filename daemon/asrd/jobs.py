"""What the ledger owes: the jobs asrd submitted, their views (``asrd jobs``, ``GET /v1/jobs``),
their metrics, and the deadline sweep that looks overdue jobs up by id.

The reconciler only sees jobs inside its list window; a job whose callback was lost and that
is older than that window is found here instead, because the ledger knows every job it is owed.
"""

from __future__ import annotations

import re
import time
from datetime import datetime
from typing import Any

import structlog

from . import clienttoken
from .ci import CiClient, CiError, JobsDetail
from .ledger import FAILED, OWED, PENDING, SETTLED, JobBook, JobEntry
from .observers import Observers
from .pipeline import Pipeline
from .result import TERMINAL_STATES
from .submit import SKIPPED, JobSpec, Submitter, TokenLookup
from .tracing import trace_id
from .vocabulary import Outcome
from .vocabulary import SweepReport as SweepReport

log = structlog.get_logger("asrd.jobs")

STATES = ("owed", "settled", "overdue", "failed")
# What ``since`` accepts (``asrd jobs --since``, ``GET /v1/jobs?since=``; the API's OpenAPI
# document says the same): a duration ago, or an RFC 3339 date-time, the ISO 8601 profile with
# seconds and a UTC offset.
SINCE_DURATION = r"(\d{1,9}(?:\.\d{1,6})?)([smhd])"
_DURATION = re.compile(SINCE_DURATION)
_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def parse_since(text: str, now: float) -> float:
    """``90s``, ``30m``, ``2h``, ``1d`` ago, or an RFC 3339 time. Raises ValueError."""
    m = _DURATION.fullmatch(text)
    if m:
        return now - float(m.group(1)) * _UNIT_S[m.group(2)]
    if not _RFC3339.fullmatch(text):
        raise ValueError(
            f"since {text!r} is neither a duration (90s, 30m, 2h, 1d) nor an RFC 3339 time "
            "(e.g. 2026-01-31T08:00:00+00:00)"
        )
    try:
        return datetime.fromisoformat(text.upper()).timestamp()
    except ValueError as exc:  # a day or an hour that does not exist
        raise ValueError(f"since {text!r}: {exc}") from None


def select(
    ledger: JobBook, state: str | None, since: float | None, now: float, limit: int = 1000
) -> list[JobEntry]:
    """Jobs in one of ``STATES`` (all when None); ``owed`` includes creates still pending."""
    if state is not None and state not in STATES:
        raise ValueError(f"state must be one of {', '.join(STATES)}, not {state!r}")
    if state == "overdue":
        return ledger.list_jobs((PENDING, OWED), since, now, limit)
    statuses = {"owed": (PENDING, OWED), "settled": (SETTLED,), "failed": (FAILED,)}
    return ledger.list_jobs(statuses.get(state or "", ()), since, None, limit)


def job_gauges(ledger: JobBook, now: float | None = None) -> dict[str, float]:
    """The metrics of what is owed (one function, whatever exports it)."""
    now = time.time() if now is None else now
    stats = ledger.job_stats(now)
    oldest = 0.0 if stats.oldest_owed_at is None else max(0.0, now - stats.oldest_owed_at)
    return {
        "jobs_owed": float(stats.owed),
        "jobs_overdue": float(stats.overdue),
        "jobs_oldest_owed_age_seconds": round(oldest, 3),
        "deliveries_pending": float(stats.deliveries_pending),
    }


def show(ledger: JobBook, ci: CiClient, job_id: str, now: float) -> dict[str, Any]:
    """The ledger's view of a job and CI's, side by side."""
    from .result import InvalidResult, normalise

    entry = ledger.job(job_id)
    view: dict[str, Any] = {
        "job_id": job_id,
        "ledger": entry.to_dict(now) if entry else None,
        "delivered_to": sorted(ledger.delivered(job_id)),
        "events": [event.to_dict() for event in ledger.events(job_id)],
    }
    kept = ledger.trace_parents([job_id]).get(job_id)
    if kept:  # only when the job was traced (docs/tracing.md)
        view["trace_id"] = trace_id(kept)
    try:
        detail = ci.get_job(job_id)
    except CiError as exc:
        view["ci"] = {"error": str(exc)}
        return view
    if detail is None:
        view["ci"] = None
        return view
    try:
        record = normalise(detail).to_dict()
    except InvalidResult as exc:
        view["ci"] = {"error": str(exc), "state": detail.get("State")}
        return view
    record.pop("raw", None)
    record.pop("segments", None)
    view["ci"] = record
    return view


def sweep_overdue(
    ci: CiClient,
    pipeline: Pipeline,
    ledger: JobBook,
    lookup: TokenLookup,
    observers: Observers,
    batch: int = 10,
    limit: int = 1000,
    now: float | None = None,
) -> SweepReport:
    """Look every overdue job up directly (multi-id describes) and deliver those CI finished.

    A create whose answer was never seen (pending) is first looked up by its client token
    around its submit time. Jobs CI has not finished are reported and stay overdue.
    """
    now = time.time() if now is None else now
    report = SweepReport()
    overdue = ledger.overdue_jobs(now, limit)
    ids: list[str] = []
    for entry in overdue:
        if entry.job_id is not None:
            ids.append(entry.job_id)
            continue
        job_id = _resolve_pending(entry, ledger, lookup, report)
        if job_id is not None:
            ids.append(job_id)
    details = ci.describe_jobs(ids, batch) if ids else {}
    finished: dict[str, JobsDetail] = {}
    for job_id in ids:
        report.checked += 1
        detail = details.get(job_id)
        if detail is None:
            reason = "CI does not know this job (NonExistJobIds)"
            known = ledger.job(job_id)
            if known is not None:
                ledger.note_check(job_id, "", reason)
                ledger.fail_job(known.client_token, reason)
            report.failed[job_id] = reason
            continue
        state = str(detail.get("State", ""))
        if state not in TERMINAL_STATES:
            ledger.note_check(job_id, state, f"still {state} at CI past its deadline")
            report.still_running[job_id] = state
            continue
        finished[job_id] = detail
    # The finished ones in one batch, as callbacks are delivered.
    for job_id, verdict in (pipeline.deliver_details(finished) if finished else {}).items():
        state = str(finished[job_id].get("State", ""))
        if verdict.outcome is Outcome.DONE:
            report.delivered.append(job_id)
            log.info("deadline sweep delivered an overdue job", job_id=job_id, state=state)
        else:
            ledger.note_check(job_id, state, verdict.reason)
            report.failed[job_id] = verdict.reason
    for job_id, state in report.still_running.items():
        log.warning("overdue job not finished at CI", job_id=job_id, ci_state=state)
    for key, reason in report.failed.items():
        log.warning("overdue job could not be delivered", job=key, reason=reason)
    observers.deadline_sweep(report)
    log.info(
        "deadline sweep",
        overdue=len(overdue),
        delivered=len(report.delivered),
        unfinished=len(report.still_running),
        failed=len(report.failed),
    )
    return report


def _resolve_pending(
    entry: JobEntry, ledger: JobBook, lookup: TokenLookup, report: SweepReport
) -> str | None:
    try:
        job_id = lookup.find(entry.client_token, entry.submitted_at, entry.submitted_at)
    except CiError as exc:
        report.failed[entry.client_token] = f"client token look-up failed: {exc}"
        return None
    if job_id is None:
        reason = "the create never reached CI (no job carries its client token)"
        ledger.fail_job(entry.client_token, reason)
        report.failed[entry.client_token] = reason
        return None
    ledger.record_job(
        JobEntry(entry.client_token, job_id, entry.input, OWED, entry.submitted_at,
                 entry.deadline_at)
    )  # fmt: skip
    report.adopted.append(job_id)
    return job_id


class JobService:
    """``POST /v1/jobs`` and ``GET /v1/jobs`` of the sidecar API: ``(status, body)`` answers."""

    FIELDS = (
        "input", "url", "output", "output_bucket", "output_region", "user_data", "job_level",
        "template_id", "client_token",
    )  # fmt: skip

    def __init__(self, submitter: Submitter, ledger: JobBook) -> None:
        self._submitter = submitter
        self._ledger = ledger

    def submit(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        unknown = sorted(set(body) - set(self.FIELDS))
        if unknown:
            return 400, {"error": f"unknown field(s): {', '.join(unknown)}"}
        for key in self.FIELDS:
            value = body.get(key)
            wanted = int if key == "job_level" else str
            if value is not None and (not isinstance(value, wanted) or isinstance(value, bool)):
                return 400, {"error": f"{key} must be {'an integer' if wanted is int else 'text'}"}
        token = body.get("client_token") or clienttoken.fresh()
        spec = JobSpec(
            input_object=body.get("input"),
            input_url=body.get("url"),
            output_object=body.get("output"),
            output_bucket=body.get("output_bucket"),
            output_region=body.get("output_region"),
            user_data=body.get("user_data"),
            job_level=body.get("job_level"),
            template_id=body.get("template_id"),
            client_token=token,
        )
        try:
            outcome = self._submitter.submit(spec, token)
        except ValueError as exc:
            return 400, {"error": str(exc)}
        if not outcome.ok:
            status = 400 if outcome.permanent else 502
            return status, {"error": outcome.error, "code": outcome.error_code,
                            "client_token": token}  # fmt: skip
        answer = {"job_id": outcome.job_id, "client_token": token, "status": outcome.status}
        return (200 if outcome.status == SKIPPED else 201), answer

    def listing(self, query: dict[str, str]) -> tuple[int, dict[str, Any]]:
        now = time.time()
        try:
            since = parse_since(query["since"], now) if "since" in query else None
            limit = int(query.get("limit") or "1000")
            if not 1 <= limit <= 10_000:
                raise ValueError("limit must be between 1 and 10000")
            entries = select(self._ledger, query.get("state") or None, since, now, limit)
        except ValueError as exc:
            return 400, {"error": str(exc)}
        return 200, {"jobs": [e.to_dict(now) for e in entries]}
