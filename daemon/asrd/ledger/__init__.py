"""The delivery ledger: per job and sink, whether the record was delivered; per message, attempts;
per submitted job, whether a result is still owed.

It is what makes redeliveries, duplicate callbacks and restarts harmless: a sink already
recorded for a job is skipped. Attempt counts live here because the broker's redelivery
count resets when a consumer crashes. The jobs table remembers every job asrd submitted (by
client token, before the create is sent) until every selected sink has its result, so lost
create answers, re-runs of a manifest and jobs whose callback never came can all be found.

Backends are chosen by the URL's scheme (``open_ledger``): SQLite in WAL mode (the default; one
host, ``sqlite``) and PostgreSQL (several workers, hosts or pods sharing one ledger,
``postgres``). Both run the same statements (``sql``); only the table definitions and the
schema-version bookkeeping differ.

Each client depends on the part of the ledger it uses: the worker counts ``Attempts``, the
pipeline records ``Deliveries`` (and claims), submit, the job commands, the API and the console
keep the ``JobBook``, the daemon's chores need ``Upkeep``. ``Ledger`` is all of them, for the
code that opens one and hands its parts around.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol
from urllib.parse import urlsplit

from ..config import LedgerSettings
from .sql import JOB_COLUMNS_ADDED, SCHEMA_VERSION
from .sqlite import SqliteLedger, open_sqlite
from .types import (
    FAILED,
    OPEN_STATUSES,
    OWED,
    PENDING,
    SETTLED,
    USAGE_GROUPS,
    Attempt,
    JobEntry,
    JobEvent,
    JobQuery,
    JobStats,
    LedgerError,
    LedgerUnavailable,
    LedgerWrites,
    LockSession,
    Usage,
    UsageRow,
)

__all__ = [
    "FAILED",
    "JOB_COLUMNS_ADDED",
    "OPEN_STATUSES",
    "OWED",
    "PENDING",
    "SCHEMA_VERSION",
    "SETTLED",
    "USAGE_GROUPS",
    "Attempt",
    "Attempts",
    "Deliveries",
    "JobBook",
    "JobEntry",
    "JobEvent",
    "JobQuery",
    "JobStats",
    "Ledger",
    "LedgerError",
    "LedgerUnavailable",
    "LedgerWrites",
    "LockSession",
    "SqliteLedger",
    "Upkeep",
    "Usage",
    "UsageRow",
    "from_settings",
    "open_ledger",
]


class Attempts(Protocol):
    """Per message, how many times processing started (the worker)."""

    def begin_attempts(self, message_keys: Sequence[str]) -> dict[str, Attempt]:
        """Count one more start of processing of each message (before any work, so crashes
        count too), in one transaction."""
        ...

    def note_failure(self, message_key: str, reason: str) -> None: ...

    def undo_attempts(self, message_keys: Sequence[str]) -> None:
        """Take back the start counted last for each message (an outage was not its try); a
        message with no earlier start is forgotten, so its retry window starts again."""
        ...

    def commit(self, writes: LedgerWrites) -> None:
        """Everything ``writes`` holds, in one transaction (the worker: ``cleared``)."""
        ...


class Deliveries(Protocol):
    """Per job and sink, what was delivered, and who delivers a job now (the pipeline)."""

    def finished_many(self, job_ids: Sequence[str]) -> dict[str, set[str]]:
        """Per job, the sinks that need nothing more: they have it, or their route does not
        select it (every id is a key of the answer)."""
        ...

    def claim_jobs(self, job_ids: Sequence[str], owner: str, lease_s: float) -> set[str]:
        """Take the right to deliver these jobs for ``lease_s`` (one transaction); the ids
        claimed. A job another owner holds an unexpired claim on is not claimed."""
        ...

    def release_jobs(self, job_ids: Sequence[str], owner: str) -> None: ...

    def commit(self, writes: LedgerWrites) -> None:
        """Everything ``writes`` holds, in one transaction."""
        ...


class JobBook(Protocol):
    """The jobs asrd submitted and their timelines (submit, the job commands, the deadline
    sweep, the API and the console)."""

    def delivered(self, job_id: str) -> set[str]:
        """Names of the sinks that already have this job."""
        ...

    def finished_sinks(self, job_id: str) -> set[str]:
        """Names of the sinks that need nothing more for this job: they have it, or their route
        does not select it."""
        ...

    def job_by_token(self, client_token: str) -> JobEntry | None: ...

    def job(self, job_id: str) -> JobEntry | None: ...

    def set_trace_parent(self, job_id: str, trace_parent: str) -> None:
        """Keep the job's trace context (``traceparent``, with ``tracestate`` after a space)."""

    def trace_parents(self, job_ids: Sequence[str]) -> dict[str, str]:
        """The trace contexts kept for these jobs (absent: none known)."""
        ...

    def record_pending(self, entry: JobEntry) -> None:
        """Before a create is sent: the token and input (kept if already there)."""
        ...

    def record_job(self, entry: JobEntry) -> None:
        """CI answered (or the token was found): the job id; a pending entry becomes owed."""
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

    def note_job_events(self, events: Sequence[tuple[str, float, str, str]]) -> None:
        """Add (job id, time, stage, detail) steps, in one transaction, for the jobs the ledger
        knows (a step of a job it does not know is dropped: another deployment's job)."""
        ...


class Upkeep(Protocol):
    """What the daemon's chores and health checks need: pruning, fleet-wide locks, a probe."""

    def prune(self, older_than_s: float) -> int:
        """Forget deliveries, attempts and settled jobs older than this; returns rows removed."""
        ...

    def lock_sessions(self) -> Callable[[], LockSession] | None:
        """What opens a session of its own for fleet-wide locks (``leadership``); None when
        the ledger is on one host only (SQLite), where the supervisor's first worker leads."""
        ...

    def probe(self) -> None:
        """Raises ``LedgerUnavailable`` while the ledger cannot be written."""
        ...

    def close(self) -> None: ...


class Ledger(Attempts, Deliveries, JobBook, Upkeep, Protocol):
    """The whole ledger, as opened (``open_ledger``)."""


def _open_sqlite(url: str) -> Ledger:
    return open_sqlite(url)


def _open_postgresql(url: str, password: str | None = None, pool_size: int = 4) -> Ledger:
    from .postgres import PostgresLedger  # psycopg only where PostgreSQL is used

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
