"""The ledger in memory: every operation of the SQL ledger over dicts, under one lock.

For fast tests of the stages (``asrd.testing``): no file, no server, the same answers as the
SQL backends (the tests of ``tests/test_ledger.py`` that take its ``ledger`` fixture run
against each). Not a
backend ``open_ledger`` offers: nothing survives the process.

``outage``: while set, every call raises ``LedgerUnavailable`` with it, as a full disk or a
lost server would.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from .types import (
    FAILED,
    OPEN_STATUSES,
    OWED,
    PENDING,
    SETTLED,
    Attempt,
    JobEntry,
    JobEvent,
    JobQuery,
    JobStats,
    LedgerUnavailable,
    LedgerWrites,
    LockSession,
    UsageRow,
)

_REASON = 500  # the SQL ledger keeps this much of a reason


@dataclass
class _Attempts:
    count: int
    first_at: float
    last_reason: str = ""


@dataclass(frozen=True)
class _Event:
    id: int
    job_id: str
    at: float
    stage: str
    detail: str


@dataclass(frozen=True)
class _Usage:
    at: float
    queue_id: str
    engine: str
    audio_seconds: float


def _failed(ci_state: str | None) -> bool:
    return ci_state in ("Failed", "Cancel")


class MemoryLedger:
    """``asrd.ledger.Ledger`` in memory, thread-safe."""

    def __init__(self) -> None:
        self.outage = ""
        self._lock = threading.RLock()
        self._deliveries: dict[tuple[str, str], float] = {}
        self._not_wanted: dict[tuple[str, str], float] = {}
        self._claims: dict[str, tuple[str, float]] = {}
        self._attempts: dict[str, _Attempts] = {}
        self._jobs: dict[str, JobEntry] = {}  # by client token
        self._traces: dict[str, str] = {}  # job id -> trace context
        self._events: list[_Event] = []
        self._usage: dict[str, _Usage] = {}

    def _check(self) -> None:
        if self.outage:
            raise LedgerUnavailable(self.outage)

    def _event(self, job_id: str, at: float, stage: str, detail: str) -> None:
        self._events.append(_Event(len(self._events) + 1, job_id, at, stage, detail))

    def _by_id(self, job_id: str) -> JobEntry | None:
        return next((e for e in self._jobs.values() if e.job_id == job_id), None)

    def _sinks(self, table: dict[tuple[str, str], float], job_id: str) -> set[str]:
        return {sink for (job, sink) in table if job == job_id}

    # -- attempts -------------------------------------------------------------------------
    def begin_attempts(self, message_keys: Sequence[str]) -> dict[str, Attempt]:
        now = time.time()
        with self._lock:
            self._check()
            out: dict[str, Attempt] = {}
            for key in message_keys:
                row = self._attempts.get(key)
                if row is None:
                    row = self._attempts[key] = _Attempts(1, now)
                else:
                    row.count += 1
                out[key] = Attempt(row.count, row.first_at, row.last_reason)
            return out

    def note_failure(self, message_key: str, reason: str) -> None:
        with self._lock:
            self._check()
            row = self._attempts.get(message_key)
            if row is not None:
                row.last_reason = reason[:_REASON]

    def undo_attempts(self, message_keys: Sequence[str]) -> None:
        with self._lock:
            self._check()
            for key in message_keys:
                row = self._attempts.get(key)
                if row is None:
                    continue
                if row.count <= 1:
                    del self._attempts[key]
                else:
                    row.count -= 1

    # -- deliveries and claims ------------------------------------------------------------
    def finished_many(self, job_ids: Sequence[str]) -> dict[str, set[str]]:
        with self._lock:
            self._check()
            return {j: self._finished(j) for j in job_ids}

    def _finished(self, job_id: str) -> set[str]:
        return self._sinks(self._deliveries, job_id) | self._sinks(self._not_wanted, job_id)

    def claim_jobs(self, job_ids: Sequence[str], owner: str, lease_s: float) -> set[str]:
        now = time.time()
        with self._lock:
            self._check()
            claimed: set[str] = set()
            for job_id in job_ids:
                held = self._claims.get(job_id)
                if held is None or held[1] < now or held[0] == owner:
                    self._claims[job_id] = (owner, now + lease_s)
                    claimed.add(job_id)
            return claimed

    def release_jobs(self, job_ids: Sequence[str], owner: str) -> None:
        with self._lock:
            self._check()
            for job_id in job_ids:
                if self._claims.get(job_id, ("", 0.0))[0] == owner:
                    del self._claims[job_id]

    def commit(self, writes: LedgerWrites) -> None:
        now = time.time()
        with self._lock:
            self._check()
            for job_id, sink in writes.delivered:
                if (job_id, sink) not in self._deliveries:
                    self._event(job_id, now, "delivered", sink)
                    self._deliveries[job_id, sink] = now
            for job_id, sink in writes.not_wanted:
                if (job_id, sink) not in self._not_wanted:
                    self._event(job_id, now, "not selected", sink)
                    self._not_wanted[job_id, sink] = now
            for job_id, ci_state in writes.settled:
                self._settle(job_id, ci_state, writes.tokens.get(job_id), now)
            for key in writes.cleared:
                self._attempts.pop(key, None)
            for job_id in writes.release:
                if self._claims.get(job_id, ("", 0.0))[0] == writes.owner:
                    del self._claims[job_id]
            for u in writes.usage:
                if u.job_id not in self._usage:
                    self._usage[u.job_id] = _Usage(now, u.queue_id, u.engine, u.audio_seconds)

    def _settle(self, job_id: str, ci_state: str | None, token: str | None, now: float) -> None:
        entry = self._by_id(job_id)
        if entry is None and token is not None:
            # The submit has not recorded the id yet (sql.py says when).
            by_token = self._jobs.get(token)
            entry = by_token if by_token is not None and by_token.job_id is None else None
        if entry is None or entry.status not in OPEN_STATUSES:
            return
        detail = f"CI state {ci_state}" if ci_state else ""
        self._event(job_id, now, "failed" if _failed(ci_state) else "settled", detail)
        self._jobs[entry.client_token] = replace(
            entry,
            job_id=job_id,
            status=FAILED if _failed(ci_state) else SETTLED,
            settled_at=now,
            ci_state=entry.ci_state if ci_state is None else ci_state,
        )

    # -- the job book ---------------------------------------------------------------------
    def delivered(self, job_id: str) -> set[str]:
        with self._lock:
            self._check()
            return self._sinks(self._deliveries, job_id)

    def finished_sinks(self, job_id: str) -> set[str]:
        with self._lock:
            self._check()
            return self._finished(job_id)

    def job_by_token(self, client_token: str) -> JobEntry | None:
        with self._lock:
            self._check()
            return self._jobs.get(client_token)

    def set_trace_parent(self, job_id: str, trace_parent: str) -> None:
        with self._lock:
            self._check()
            self._traces[job_id] = trace_parent

    def trace_parents(self, job_ids: Sequence[str]) -> dict[str, str]:
        with self._lock:
            self._check()
            return {j: self._traces[j] for j in job_ids if j in self._traces}

    def job(self, job_id: str) -> JobEntry | None:
        with self._lock:
            self._check()
            return self._by_id(job_id)

    def record_pending(self, entry: JobEntry) -> None:
        with self._lock:
            self._check()
            known = self._jobs.get(entry.client_token)
            if known is None:
                self._jobs[entry.client_token] = JobEntry(
                    entry.client_token, None, entry.input, PENDING, entry.submitted_at,
                    entry.deadline_at, queue_id=entry.queue_id, user_data=entry.user_data,
                )  # fmt: skip
            elif known.status == FAILED and known.job_id is None:
                # A create CI refused starts again; any other entry is kept.
                self._jobs[entry.client_token] = replace(
                    known, status=PENDING, submitted_at=entry.submitted_at,
                    deadline_at=entry.deadline_at, settled_at=None, reason="",
                    queue_id=entry.queue_id, user_data=entry.user_data,
                )  # fmt: skip

    def record_job(self, entry: JobEntry) -> None:
        assert entry.job_id is not None
        now = time.time()
        with self._lock:
            self._check()
            known = self._jobs.get(entry.client_token)
            if known is None:
                self._jobs[entry.client_token] = JobEntry(
                    entry.client_token, entry.job_id, entry.input, OWED, entry.submitted_at,
                    entry.deadline_at, queue_id=entry.queue_id, user_data=entry.user_data,
                )  # fmt: skip
            else:
                self._jobs[entry.client_token] = replace(
                    known,
                    job_id=entry.job_id,
                    reason="",
                    status=OWED if _reopens(known) else known.status,
                    queue_id=entry.queue_id or known.queue_id,
                    user_data=entry.user_data or known.user_data,
                )
            stages = {e.stage for e in self._events if e.job_id == entry.job_id}
            if "submitted" not in stages:
                self._event(entry.job_id, entry.submitted_at, "submitted", entry.input)
            if "created" not in stages:
                self._event(entry.job_id, now, "created", f"client token {entry.client_token}")

    def fail_job(self, client_token: str, reason: str) -> None:
        now = time.time()
        with self._lock:
            self._check()
            known = self._jobs.get(client_token)
            if known is None or known.status not in OPEN_STATUSES:
                return
            if known.job_id is not None:
                self._event(known.job_id, now, "failed", reason[:_REASON])
            self._jobs[client_token] = replace(
                known, status=FAILED, settled_at=now, reason=reason[:_REASON]
            )

    def note_check(self, job_id: str, ci_state: str, reason: str = "") -> None:
        now = time.time()
        with self._lock:
            self._check()
            known = self._by_id(job_id)
            if known is not None:
                self._jobs[known.client_token] = replace(
                    known, ci_state=ci_state, checked_at=now, reason=reason[:_REASON]
                )
            detail = f"CI state {ci_state}" + (f": {reason[:_REASON]}" if reason else "")
            self._event(job_id, now, "checked", detail)

    def list_jobs(
        self, statuses: tuple[str, ...], since: float | None, overdue_at: float | None, limit: int
    ) -> list[JobEntry]:
        query = JobQuery(statuses=statuses, since=since, overdue_at=overdue_at, limit=limit)
        return self.browse_jobs(query)

    def overdue_jobs(self, now: float, limit: int) -> list[JobEntry]:
        with self._lock:
            self._check()
            due = [
                e for e in self._jobs.values() if e.status in OPEN_STATUSES and e.deadline_at < now
            ]
        due.sort(key=lambda e: (e.checked_at or 0.0, e.deadline_at))
        return due[:limit]

    def job_stats(self, now: float) -> JobStats:
        with self._lock:
            self._check()
            owed = [e for e in self._jobs.values() if e.status in OPEN_STATUSES]
            pending = len(self._attempts)
        return JobStats(
            len(owed),
            sum(1 for e in owed if e.deadline_at < now),
            min((e.submitted_at for e in owed), default=None),
            pending,
        )

    def browse_jobs(self, query: JobQuery) -> list[JobEntry]:
        q = query

        def wanted(e: JobEntry) -> bool:
            return (
                (not q.statuses or e.status in q.statuses)
                and (q.overdue_at is None or e.deadline_at < q.overdue_at)
                and (q.since is None or e.submitted_at >= q.since)
                and (q.until is None or e.submitted_at < q.until)
                and e.input.startswith(q.input_prefix)
                and (not q.job_id or e.job_id == q.job_id)
                and (not q.queue_id or e.queue_id == q.queue_id)
                and q.user_data.lower() in e.user_data.lower()
                and (q.before is None or (e.submitted_at, e.client_token) < q.before)
            )

        with self._lock:
            self._check()
            found = [e for e in self._jobs.values() if wanted(e)]
        found.sort(key=lambda e: (e.submitted_at, e.client_token), reverse=True)
        return found[: q.limit]

    def status_counts(self) -> dict[str, int]:
        with self._lock:
            self._check()
            counts: dict[str, int] = {}
            for e in self._jobs.values():
                counts[e.status] = counts.get(e.status, 0) + 1
            return counts

    def per_hour(self, column: str, start: float, hours: int) -> list[int]:
        if column not in ("submitted_at", "settled_at"):
            raise ValueError(f"per_hour: no column {column!r}")
        buckets = [0] * hours
        with self._lock:
            self._check()
            for e in self._jobs.values():
                at = e.submitted_at if column == "submitted_at" else e.settled_at
                if at is not None and start <= at < start + hours * 3600:
                    buckets[int((at - start) // 3600)] += 1
        return buckets

    def deliveries_per_sink(self) -> dict[str, int]:
        with self._lock:
            self._check()
            counts: dict[str, int] = {}
            for _, sink in self._deliveries:
                counts[sink] = counts.get(sink, 0) + 1
        return dict(sorted(counts.items()))

    def events(self, job_id: str) -> list[JobEvent]:
        with self._lock:
            self._check()
            mine = sorted(
                (e for e in self._events if e.job_id == job_id), key=lambda e: (e.at, e.id)
            )
        return [JobEvent(e.at, e.stage, e.detail) for e in mine]

    def usage(self, since: float, by: str) -> list[UsageRow]:
        def key(u: _Usage) -> str:
            if by == "day":
                return datetime.fromtimestamp(int(u.at) // 86400 * 86400, UTC).date().isoformat()
            return {"queue": u.queue_id, "engine": u.engine}[by]

        groups: dict[tuple[str, str], list[float]] = {}
        with self._lock:
            self._check()
            for u in self._usage.values():
                if u.at >= since:
                    groups.setdefault((key(u), u.engine), []).append(u.audio_seconds)
        return [UsageRow(k, engine, len(s), sum(s)) for (k, engine), s in sorted(groups.items())]

    def forget_delivery(self, job_id: str, sink: str) -> bool:
        with self._lock:
            self._check()
            had = self._deliveries.pop((job_id, sink), None) is not None
            self._event(job_id, time.time(), "redelivery asked", sink)
            return had

    def note_events(self, events: Sequence[tuple[str, str, str]], at: float) -> None:
        with self._lock:
            self._check()
            for job_id, stage, text in events:
                self._event(job_id, at, stage, text[:_REASON])

    def note_job_events(self, events: Sequence[tuple[str, float, str, str]]) -> None:
        with self._lock:
            self._check()
            known = {e.job_id for e in self._jobs.values()}
            for job_id, at, stage, text in events:
                if job_id in known:  # another deployment's job: not ours to record
                    self._event(job_id, at, stage, text[:_REASON])

    # -- upkeep -----------------------------------------------------------------------------
    def prune(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        with self._lock:
            self._check()
            removed = 0
            for table in (self._deliveries, self._not_wanted):
                old = [k for k, at in table.items() if at < cutoff]
                for k in old:
                    del table[k]
                removed += len(old) if table is self._deliveries else 0
            old_attempts = [key for key, a in self._attempts.items() if a.first_at < cutoff]
            for key in old_attempts:
                del self._attempts[key]
            for job_id in [j for j, (_, until) in self._claims.items() if until < cutoff]:
                del self._claims[job_id]
            old_jobs = [
                t
                for t, e in self._jobs.items()
                if e.status in (SETTLED, FAILED)
                and e.settled_at is not None
                and e.settled_at < cutoff
            ]
            for t in old_jobs:
                del self._jobs[t]
            for job_id in [j for j, u in self._usage.items() if u.at < cutoff]:
                del self._usage[job_id]
            # A timeline goes with its job: kept while the job is still owed.
            owed = {e.job_id for e in self._jobs.values() if e.status in OPEN_STATUSES}
            self._events = [e for e in self._events if e.at >= cutoff or e.job_id in owed]
            return removed + len(old_attempts) + len(old_jobs)

    def lock_sessions(self) -> Callable[[], LockSession] | None:
        return None  # one process: it leads

    def probe(self) -> None:
        with self._lock:
            self._check()

    def close(self) -> None:
        pass


def _reopens(known: JobEntry) -> bool:
    """Whether recording a created job makes ``known`` owed: a create waiting for its answer, or
    one CI refused before; not a job a delivery already settled by its client token."""
    return known.status == PENDING or (known.status == FAILED and known.job_id is None)
