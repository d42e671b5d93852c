"""The ledger on SQLite in WAL mode: one file, the default, for the workers of one host."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .sql import JOB_COLUMNS_ADDED, SCHEMA_VERSION, Params, Rows, SqlLedger
from .types import LedgerError, LedgerUnavailable

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
# SQLite's primary result codes that mean the file, not the statement, is at fault.
_SQLITE_OUTAGES = frozenset(
    {sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN}
)


class SqliteLedger(SqlLedger):
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

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction under the lock, rolled back if anything in it fails."""
        with self._lock, self._outage():
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # SQLite may have rolled back itself (disk full)
                    self._db.execute("ROLLBACK")
                raise

    def _run_all(self, statements: Sequence[tuple[str, Params]]) -> list[int]:
        with self._transaction():
            return [int(self._db.execute(sql, p).rowcount) for sql, p in statements]

    def _returning_all(
        self, statements: Sequence[tuple[str, Params]], optional: bool = False
    ) -> Rows:
        with self._transaction():
            rows = [self._db.execute(sql, p).fetchone() for sql, p in statements]
            return [r for r in rows if r is not None] if optional else rows

    def close(self) -> None:
        with self._lock:
            self._db.close()


def open_sqlite(url: str) -> SqliteLedger:
    path = Path(url.removeprefix("sqlite:///"))
    try:
        return SqliteLedger(path)
    except (OSError, sqlite3.Error) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else str(exc)
        raise LedgerError(f"ledger.url: cannot open {path}: {reason}") from None
