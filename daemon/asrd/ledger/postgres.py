"""The ledger on PostgreSQL: one database shared by every worker, host and pod of a subscription.

The statements are the SQLite ledger's (``SqlLedger``); here are the table definitions (times
as ``DOUBLE PRECISION``: PostgreSQL's ``REAL`` is 4 bytes and would round a Unix time to
minutes), the schema version kept in a table, and a connection pool (psycopg-pool) in autocommit
mode: every statement is its own short transaction, as with SQLite.

``lock_sessions`` opens one more connection, outside the pool, for session-level advisory locks
(``pg_try_advisory_lock``): the chores one process of the fleet runs (``leadership``). A lock
lives as long as its connection, so it cannot sit in a pool that hands connections around.
"""

from __future__ import annotations

import contextlib
import functools
import zlib
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import psycopg
from psycopg import conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from .sql import JOB_COLUMNS_ADDED, SCHEMA_VERSION, Params, Rows, SqlLedger
from .types import LedgerError, LedgerUnavailable, LockSession

_SCHEMA = """
CREATE TABLE IF NOT EXISTS asrd_schema (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS deliveries (
    job_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    delivered_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, sink)
);
CREATE TABLE IF NOT EXISTS not_wanted (
    job_id TEXT NOT NULL,
    sink TEXT NOT NULL,
    decided_at DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (job_id, sink)
);
CREATE TABLE IF NOT EXISTS claims (
    job_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    until DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS attempts (
    message_key TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    last_reason TEXT NOT NULL,
    first_at DOUBLE PRECISION NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    client_token TEXT PRIMARY KEY,
    job_id TEXT UNIQUE,
    input TEXT NOT NULL,
    status TEXT NOT NULL,
    submitted_at DOUBLE PRECISION NOT NULL,
    deadline_at DOUBLE PRECISION NOT NULL,
    settled_at DOUBLE PRECISION,
    ci_state TEXT NOT NULL DEFAULT '',
    checked_at DOUBLE PRECISION,
    reason TEXT NOT NULL DEFAULT '',
    queue_id TEXT NOT NULL DEFAULT '',
    user_data TEXT NOT NULL DEFAULT '',
    trace_parent TEXT
);
CREATE INDEX IF NOT EXISTS jobs_status_deadline ON jobs (status, deadline_at);
CREATE INDEX IF NOT EXISTS jobs_submitted ON jobs (submitted_at);
CREATE TABLE IF NOT EXISTS events (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    job_id TEXT NOT NULL,
    at DOUBLE PRECISION NOT NULL,
    stage TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id, at);
CREATE INDEX IF NOT EXISTS events_at ON events (at);
CREATE TABLE IF NOT EXISTS usage (
    job_id TEXT PRIMARY KEY,
    at DOUBLE PRECISION NOT NULL,
    queue_id TEXT NOT NULL,
    engine TEXT NOT NULL,
    audio_seconds DOUBLE PRECISION NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_at ON usage (at);
"""
_TRANSIENT_FATAL = ("starting up", "shutting down", "too many", "recovery mode", "remaining")
# Any constant: workers starting together take turns at migrating.
_MIGRATION_LOCK = 0x61737264
# The lock session's connection gives up on a silent network on both ends: the client within
# 10 s (libpq's keep-alives and TCP_USER_TIMEOUT, in ms), the server about 19 s after the last
# traffic (the same settings, per session: 10 s idle, then 3 probes 3 s apart) before it frees
# the locks. The second must stay above ``leadership``'s lease (8 s from the holder's last
# round trip), so that the holder has stopped leading before another process can take over.
_LOCK_USER_TIMEOUT_MS = 10_000
_LOCK_CLIENT = {
    "keepalives": "1",
    "keepalives_idle": "10",
    "keepalives_interval": "3",
    "keepalives_count": "3",
    "tcp_user_timeout": str(_LOCK_USER_TIMEOUT_MS),
}
_LOCK_SERVER_OPTIONS = (
    "-c tcp_keepalives_idle=10 -c tcp_keepalives_interval=3 -c tcp_keepalives_count=3"
)


@functools.lru_cache(maxsize=256)
def _pg(sql: str) -> str:
    """The shared statements' ``?`` placeholders as psycopg's ``%s`` (no statement has a ``%``)."""
    return sql.replace("?", "%s")


def describe(url: str) -> str:
    """``user@host:port/db`` of a URL, without its password (for messages)."""
    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://(unparseable URL)"
    user = f"{parts['user']}@" if parts.get("user") else ""
    port = f":{parts['port']}" if parts.get("port") else ""
    return f"postgresql://{user}{parts.get('host', '')}{port}/{parts.get('dbname', '')}"


class PostgresLedger(SqlLedger):
    def __init__(
        self, url: str, password: str | None = None, pool_size: int = 4, connect_s: float = 15.0
    ) -> None:
        kwargs: dict[str, object] = {"autocommit": True}
        if password:
            kwargs["password"] = password
        self._where = describe(url)
        self._url, self._kwargs = url, kwargs
        try:
            # One connection first: its error says why (a pool would only time out).
            psycopg.connect(url, connect_timeout=max(1, int(connect_s)), **kwargs).close()  # type: ignore[arg-type]
        except psycopg.Error as exc:
            raise _error(self._where, exc) from None
        self._pool = ConnectionPool(
            url,
            min_size=1,
            max_size=pool_size,
            kwargs=kwargs,
            open=False,
            name="asrd-ledger",
            configure=_durable,
        )
        try:
            self._pool.open(wait=True, timeout=connect_s)
            self._migrate()
        except PoolTimeout:
            self._pool.close()
            raise LedgerError(
                f"ledger.url: cannot connect to {self._where} within {connect_s:.0f} s",
                config=False,
            ) from None
        except psycopg.Error as exc:
            self._pool.close()
            raise _error(self._where, exc) from None

    def _migrate(self) -> None:
        with self._pool.connection() as conn, conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS asrd_schema (version INTEGER NOT NULL)")
            row = conn.execute("SELECT max(version) FROM asrd_schema").fetchone()
            version = int(row[0]) if row and row[0] is not None else 0
            if version >= SCHEMA_VERSION:
                return
            columns = {
                str(r[0])
                for r in conn.execute(
                    "SELECT column_name FROM information_schema.columns"
                    " WHERE table_schema = current_schema() AND table_name = 'attempts'"
                )
            }
            if columns and "first_at" not in columns:
                # As in SQLite: version 1 kept no first-attempt time; counts start again.
                conn.execute("DROP TABLE attempts")
            for statement in _SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement.encode())
            for name, definition in JOB_COLUMNS_ADDED:
                conn.execute(
                    f"ALTER TABLE jobs ADD COLUMN IF NOT EXISTS {name} {definition}".encode()
                )
            conn.execute("DELETE FROM asrd_schema")
            conn.execute("INSERT INTO asrd_schema (version) VALUES (%s)", (SCHEMA_VERSION,))

    def schema_version(self) -> int:
        rows, _ = self._run("SELECT max(version) FROM asrd_schema")
        return int(rows[0][0])

    @contextlib.contextmanager
    def _outage(self) -> Iterator[None]:
        """The server gone, restarting, out of disk or connections (``OperationalError``, which
        the pool's timeout is too) as ``LedgerUnavailable``: it may come back."""
        try:
            yield
        except psycopg.OperationalError as exc:
            reason = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise LedgerUnavailable(f"ledger {self._where}: {reason}") from exc

    def _run(self, sql: str, params: Params = ()) -> tuple[Rows, int]:
        with self._outage(), self._pool.connection() as conn:
            cur = conn.execute(_pg(sql).encode(), params)
            rows = cur.fetchall() if cur.description else []
            return rows, int(cur.rowcount)

    # A batch's statements go in one pipeline (psycopg's pipeline mode): sent together, one
    # round trip to the server instead of one per statement; the results are read after.
    def _run_all(self, statements: Sequence[tuple[str, Params]]) -> list[int]:
        with self._outage(), self._pool.connection() as conn, conn.transaction():
            with conn.pipeline():
                cursors = [conn.execute(_pg(sql).encode(), p) for sql, p in statements]
            return [int(cur.rowcount) for cur in cursors]

    def _returning_all(
        self, statements: Sequence[tuple[str, Params]], optional: bool = False
    ) -> Rows:
        rows: Rows = []
        with self._outage(), self._pool.connection() as conn, conn.transaction():
            with conn.pipeline():
                cursors = [conn.execute(_pg(sql).encode(), p) for sql, p in statements]
            for (sql, _), cur in zip(statements, cursors, strict=True):
                row = cur.fetchone()
                if row is not None:
                    rows.append(row)
                elif not optional:
                    raise LedgerError(f"ledger: {sql.split()[0]} returned nothing")
        return rows

    def lock_sessions(self) -> Callable[[], LockSession]:
        return lambda: PgLockSession(self._url, self._kwargs, self._where)

    def close(self) -> None:
        self._pool.close()


def _durable(conn: psycopg.Connection[Any]) -> None:
    """Commits on the server's disk before they return, whatever the server's default: asrd
    acknowledges a message only after its ledger commit (docs/guarantees.md)."""
    conn.execute("SET synchronous_commit = on")


class PgLockSession:
    """Session-level advisory locks on a dedicated connection. Keys: the pair (``asrd``, CRC-32
    of schema and name), so fleets in different schemas of one database do not meet."""

    def __init__(self, url: str, kwargs: dict[str, object], where: str) -> None:
        self._where = where
        options = str(conninfo.conninfo_to_dict(url).get("options") or "")
        try:
            self._conn = psycopg.connect(
                conninfo.make_conninfo(
                    url,
                    connect_timeout="5",
                    options=f"{options} {_LOCK_SERVER_OPTIONS}".strip(),
                    application_name="asrd-leadership",
                    **_LOCK_CLIENT,
                ),
                **kwargs,  # type: ignore[arg-type]
            )
            row = self._conn.execute("SELECT current_schema()").fetchone()
        except psycopg.Error as exc:
            raise _error(where, exc) from None
        self._schema = str(row[0]) if row else ""

    def _key(self, name: str) -> int:
        """A signed 32-bit key (PostgreSQL's ``int4``)."""
        key = zlib.crc32(f"{self._schema}/{name}".encode())
        return key - (1 << 32) if key >= 1 << 31 else key

    def try_lock(self, name: str) -> bool:
        # (asrd's constant, key): a two-key lock, never the same as the migration's one-key lock.
        try:
            row = self._conn.execute(
                "SELECT pg_try_advisory_lock(%s, %s)", (_MIGRATION_LOCK, self._key(name))
            ).fetchone()
        except psycopg.Error as exc:
            raise _error(self._where, exc) from None
        return bool(row and row[0])

    def alive(self) -> bool:
        if self._conn.broken or self._conn.closed:
            return False
        try:
            self._conn.execute("SELECT 1")
        except psycopg.Error:
            return False
        return True

    def close(self) -> None:
        self._conn.close()  # the server releases the session's locks with it


def _error(where: str, exc: psycopg.Error) -> LedgerError:
    # libpq's messages name host, port and user, never the password.
    reason = " ".join(str(exc).split())[:300] or type(exc).__name__
    # A server that answered and refused (credentials, role, database, pg_hba: "FATAL:" with no
    # SQLSTATE at connect time, or 28xxx/3D000) is the configuration's fault; one that does not
    # answer, or is starting or full, may come back (the service manager restarts asrd).
    text = str(exc)
    refused = "FATAL:" in text and not any(t in text for t in _TRANSIENT_FATAL)
    config = refused or (exc.sqlstate or "")[:2] in ("28", "3D")
    return LedgerError(f"ledger.url: {where}: {reason}", config=config)
