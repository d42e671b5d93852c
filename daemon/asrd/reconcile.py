"""The reconciler: finds finished jobs whose callback never arrived and delivers them through the
same fetch-and-dispatch path as a callback would.

CI can drop a notification (or it can expire unread on the broker); listing the queue's
terminal jobs and checking the ledger closes that gap. Jobs that ended moments ago are left
alone for ``grace_s``, since their callback is probably on its way.
"""

from __future__ import annotations

import itertools
import time
from datetime import datetime, timedelta, timezone

import structlog

from .ci import CiClient
from .observers import Observers
from .pipeline import Pipeline
from .vocabulary import Outcome, ReconcileReport

Report = ReconcileReport  # the name callers know

log = structlog.get_logger("asrd.reconcile")

CI_TIME = "%Y-%m-%dT%H:%M:%S%z"
# CI's own timestamps are Beijing time; any offset works for the filter.
_CST = timezone(timedelta(hours=8))
_PAGE = 100  # CI's list page: the jobs checked and delivered together


def reconcile(
    ci: CiClient,
    pipeline: Pipeline,
    queue_id: str,
    lookback_s: float,
    grace_s: float,
    now: datetime | None = None,
    observers: Observers | None = None,
) -> ReconcileReport:
    """One pass over jobs created in ``[now - lookback_s, now - grace_s]`` that have ended."""
    started = time.monotonic()
    now = now or datetime.now(_CST)
    start = (now - timedelta(seconds=lookback_s)).astimezone(_CST).strftime(CI_TIME)
    end = (now - timedelta(seconds=grace_s)).astimezone(_CST).strftime(CI_TIME)
    report = ReconcileReport()
    jobs = ci.list_jobs(queue_id=queue_id or None, states="Success,Failed", start=start, end=end)
    # A listed page at a time: one ledger read finds the missing jobs, one batch delivers them
    # (the pipeline reads each back from CI: the listing is only a hint, like a callback).
    ids = (str(d.get("JobId", "")) for d in jobs)
    while page := list(itertools.islice(ids, _PAGE)):
        report.checked += len(page)
        missing = pipeline.incomplete(page)
        report.already += len(page) - len(missing)
        if missing:
            _deliver(pipeline, missing, report)
    log.info(
        "reconcile pass",
        checked=report.checked,
        delivered=len(report.delivered),
        failed=len(report.failed),
    )
    (observers or Observers()).reconcile_pass(report, time.monotonic() - started)
    return report


def _deliver(pipeline: Pipeline, job_ids: list[str], report: ReconcileReport) -> None:
    for job_id, verdict in pipeline.deliver_jobs(job_ids).items():
        if verdict.outcome is Outcome.DONE:
            report.delivered.append(job_id)
            log.info("reconciled a job whose callback never came", job_id=job_id)
        else:
            report.failed[job_id] = verdict.reason
            log.warning("reconcile could not deliver", job_id=job_id, reason=verdict.reason)
