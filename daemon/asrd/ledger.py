"""The delivery ledger: per job and sink, whether the record was delivered; per message, attempts.

It is what makes redeliveries, duplicate callbacks and restarts harmless: a sink already
recorded for a job is skipped. Attempt counts live here because the broker's redelivery
count resets when a consumer crashes. The default is SQLite in WAL mode (one replica).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS deliveries (
    job_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    delivered_at REAL NOT NULL,
    PRIMARY KEY (job_id, sink)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS attempts (
    message_key TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    last_reason TEXT NOT NULL,
    first_at REAL NOT NULL
) WITHOUT ROWID;
"""


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

    def mark_delivered(self, job_id: str, sink: str) -> None: ...

    def begin_attempt(self, message_key: str) -> Attempt:
        """Count one more start of processing (before any work, so crashes count too)."""
        ...

    def note_failure(self, message_key: str, reason: str) -> None: ...

    def clear_attempts(self, message_key: str) -> None: ...

    def prune(self, older_than_s: float) -> int:
        """Forget deliveries and attempts older than this; returns the rows removed."""
        ...

    def close(self) -> None: ...


class SqliteLedger:
    """One connection shared by the worker threads under a lock; writes are short."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None, timeout=30)
        # WAL + NORMAL survives a process crash (SIGKILL); only an OS crash can drop the tail.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._migrate()

    def _migrate(self) -> None:
        """Bring a ledger written by an older asrd to this schema (``PRAGMA user_version``)."""
        version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
        if version < SCHEMA_VERSION:
            columns = {row[1] for row in self._db.execute("PRAGMA table_info(attempts)")}
            if columns and "first_at" not in columns:
                # Version 1 kept no first-attempt time. Attempt counts are only retry
                # bookkeeping: starting them again costs a few retries, never a delivery.
                self._db.execute("DROP TABLE attempts")
        self._db.executescript(_SCHEMA)
        self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def delivered(self, job_id: str) -> set[str]:
        with self._lock:
            rows = self._db.execute("SELECT sink FROM deliveries WHERE job_id = ?", (job_id,))
            return {r[0] for r in rows}

    def mark_delivered(self, job_id: str, sink: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO deliveries (job_id, sink, delivered_at) VALUES (?, ?, ?)",
                (job_id, sink, time.time()),
            )

    def begin_attempt(self, message_key: str) -> Attempt:
        with self._lock:
            row = self._db.execute(
                "INSERT INTO attempts (message_key, count, last_reason, first_at)"
                " VALUES (?, 1, '', ?) ON CONFLICT(message_key) DO UPDATE SET"
                " count = count + 1 RETURNING count, first_at, last_reason",
                (message_key, time.time()),
            ).fetchone()
            return Attempt(int(row[0]), float(row[1]), str(row[2]))

    def note_failure(self, message_key: str, reason: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE attempts SET last_reason = ? WHERE message_key = ?",
                (reason[:500], message_key),
            )

    def clear_attempts(self, message_key: str) -> None:
        with self._lock:
            self._db.execute("DELETE FROM attempts WHERE message_key = ?", (message_key,))

    def prune(self, older_than_s: float) -> int:
        cutoff = time.time() - older_than_s
        with self._lock:
            gone = self._db.execute("DELETE FROM deliveries WHERE delivered_at < ?", (cutoff,))
            stale = self._db.execute("DELETE FROM attempts WHERE first_at < ?", (cutoff,))
            return int(gone.rowcount) + int(stale.rowcount)

    def close(self) -> None:
        with self._lock:
            self._db.close()
