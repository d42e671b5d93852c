"""Every ledger operation, written once in SQL that both SQLite and PostgreSQL run
(``SqlLedger``); a backend (``sqlite``, ``postgres``) adds its table definitions, its
schema-version bookkeeping and how a statement is run."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

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
    LedgerWrites,
    LockSession,
    UsageRow,
)

# Version 1: deliveries, attempts without first_at. 2: attempts.first_at. 3: the jobs table.
# 4: not_wanted (sinks whose route does not select a job). 5: claims (who delivers a job now).
# 6: events (each job's timeline); jobs.queue_id and jobs.user_data (the console's filters);
# usage (each delivered job's audio length, queue and engine model). 7: jobs.trace_parent (the
# W3C trace context of the job's trace, when tracing is on).
SCHEMA_VERSION = 7

_JOB_COLUMNS = (
    "client_token, job_id, input, status, submitted_at, deadline_at, settled_at, ci_state,"
    " checked_at, reason, queue_id, user_data"
)
# Columns added to the jobs table after it was first made: (name, definition), for migrations.
JOB_COLUMNS_ADDED = (
    ("queue_id", "TEXT NOT NULL DEFAULT ''"),
    ("user_data", "TEXT NOT NULL DEFAULT ''"),
    ("trace_parent", "TEXT"),
)


def _entry(row: tuple[object, ...]) -> JobEntry:
    return JobEntry(
        client_token=str(row[0]),
        job_id=None if row[1] is None else str(row[1]),
        input=str(row[2]),
        status=str(row[3]),
        submitted_at=float(str(row[4])),
        deadline_at=float(str(row[5])),
        settled_at=None if row[6] is None else float(str(row[6])),
        ci_state=str(row[7] or ""),
        checked_at=None if row[8] is None else float(str(row[8])),
        reason=str(row[9] or ""),
        queue_id=str(row[10] or ""),
        user_data=str(row[11] or ""),
    )


Params = Sequence[object]
_MARK_DELIVERED = (
    "INSERT INTO deliveries (job_id, sink, delivered_at) VALUES (?, ?, ?)"
    " ON CONFLICT (job_id, sink) DO NOTHING"
)
_CLAIM = (
    "INSERT INTO claims (job_id, owner, until) VALUES (?, ?, ?) ON CONFLICT (job_id) DO UPDATE"
    " SET owner = excluded.owner, until = excluded.until"
    " WHERE claims.until < ? OR claims.owner = excluded.owner RETURNING job_id"
)
_RELEASE = "DELETE FROM claims WHERE job_id = ? AND owner = ?"
_USAGE = (
    "INSERT INTO usage (job_id, at, queue_id, engine, audio_seconds) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (job_id) DO NOTHING"
)
# Timeline events are written in the transaction of the change they record, and only when it is
# a change (a duplicate callback's delivery, or a settle of a settled job, adds nothing).
_EVENT = "INSERT INTO events (job_id, at, stage, detail) VALUES (?, ?, ?, ?)"
_EVENT_KNOWN = (
    "INSERT INTO events (job_id, at, stage, detail) SELECT ?, ?, ?, ?"
    " WHERE EXISTS (SELECT 1 FROM jobs WHERE job_id = ?)"
)
_EVENT_DELIVERED = (
    "INSERT INTO events (job_id, at, stage, detail) SELECT ?, ?, 'delivered', ?"
    " WHERE NOT EXISTS (SELECT 1 FROM deliveries WHERE job_id = ? AND sink = ?)"
)
_EVENT_NOT_WANTED = (
    "INSERT INTO events (job_id, at, stage, detail) SELECT ?, ?, 'not selected', ?"
    " WHERE NOT EXISTS (SELECT 1 FROM not_wanted WHERE job_id = ? AND sink = ?)"
)
_EVENT_ONCE = (
    "INSERT INTO events (job_id, at, stage, detail) SELECT ?, ?, ?, ?"
    " WHERE NOT EXISTS (SELECT 1 FROM events WHERE job_id = ? AND stage = ?)"
)
# The open job a settle is for: the row with its id, or the row of its client token while the
# submit has not recorded the id yet (never one whose id another row already holds).
_OPEN_JOB = (
    "status IN (?, ?) AND (job_id = ? OR (job_id IS NULL AND client_token = ?"
    " AND NOT EXISTS (SELECT 1 FROM jobs AS other WHERE other.job_id = ?)))"
)
_EVENT_SETTLED = (
    f"INSERT INTO events (job_id, at, stage, detail) SELECT ?, ?, ?, ? WHERE EXISTS"  # noqa: S608
    f" (SELECT 1 FROM jobs WHERE {_OPEN_JOB})"
)
_EVENT_FAILED = (
    "INSERT INTO events (job_id, at, stage, detail) SELECT job_id, ?, 'failed', ? FROM jobs"
    " WHERE client_token = ? AND job_id IS NOT NULL AND status IN (?, ?)"
)


def _delivered_statements(job_id: str, sink: str, now: float) -> list[tuple[str, Params]]:
    return [
        (_EVENT_DELIVERED, (job_id, now, sink, job_id, sink)),
        (_MARK_DELIVERED, (job_id, sink, now)),
    ]


def _not_wanted_statements(job_id: str, sink: str, now: float) -> list[tuple[str, Params]]:
    return [
        (_EVENT_NOT_WANTED, (job_id, now, sink, job_id, sink)),
        (_NOT_WANTED, (job_id, sink, now)),
    ]


def _settled_statements(
    job_id: str, ci_state: str | None, token: str | None, now: float
) -> list[tuple[str, Params]]:
    stage = "failed" if ci_state in ("Failed", "Cancel") else "settled"
    detail = f"CI state {ci_state}" if ci_state else ""
    event = (_EVENT_SETTLED, (job_id, now, stage, detail, *_open_job(job_id, token)))
    return [event, _settle_statement(job_id, ci_state, token, now)]


def _open_job(job_id: str, token: str | None) -> Params:
    return (*OPEN_STATUSES, job_id, token, job_id)


_NOT_WANTED = (
    "INSERT INTO not_wanted (job_id, sink, decided_at) VALUES (?, ?, ?)"
    " ON CONFLICT (job_id, sink) DO NOTHING"
)
_BEGIN_ATTEMPT = (
    "INSERT INTO attempts (message_key, count, last_reason, first_at)"
    " VALUES (?, 1, '', ?) ON CONFLICT (message_key) DO UPDATE SET"
    " count = attempts.count + 1 RETURNING count, first_at, last_reason"
)
Rows = list[tuple[Any, ...]]


def _settle_statement(
    job_id: str, ci_state: str | None, token: str | None, now: float
) -> tuple[str, Params]:
    status = FAILED if ci_state in ("Failed", "Cancel") else SETTLED
    return (
        f"UPDATE jobs SET status = ?, settled_at = ?, ci_state = COALESCE(?, ci_state),"  # noqa: S608
        f" job_id = ? WHERE {_OPEN_JOB}",
        (status, now, ci_state, job_id, *_open_job(job_id, token)),
    )


_PROBE_KEY = "asrd:probe"


class SqlLedger:
    """Every ledger operation, written once in SQL both SQLite and PostgreSQL run.

    Statements use ``?`` placeholders; a backend implements ``_run`` (one statement) and
    ``_run_all`` (several in one transaction) and translates placeholders if it must.
    """

    def _run(self, sql: str, params: Params = ()) -> tuple[Rows, int]:
        """Rows the statement returned (if any) and its row count."""
        raise NotImplementedError

    def _run_all(self, statements: Sequence[tuple[str, Params]]) -> list[int]:
        """Run the statements in one transaction; their row counts."""
        raise NotImplementedError

    def _returning_all(
        self, statements: Sequence[tuple[str, Params]], optional: bool = False
    ) -> Rows:
        """Run ``... RETURNING`` statements in one transaction; the first row of each (of each
        that returned one, when ``optional``)."""
        raise NotImplementedError

    def delivered(self, job_id: str) -> set[str]:
        rows, _ = self._run("SELECT sink FROM deliveries WHERE job_id = ?", (job_id,))
        return {str(r[0]) for r in rows}

    def finished_sinks(self, job_id: str) -> set[str]:
        rows, _ = self._run(
            "SELECT sink FROM deliveries WHERE job_id = ?"
            " UNION ALL SELECT sink FROM not_wanted WHERE job_id = ?",
            (job_id, job_id),
        )
        return {str(r[0]) for r in rows}

    def note_failure(self, message_key: str, reason: str) -> None:
        self._run(
            "UPDATE attempts SET last_reason = ? WHERE message_key = ?",
            (reason[:500], message_key),
        )

    def undo_attempts(self, message_keys: Sequence[str]) -> None:
        statements: list[tuple[str, Params]] = []
        for key in message_keys:
            statements.append(("DELETE FROM attempts WHERE message_key = ? AND count <= 1", (key,)))
            statements.append(
                ("UPDATE attempts SET count = count - 1 WHERE message_key = ?", (key,))
            )
        self._run_all(statements)

    def begin_attempts(self, message_keys: Sequence[str]) -> dict[str, Attempt]:
        now = time.time()
        rows = self._returning_all([(_BEGIN_ATTEMPT, (key, now)) for key in message_keys])
        return {
            key: Attempt(int(r[0]), float(r[1]), str(r[2]))
            for key, r in zip(message_keys, rows, strict=True)
        }

    def claim_jobs(self, job_ids: Sequence[str], owner: str, lease_s: float) -> set[str]:
        now = time.time()
        rows = self._returning_all(
            [(_CLAIM, (job_id, owner, now + lease_s, now)) for job_id in job_ids], optional=True
        )
        return {str(r[0]) for r in rows}

    def release_jobs(self, job_ids: Sequence[str], owner: str) -> None:
        if job_ids:
            self._run_all([(_RELEASE, (job_id, owner)) for job_id in job_ids])

    def finished_many(self, job_ids: Sequence[str]) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {job_id: set() for job_id in job_ids}
        unique = list(found)
        for i in range(0, len(unique), 400):  # SQLite allows 999 parameters per statement
            chunk = unique[i : i + 400]
            marks = ", ".join("?" for _ in chunk)
            sql = (
                f"SELECT job_id, sink FROM deliveries WHERE job_id IN ({marks})"  # noqa: S608
                f" UNION ALL SELECT job_id, sink FROM not_wanted WHERE job_id IN ({marks})"
            )
            rows, _ = self._run(sql, [*chunk, *chunk])
            for job_id, sink in rows:
                found[str(job_id)].add(str(sink))
        return found

    def commit(self, writes: LedgerWrites) -> None:
        now = time.time()
        w = writes
        statements: list[tuple[str, Params]] = [
            st for job_id, sink in w.delivered for st in _delivered_statements(job_id, sink, now)
        ]
        statements += [
            st for job_id, sink in w.not_wanted for st in _not_wanted_statements(job_id, sink, now)
        ]
        statements += [
            st
            for job_id, state in w.settled
            for st in _settled_statements(job_id, state, w.tokens.get(job_id), now)
        ]
        statements += [("DELETE FROM attempts WHERE message_key = ?", (k,)) for k in w.cleared]
        statements += [(_RELEASE, (job_id, w.owner)) for job_id in w.release]
        statements += [
            (_USAGE, (u.job_id, now, u.queue_id, u.engine, u.audio_seconds)) for u in w.usage
        ]
        if statements:
            self._run_all(statements)

    def prune(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        counts = self._run_all(
            [
                ("DELETE FROM deliveries WHERE delivered_at < ?", (cutoff,)),
                ("DELETE FROM attempts WHERE first_at < ?", (cutoff,)),
                ("DELETE FROM not_wanted WHERE decided_at < ?", (cutoff,)),
                ("DELETE FROM claims WHERE until < ?", (cutoff,)),
                # Jobs still owed are kept whatever their age: they are what the ledger is for.
                (
                    "DELETE FROM jobs WHERE status IN (?, ?) AND settled_at < ?",
                    (SETTLED, FAILED, cutoff),
                ),
                ("DELETE FROM usage WHERE at < ?", (cutoff,)),
                # A timeline goes with its job: kept while the job is still owed.
                (
                    "DELETE FROM events WHERE at < ? AND job_id NOT IN (SELECT job_id FROM jobs"
                    " WHERE status IN (?, ?) AND job_id IS NOT NULL)",
                    (cutoff, *OPEN_STATUSES),
                ),
            ]
        )
        return counts[0] + counts[1] + counts[4]  # not_wanted and claims are bookkeeping

    # -- submitted jobs ------------------------------------------------------------------
    def _one(self, where: str, value: str) -> JobEntry | None:
        rows, _ = self._run(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where} = ?",  # noqa: S608 - fixed names
            (value,),
        )
        return _entry(rows[0]) if rows else None

    def job_by_token(self, client_token: str) -> JobEntry | None:
        return self._one("client_token", client_token)

    # -- tracing: the job's trace context (nullable; written only when tracing is on) ------
    def set_trace_parent(self, job_id: str, trace_parent: str) -> None:
        self._run("UPDATE jobs SET trace_parent = ? WHERE job_id = ?", (trace_parent, job_id))

    def trace_parents(self, job_ids: Sequence[str]) -> dict[str, str]:
        if not job_ids:
            return {}
        marks = ", ".join("?" * len(job_ids))
        rows, _ = self._run(
            f"SELECT job_id, trace_parent FROM jobs WHERE job_id IN ({marks})"  # noqa: S608
            " AND trace_parent IS NOT NULL",
            tuple(job_ids),
        )
        return {str(r[0]): str(r[1]) for r in rows}

    def job(self, job_id: str) -> JobEntry | None:
        return self._one("job_id", job_id)

    def record_pending(self, entry: JobEntry) -> None:
        # An entry whose create CI refused (failed, no job) starts again; any other is kept.
        self._run(
            "INSERT INTO jobs (client_token, input, status, submitted_at, deadline_at, queue_id,"
            " user_data) VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (client_token) DO UPDATE SET"
            " status = excluded.status, submitted_at = excluded.submitted_at,"
            " deadline_at = excluded.deadline_at, settled_at = NULL, reason = '',"
            " queue_id = excluded.queue_id, user_data = excluded.user_data"
            " WHERE jobs.status = ? AND jobs.job_id IS NULL",
            (entry.client_token, entry.input, PENDING, entry.submitted_at, entry.deadline_at,
             entry.queue_id, entry.user_data, FAILED),
        )  # fmt: skip

    def record_job(self, entry: JobEntry) -> None:
        assert entry.job_id is not None
        now = time.time()
        self._run_all(
            [
                (
                    "INSERT INTO jobs (client_token, job_id, input, status, submitted_at,"
                    " deadline_at, queue_id, user_data) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                    " ON CONFLICT (client_token) DO UPDATE"
                    # Owed unless a delivery settled the job by its token before this record
                    # (a job with an id is not reopened).
                    " SET job_id = excluded.job_id, reason = '', status = CASE"
                    " WHEN jobs.status = ? OR (jobs.status = ? AND jobs.job_id IS NULL) THEN ?"
                    " ELSE jobs.status END,"
                    # An adoption that does not know them keeps what the submit recorded.
                    " queue_id = CASE WHEN excluded.queue_id = '' THEN jobs.queue_id"
                    " ELSE excluded.queue_id END,"
                    " user_data = CASE WHEN excluded.user_data = '' THEN jobs.user_data"
                    " ELSE excluded.user_data END",
                    (
                        entry.client_token, entry.job_id, entry.input, OWED,
                        entry.submitted_at, entry.deadline_at, entry.queue_id, entry.user_data,
                        PENDING, FAILED, OWED,
                    ),
                ),
                (
                    _EVENT_ONCE,
                    (entry.job_id, entry.submitted_at, "submitted", entry.input,
                     entry.job_id, "submitted"),
                ),
                (
                    _EVENT_ONCE,
                    (entry.job_id, now, "created", f"client token {entry.client_token}",
                     entry.job_id, "created"),
                ),
            ]
        )  # fmt: skip

    def fail_job(self, client_token: str, reason: str) -> None:
        now = time.time()
        self._run_all(
            [
                (_EVENT_FAILED, (now, reason[:500], client_token, *OPEN_STATUSES)),
                (
                    "UPDATE jobs SET status = ?, settled_at = ?, reason = ? WHERE client_token = ?"
                    " AND status IN (?, ?)",
                    (FAILED, now, reason[:500], client_token, *OPEN_STATUSES),
                ),
            ]
        )

    def note_check(self, job_id: str, ci_state: str, reason: str = "") -> None:
        now = time.time()
        detail = f"CI state {ci_state}" + (f": {reason[:500]}" if reason else "")
        self._run_all(
            [
                (
                    "UPDATE jobs SET ci_state = ?, checked_at = ?, reason = ? WHERE job_id = ?",
                    (ci_state, now, reason[:500], job_id),
                ),
                (_EVENT, (job_id, now, "checked", detail)),
            ]
        )

    def list_jobs(
        self, statuses: tuple[str, ...], since: float | None, overdue_at: float | None, limit: int
    ) -> list[JobEntry]:
        clauses: list[str] = []
        params: list[object] = []
        if statuses:
            clauses.append(f"status IN ({', '.join('?' for _ in statuses)})")
            params.extend(statuses)
        if since is not None:
            clauses.append("submitted_at >= ?")
            params.append(since)
        if overdue_at is not None:
            clauses.append("deadline_at < ?")
            params.append(overdue_at)
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        # Only fixed clauses are joined; every value is a parameter.
        sql = f"SELECT {_JOB_COLUMNS} FROM jobs{where} ORDER BY submitted_at DESC LIMIT ?"  # noqa: S608
        rows, _ = self._run(sql, (*params, limit))
        return [_entry(r) for r in rows]

    def overdue_jobs(self, now: float, limit: int) -> list[JobEntry]:
        rows, _ = self._run(
            f"SELECT {_JOB_COLUMNS} FROM jobs WHERE status IN (?, ?) AND deadline_at < ?"  # noqa: S608
            " ORDER BY COALESCE(checked_at, 0), deadline_at LIMIT ?",
            (*OPEN_STATUSES, now, limit),
        )
        return [_entry(r) for r in rows]

    def job_stats(self, now: float) -> JobStats:
        rows, _ = self._run(
            "SELECT COUNT(*), SUM(CASE WHEN deadline_at < ? THEN 1 ELSE 0 END),"
            " MIN(submitted_at), (SELECT COUNT(*) FROM attempts) FROM jobs WHERE status IN (?, ?)",
            (now, *OPEN_STATUSES),
        )
        row = rows[0]
        oldest = None if row[2] is None else float(row[2])
        return JobStats(int(row[0]), int(row[1] or 0), oldest, int(row[3] or 0))

    # -- read-only views for people (the console) --------------------------------------------
    def browse_jobs(self, query: JobQuery) -> list[JobEntry]:
        clauses: list[str] = []
        params: list[object] = []
        if query.statuses:
            clauses.append(f"status IN ({', '.join('?' for _ in query.statuses)})")
            params.extend(query.statuses)
        if query.overdue_at is not None:
            clauses.append("deadline_at < ?")
            params.append(query.overdue_at)
        if query.since is not None:
            clauses.append("submitted_at >= ?")
            params.append(query.since)
        if query.until is not None:
            clauses.append("submitted_at < ?")
            params.append(query.until)
        if query.input_prefix:
            # substr, not LIKE: SQLite's LIKE ignores ASCII case, and a prefix holds % and _.
            clauses.append("substr(input, 1, ?) = ?")
            params.extend((len(query.input_prefix), query.input_prefix))
        if query.job_id:
            clauses.append("job_id = ?")
            params.append(query.job_id)
        if query.queue_id:
            clauses.append("queue_id = ?")
            params.append(query.queue_id)
        if query.user_data:
            escaped = query.user_data.replace("!", "!!").replace("%", "!%").replace("_", "!_")
            clauses.append("LOWER(user_data) LIKE LOWER(?) ESCAPE '!'")
            params.append(f"%{escaped}%")
        if query.before is not None:
            clauses.append("(submitted_at < ? OR (submitted_at = ? AND client_token < ?))")
            params.extend((query.before[0], query.before[0], query.before[1]))
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = (
            f"SELECT {_JOB_COLUMNS} FROM jobs{where}"  # noqa: S608 - fixed clauses, values bound
            " ORDER BY submitted_at DESC, client_token DESC LIMIT ?"
        )
        rows, _ = self._run(sql, (*params, query.limit))
        return [_entry(r) for r in rows]

    def status_counts(self) -> dict[str, int]:
        rows, _ = self._run("SELECT status, COUNT(*) FROM jobs GROUP BY status")
        return {str(r[0]): int(r[1]) for r in rows}

    def per_hour(self, column: str, start: float, hours: int) -> list[int]:
        if column not in ("submitted_at", "settled_at"):
            raise ValueError(f"per_hour: no column {column!r}")
        # One pass over the index range; the buckets are sums, the same SQL on both backends.
        buckets = ", ".join(
            f"SUM(CASE WHEN {column} >= ? AND {column} < ? THEN 1 ELSE 0 END)" for _ in range(hours)
        )
        bounds = [b for h in range(hours) for b in (start + h * 3600, start + (h + 1) * 3600)]
        sql = f"SELECT {buckets} FROM jobs WHERE {column} >= ? AND {column} < ?"  # noqa: S608
        rows, _ = self._run(sql, (*bounds, start, start + hours * 3600))
        return [int(v or 0) for v in rows[0]] if rows else [0] * hours

    def deliveries_per_sink(self) -> dict[str, int]:
        rows, _ = self._run("SELECT sink, COUNT(*) FROM deliveries GROUP BY sink ORDER BY sink")
        return {str(r[0]): int(r[1]) for r in rows}

    def events(self, job_id: str) -> list[JobEvent]:
        rows, _ = self._run(
            "SELECT at, stage, detail FROM events WHERE job_id = ? ORDER BY at, id", (job_id,)
        )
        return [JobEvent(float(r[0]), str(r[1]), str(r[2])) for r in rows]

    def usage(self, since: float, by: str) -> list[UsageRow]:
        # A UTC day is the Unix time divided by 86,400 in integers (on both backends).
        key = {"day": "CAST(at AS BIGINT) / 86400", "queue": "queue_id", "engine": "engine"}[by]
        rows, _ = self._run(
            f"SELECT {key}, engine, COUNT(*), SUM(audio_seconds) FROM usage"  # noqa: S608
            f" WHERE at >= ? GROUP BY {key}, engine ORDER BY {key}, engine",
            (since,),
        )
        if by == "day":
            days = [
                (datetime.fromtimestamp(int(r[0]) * 86400, UTC).date().isoformat(), r) for r in rows
            ]
            return [UsageRow(d, str(r[1]), int(r[2]), float(r[3] or 0)) for d, r in days]
        return [UsageRow(str(r[0]), str(r[1]), int(r[2]), float(r[3] or 0)) for r in rows]

    def forget_delivery(self, job_id: str, sink: str) -> bool:
        counts = self._run_all(
            [
                ("DELETE FROM deliveries WHERE job_id = ? AND sink = ?", (job_id, sink)),
                (_EVENT, (job_id, time.time(), "redelivery asked", sink)),
            ]
        )
        return counts[0] > 0

    def note_events(self, events: Sequence[tuple[str, str, str]], at: float) -> None:
        if events:
            self._run_all(
                [(_EVENT, (job_id, at, stage, text[:500])) for job_id, stage, text in events]
            )

    def note_job_events(self, events: Sequence[tuple[str, float, str, str]]) -> None:
        if events:
            self._run_all(
                [
                    (_EVENT_KNOWN, (job_id, at, stage, text[:500], job_id))
                    for job_id, at, stage, text in events
                ]
            )

    def lock_sessions(self) -> Callable[[], LockSession] | None:
        return None

    def probe(self) -> None:
        """A small write transaction, taken back: raises ``LedgerUnavailable`` while the ledger
        cannot be written."""
        self._run_all(
            [
                (
                    "INSERT INTO attempts (message_key, count, last_reason, first_at)"
                    " VALUES (?, 0, ?, 0)",
                    (_PROBE_KEY, "probe " * 64),
                ),
                ("DELETE FROM attempts WHERE message_key = ?", (_PROBE_KEY,)),
            ]
        )

    def close(self) -> None:
        raise NotImplementedError
