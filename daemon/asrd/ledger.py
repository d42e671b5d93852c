"""The delivery ledger: per job and sink, whether the record was delivered; per message, attempts;
per submitted job, whether a result is still owed.

It is what makes redeliveries, duplicate callbacks and restarts harmless: a sink already
recorded for a job is skipped. Attempt counts live here because the broker's redelivery
count resets when a consumer crashes. The jobs table remembers every job asrd submitted (by
client token, before the create is sent) until every selected sink has its result, so lost
create answers, re-runs of a manifest and jobs whose callback never came can all be found.
Backends are chosen by the URL's scheme (``open_ledger``): SQLite in WAL mode (the default; one
host) and PostgreSQL (several workers, hosts or pods sharing one ledger). Both run the same
statements (``_SqlLedger``); only the table definitions and the schema-version bookkeeping differ.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from .clienttoken import is_canary
from .config import LedgerSettings

# Version 1: deliveries, attempts without first_at. 2: attempts.first_at. 3: the jobs table.
# 4: not_wanted (sinks whose route does not select a job). 5: claims (who delivers a job now).
# 6: events (each job's timeline); jobs.queue_id and jobs.user_data (the console's filters);
# usage (each delivered job's audio length, queue and engine model). 7: jobs.trace_parent (the
# W3C trace context of the job's trace, when tracing is on).
SCHEMA_VERSION = 7
_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    job_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    delivered_at REAL NOT NULL,
    PRIMARY KEY (job_id, sink)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS not_wanted (
    job_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    decided_at REAL NOT NULL,
    PRIMARY KEY (job_id, sink)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS claims (
    job_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    message_key TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    last_reason TEXT NOT NULL,
    first_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS jobs (
    client_token TEXT PRIMARY KEY,
    job_id TEXT UNIQUE,
    input TEXT NOT NULL,
    status TEXT NOT NULL,
    submitted_at REAL NOT NULL,
    deadline_at REAL NOT NULL,
    settled_at REAL,
    ci_state TEXT NOT NULL DEFAULT '',
    checked_at REAL,
    reason TEXT NOT NULL DEFAULT '',
    queue_id TEXT NOT NULL DEFAULT '',
    user_data TEXT NOT NULL DEFAULT '',
    trace_parent TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status_deadline ON jobs (status, deadline_at);
CREATE INDEX IF NOT EXISTS jobs_submitted ON jobs (submitted_at);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,  -- the rowid: the order of events written together
    job_id TEXT NOT NULL,
    at REAL NOT NULL,
    stage TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, at);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
CREATE TABLE IF NOT EXISTS usage (
    job_id TEXT PRIMARY KEY,
    at REAL NOT NULL,
    queue_id TEXT NOT NULL,
    engine TEXT NOT NULL,
    audio_seconds REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_at ON usage (at);
"""
# Job status in the ledger. PENDING: the create was sent, its answer not (yet) seen. OWED: CI
# has the job, some selected sink does not have its result. SETTLED: every selected sink has
# it. FAILED: no result will come (CI ended the job Failed, or does not know it).
PENDING, OWED, SETTLED, FAILED = "pending", "owed", "settled", "failed"
OPEN_STATUSES = (PENDING, OWED)
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


@dataclass(frozen=True)
class JobEntry:
    """One submitted job as the ledger knows it."""

    client_token: str
    job_id: str | None
    input: str
    status: str
    submitted_at: float
    deadline_at: float
    settled_at: float | None = None
    ci_state: str = ""
    checked_at: float | None = None
    reason: str = ""
    queue_id: str = ""  # the CI queue it was submitted to ("" = not known)
    user_data: str = ""  # the UserData it was submitted with

    def overdue(self, now: float) -> bool:
        return self.status in OPEN_STATUSES and self.deadline_at < now

    def to_dict(self, now: float) -> dict[str, object]:
        return {
            "job_id": self.job_id,
            "client_token": self.client_token,
            "input": self.input,
            "status": self.status,
            "overdue": self.overdue(now),
            "submitted_at": _iso(self.submitted_at),
            "deadline_at": _iso(self.deadline_at),
            "settled_at": _iso(self.settled_at),
            "ci_state": self.ci_state or None,
            "checked_at": _iso(self.checked_at),
            "reason": self.reason or None,
            "canary": is_canary(self.client_token),
            "queue_id": self.queue_id or None,
            "user_data": self.user_data or None,
        }


@dataclass(frozen=True)
class JobStats:
    owed: int  # pending or owed
    overdue: int  # of those, past their deadline
    oldest_owed_at: float | None  # submitted_at of the oldest still owed
    # Messages begun and not yet settled for good: in a worker's hands or waiting on the retry
    # topic (the attempts table; a message acknowledged or dead-lettered leaves it).
    deliveries_pending: int = 0


@dataclass(frozen=True)
class JobQuery:
    """A page of the jobs table, newest first, for people browsing it (the console).
    ``before`` is the (submitted_at, client_token) of the last row of the previous page: keyset
    paging, so a deep page costs what the first does."""

    statuses: tuple[str, ...] = ()
    overdue_at: float | None = None
    since: float | None = None
    until: float | None = None
    input_prefix: str = ""
    job_id: str = ""
    queue_id: str = ""
    user_data: str = ""  # text the UserData contains (any case)
    before: tuple[float, str] | None = None
    limit: int = 50


@dataclass(frozen=True)
class JobEvent:
    """One step of a job's timeline: what happened (``stage``), when, and a detail (the sink,
    CI's state, a reason)."""

    at: float
    stage: str
    detail: str = ""

    def to_dict(self) -> dict[str, object]:
        return {"at": _iso(self.at), "stage": self.stage, "detail": self.detail}


@dataclass(frozen=True)
class Usage:
    """One delivered job's audio, for usage reports: its CI queue and engine model."""

    job_id: str
    queue_id: str
    engine: str
    audio_seconds: float


@dataclass(frozen=True)
class UsageRow:
    """Audio of the jobs delivered in one group (a UTC day, a queue or an engine model), per
    engine model (prices are per engine)."""

    key: str
    engine: str
    jobs: int
    audio_seconds: float


USAGE_GROUPS = ("day", "queue", "engine")


def _iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


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


@dataclass(frozen=True)
class Attempt:
    """How many times processing of one message has started, since when, and why it last failed."""

    count: int
    first_at: float
    last_reason: str


class Ledger(Protocol):
    def delivered(self, job_id: str) -> set[str]:
        """Names of the sinks that already have this job."""
        ...

    def finished_sinks(self, job_id: str) -> set[str]:
        """Names of the sinks that need nothing more for this job: they have it, or their route
        does not select it."""
        ...

    def mark_delivered(self, job_id: str, sink: str) -> None: ...

    def mark_not_wanted(self, job_id: str, sinks: Iterable[str]) -> None:
        """These sinks' routes do not select this job."""
        ...

    def begin_attempt(self, message_key: str) -> Attempt:
        """Count one more start of processing (before any work, so crashes count too)."""
        ...

    def note_failure(self, message_key: str, reason: str) -> None: ...

    def clear_attempts(self, message_key: str) -> None: ...

    def undo_attempts(self, message_keys: Sequence[str]) -> None:
        """Take back the start counted last for each message (an outage was not its try); a
        message with no earlier start is forgotten, so its retry window starts again."""
        ...

    def prune(self, older_than_s: float) -> int:
        """Forget deliveries, attempts and settled jobs older than this; returns rows removed."""
        ...

    # -- a batch of messages in one transaction each way (workers, batched pipelines) --------
    def begin_attempts(self, message_keys: Sequence[str]) -> dict[str, Attempt]:
        """``begin_attempt`` for several messages in one transaction."""
        ...

    def delivered_many(self, job_ids: Sequence[str]) -> dict[str, set[str]]:
        """``delivered`` for several jobs in one query (every id is a key of the answer)."""
        ...

    def finished_many(self, job_ids: Sequence[str]) -> dict[str, set[str]]:
        """``finished_sinks`` for several jobs in one query (every id is a key of the answer)."""
        ...

    def claim_jobs(self, job_ids: Sequence[str], owner: str, lease_s: float) -> set[str]:
        """Take the right to deliver these jobs for ``lease_s`` (one transaction); the ids
        claimed. A job another owner holds an unexpired claim on is not claimed."""
        ...

    def release_jobs(self, job_ids: Sequence[str], owner: str) -> None: ...

    def finish_batch(
        self,
        delivered: Sequence[tuple[str, str]],
        cleared: Sequence[str],
        not_wanted: Sequence[tuple[str, str]] = (),
        settled: Sequence[tuple[str, str | None]] = (),
        release: Sequence[str] = (),
        owner: str = "",
        usage: Sequence[Usage] = (),
    ) -> None:
        """In one transaction: record (job id, sink) deliveries and sinks that do not want a
        job, ``settle`` (job id, CI state) jobs, forget the attempts of settled messages, and
        give up ``owner``'s claims on the ``release`` jobs, and record the settled jobs'
        ``usage``."""
        ...

    def job_by_token(self, client_token: str) -> JobEntry | None: ...

    def job(self, job_id: str) -> JobEntry | None: ...

    def record_pending(self, entry: JobEntry) -> None:
        """Before a create is sent: the token and input (kept if already there)."""
        ...

    def record_job(self, entry: JobEntry) -> None:
        """CI answered (or the token was found): the job id; a pending entry becomes owed."""
        ...

    def settle(self, job_id: str, ci_state: str | None) -> None:
        """Every selected sink has the job: settled (failed when CI ended it Failed/Cancel)."""
        ...

    def fail_job(self, client_token: str, reason: str) -> None: ...

    def note_check(self, job_id: str, ci_state: str, reason: str = "") -> None:
        """What CI said about an owed job when it was last looked up."""
        ...

    def list_jobs(
        self, statuses: tuple[str, ...], since: float | None, overdue_at: float | None, limit: int
    ) -> list[JobEntry]:
        """Jobs in these statuses (all when empty), submitted since, past a deadline; newest
        first."""
        ...

    def overdue_jobs(self, now: float, limit: int) -> list[JobEntry]:
        """Owed jobs past their deadline, the longest unchecked first (a sweep's share)."""
        ...

    def job_stats(self, now: float) -> JobStats: ...

    # -- read-only views for people (the console) --------------------------------------------
    def browse_jobs(self, query: JobQuery) -> list[JobEntry]:
        """One page of jobs matching ``query``, newest first."""
        ...

    def status_counts(self) -> dict[str, int]:
        """How many jobs the ledger holds in each status."""
        ...

    def per_hour(self, column: str, start: float, hours: int) -> list[int]:
        """Jobs whose ``submitted_at`` or ``settled_at`` falls in each hour from ``start``."""
        ...

    def deliveries_per_sink(self) -> dict[str, int]: ...

    def events(self, job_id: str) -> list[JobEvent]:
        """The job's timeline, oldest first."""
        ...

    def usage(self, since: float, by: str) -> list[UsageRow]:
        """Audio delivered since then, grouped ``by`` one of ``USAGE_GROUPS`` and engine."""
        ...

    def forget_delivery(self, job_id: str, sink: str) -> bool:
        """A person asked for the job again at this sink: the ledger no longer says the sink
        has it (the timeline says why). Whether it did."""
        ...

    def note_events(self, events: Sequence[tuple[str, str, str]], at: float) -> None:
        """Add (job id, stage, detail) steps that change nothing else (a replay) at ``at``."""
        ...

    def set_trace_parent(self, job_id: str, trace_parent: str) -> None:
        """Keep the job's trace context (``traceparent``, with ``tracestate`` after a space)."""

    def trace_parents(self, job_ids: Sequence[str]) -> dict[str, str]:
        """The trace contexts kept for these jobs (absent: none known)."""
        ...

    def lock_sessions(self) -> Callable[[], LockSession] | None:
        """What opens a session of its own for fleet-wide locks (``leadership``); None when
        the ledger is on one host only (SQLite), where the supervisor's first worker leads."""
        ...

    def probe(self) -> None:
        """Raises ``LedgerUnavailable`` while the ledger cannot be written."""
        ...

    def close(self) -> None: ...


class LockSession(Protocol):
    """Named locks that last as long as one connection to the shared ledger: the server
    releases them when that connection ends (the holder died or lost its network)."""

    def try_lock(self, name: str) -> bool:
        """Take ``name`` unless another session holds it; True when this session has it."""
        ...

    def alive(self) -> bool:
        """A cheap round trip; False once the connection is lost (its locks are gone)."""
        ...

    def close(self) -> None: ...


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
_EVENT_SETTLED = (
    "INSERT INTO events (job_id, at, stage, detail) SELECT ?, ?, ?, ?"
    " WHERE EXISTS (SELECT 1 FROM jobs WHERE job_id = ? AND status IN (?, ?))"
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


def _settled_statements(job_id: str, ci_state: str | None, now: float) -> list[tuple[str, Params]]:
    stage = "failed" if ci_state in ("Failed", "Cancel") else "settled"
    detail = f"CI state {ci_state}" if ci_state else ""
    event = (_EVENT_SETTLED, (job_id, now, stage, detail, job_id, *OPEN_STATUSES))
    return [event, _settle_statement(job_id, ci_state, now)]


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


def _settle_statement(job_id: str, ci_state: str | None, now: float) -> tuple[str, Params]:
    status = FAILED if ci_state in ("Failed", "Cancel") else SETTLED
    return (
        "UPDATE jobs SET status = ?, settled_at = ?,"
        " ci_state = COALESCE(?, ci_state) WHERE job_id = ? AND status IN (?, ?)",
        (status, now, ci_state, job_id, *OPEN_STATUSES),
    )


class LedgerError(Exception):
    """The ledger cannot be opened (a message safe to print: no secrets). ``config``: the
    configuration is at fault (exit 78); else the ledger may become reachable later."""

    def __init__(self, message: str, config: bool = True) -> None:
        super().__init__(message)
        self.config = config


class LedgerUnavailable(Exception):
    """The ledger cannot be read or written now (its disk full or failing, the server gone): an
    outage. Nothing may be acknowledged until it works again; no message is at fault."""

    SOURCE = "ledger"  # what the outage pause is called


# SQLite's primary result codes that mean the file, not the statement, is at fault.
_SQLITE_OUTAGES = frozenset(
    {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN}
)

_PROBE_KEY = "asrd:probe"


class _SqlLedger:
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

    def mark_not_wanted(self, job_id: str, sinks: Iterable[str]) -> None:
        now = time.time()
        self._run_all([st for sink in sinks for st in _not_wanted_statements(job_id, sink, now)])

    def mark_delivered(self, job_id: str, sink: str) -> None:
        self._run_all(_delivered_statements(job_id, sink, time.time()))

    def begin_attempt(self, message_key: str) -> Attempt:
        rows, _ = self._run(_BEGIN_ATTEMPT, (message_key, time.time()))
        row = rows[0]
        return Attempt(int(row[0]), float(row[1]), str(row[2]))

    def note_failure(self, message_key: str, reason: str) -> None:
        self._run(
            "UPDATE attempts SET last_reason = ? WHERE message_key = ?",
            (reason[:500], message_key),
        )

    def clear_attempts(self, message_key: str) -> None:
        self._run("DELETE FROM attempts WHERE message_key = ?", (message_key,))

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

    def delivered_many(self, job_ids: Sequence[str]) -> dict[str, set[str]]:
        return self._sinks_of(job_ids, with_not_wanted=False)

    def finished_many(self, job_ids: Sequence[str]) -> dict[str, set[str]]:
        return self._sinks_of(job_ids, with_not_wanted=True)

    def claim_jobs(self, job_ids: Sequence[str], owner: str, lease_s: float) -> set[str]:
        now = time.time()
        rows = self._returning_all(
            [(_CLAIM, (job_id, owner, now + lease_s, now)) for job_id in job_ids], optional=True
        )
        return {str(r[0]) for r in rows}

    def release_jobs(self, job_ids: Sequence[str], owner: str) -> None:
        if job_ids:
            self._run_all([(_RELEASE, (job_id, owner)) for job_id in job_ids])

    def _sinks_of(self, job_ids: Sequence[str], with_not_wanted: bool) -> dict[str, set[str]]:
        found: dict[str, set[str]] = {job_id: set() for job_id in job_ids}
        unique = list(found)
        for i in range(0, len(unique), 400):  # SQLite allows 999 parameters per statement
            chunk = unique[i : i + 400]
            marks = ", ".join("?" for _ in chunk)
            sql = f"SELECT job_id, sink FROM deliveries WHERE job_id IN ({marks})"  # noqa: S608
            params = list(chunk)
            if with_not_wanted:
                sql += f" UNION ALL SELECT job_id, sink FROM not_wanted WHERE job_id IN ({marks})"  # noqa: S608
                params += chunk
            rows, _ = self._run(sql, params)
            for job_id, sink in rows:
                found[str(job_id)].add(str(sink))
        return found

    def finish_batch(
        self,
        delivered: Sequence[tuple[str, str]],
        cleared: Sequence[str],
        not_wanted: Sequence[tuple[str, str]] = (),
        settled: Sequence[tuple[str, str | None]] = (),
        release: Sequence[str] = (),
        owner: str = "",
        usage: Sequence[Usage] = (),
    ) -> None:
        now = time.time()
        statements: list[tuple[str, Params]] = [
            st for job_id, sink in delivered for st in _delivered_statements(job_id, sink, now)
        ]
        statements += [
            st for job_id, sink in not_wanted for st in _not_wanted_statements(job_id, sink, now)
        ]
        statements += [
            st for job_id, state in settled for st in _settled_statements(job_id, state, now)
        ]
        statements += [("DELETE FROM attempts WHERE message_key = ?", (k,)) for k in cleared]
        statements += [(_RELEASE, (job_id, owner)) for job_id in release]
        statements += [
            (_USAGE, (u.job_id, now, u.queue_id, u.engine, u.audio_seconds)) for u in usage
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

    def job(self, job_id: str) -> JobEntry | None:
        return self._one("job_id", job_id)

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
                    " SET job_id = excluded.job_id, reason = '', status = CASE"
                    " WHEN jobs.status IN (?, ?) THEN ? ELSE jobs.status END,"
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

    def settle(self, job_id: str, ci_state: str | None) -> None:
        self._run_all(_settled_statements(job_id, ci_state, time.time()))

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


class SqliteLedger(_SqlLedger):
    """One connection shared by the worker threads under a lock; writes are short.

    Several processes may open the same file (``[pulsar] workers``): SQLite lets one of them
    write at a time, so they share the ledger correctly but write no faster than one.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        # WAL + NORMAL survives a process crash (SIGKILL); only an OS crash can drop the tail.
        self._wal(deadline=time.monotonic() + 30)
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _wal(self, deadline: float) -> None:
        """Switch a new file to WAL. While another process writes to it (workers opening the
        ledger together), SQLite answers "locked" at once instead of waiting out the busy
        timeout (the switch would upgrade a read lock: a possible deadlock), so wait here."""
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if "locked" not in str(exc) or time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def _migrate(self) -> None:
        """Bring a ledger written by an older asrd to this schema (``PRAGMA user_version``)."""
        with self._lock:
            # One process migrates at a time (several workers may start together).
            self._db.execute("BEGIN IMMEDIATE")
            try:
                version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
                if version < SCHEMA_VERSION:
                    columns = {r[1] for r in self._db.execute("PRAGMA table_info(attempts)")}
                    if columns and "first_at" not in columns:
                        # Version 1 kept no first-attempt time. Attempt counts are only retry
                        # bookkeeping: starting them again costs a few retries, never a delivery.
                        self._db.execute("DROP TABLE attempts")
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            self._db.execute(statement)
                    have = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
                    for name, definition in JOB_COLUMNS_ADDED:
                        if name not in have:
                            self._db.execute(f"ALTER TABLE jobs ADD COLUMN {name} {definition}")
                    self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back itself (disk full)
                    self._db.execute("ROLLBACK")
                raise

    def _run(self, sql: str, params: Params = ()) -> tuple[Rows, int]:
        with self._lock, self._outage():
            cur = self._db.execute(sql, params)
            rows = cur.fetchall() if cur.description else []
            return rows, int(cur.rowcount)

    @contextlib.contextmanager
    def _outage(self) -> Iterator[None]:
        """A full disk or an I/O error as ``LedgerUnavailable`` (the transaction is rolled back
        by the caller, or by SQLite itself)."""
        try:
            yield
        except sqlite3.Error as exc:
            if getattr(exc, "sqlite_errorcode", 0) & 0xFF in _SQLITE_OUTAGES:
                raise LedgerUnavailable(f"ledger {self._path}: {exc}") from exc
            raise

    def _run_all(self, statements: Sequence[tuple[str, Params]]) -> list[int]:
        with self._lock, self._outage():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                counts = [int(self._db.execute(sql, p).rowcount) for sql, p in statements]
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back itself (disk full)
                    self._db.execute("ROLLBACK")
                raise
            return counts

    def _returning_all(
        self, statements: Sequence[tuple[str, Params]], optional: bool = False
    ) -> Rows:
        with self._lock, self._outage():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = [self._db.execute(sql, p).fetchone() for sql, p in statements]
                rows = [r for r in rows if r is not None] if optional else rows
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back itself (disk full)
                    self._db.execute("ROLLBACK")
                raise
            return rows

    def close(self) -> None:
        with self._lock:
            self._db.close()


def _open_sqlite(url: str) -> Ledger:
    path = Path(url.removeprefix("sqlite:///"))
    try:
        return SqliteLedger(path)
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise LedgerError(f"ledger.url: cannot open {path}: {reason}") from None


def _open_postgresql(url: str, password: str | None = None, pool_size: int = 4) -> Ledger:
    from .ledger_pg import PostgresLedger  # psycopg only where PostgreSQL is used

    return PostgresLedger(url, password=password, pool_size=pool_size)


# Ledger backends by URL scheme.
BACKENDS: dict[str, Callable[..., Ledger]] = {
    "sqlite": _open_sqlite,
    "postgresql": _open_postgresql,
    "postgres": _open_postgresql,
}


def open_ledger(url: str, password: str | None = None, pool_size: int = 4) -> Ledger:
    """The ledger at ``url`` (``sqlite:////abs/path`` or ``postgresql://user@host/db``)."""
    scheme = urlsplit(url).scheme
    opener = BACKENDS.get(scheme)
    if opener is None:
        raise LedgerError(f"ledger.url: unknown scheme {scheme!r} (one of {', '.join(BACKENDS)})")
    if opener is _open_sqlite:
        return opener(url)
    return opener(url, password=password, pool_size=pool_size)


def from_settings(settings: LedgerSettings) -> Ledger:
    """The configured ledger; one that cannot be opened raises ``LedgerError``."""
    secret = settings.password.get_secret_value() if settings.password else None
    return open_ledger(settings.url, password=secret, pool_size=settings.pool_size)
