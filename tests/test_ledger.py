"""The ledger's contract, run against every backend (SQLite and a real PostgreSQL server; the
tests taking the ``ledger`` fixture also against the fast tests' in-memory ledger):
deliveries, crash-proof attempt counts, submitted jobs, pruning, reopening, migration from older
schemas, several processes sharing one ledger, and errors that never show a password."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asrd.jobs import job_gauges, select
from asrd.ledger import (
    FAILED,
    OWED,
    PENDING,
    SCHEMA_VERSION,
    SETTLED,
    Attempt,
    JobEntry,
    JobQuery,
    Ledger,
    LedgerError,
    LedgerWrites,
    SqliteLedger,
    Usage,
    open_ledger,
)
from asrd.testing import MemoryLedger
from tests import postgres as pg


def deliver(ledger: Ledger, job_id: str, sink: str) -> None:
    ledger.commit(LedgerWrites(delivered=[(job_id, sink)]))


def begin(ledger: Ledger, key: str) -> Attempt:
    return ledger.begin_attempts([key])[key]


def clear(ledger: Ledger, key: str) -> None:
    ledger.commit(LedgerWrites(cleared=[key]))


def settle(ledger: Ledger, job_id: str, ci_state: str | None) -> None:
    ledger.commit(LedgerWrites(settled=[(job_id, ci_state)]))


# PostgreSQL is a server of its own: `slow` (tests/conftest.py).
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.slow)]


class Store:
    """One ledger location of a backend: open it (again), run raw SQL, read its version."""

    def __init__(self, backend: str, tmp_path: Path, server: Any) -> None:
        self.backend = backend
        if backend == "sqlite":
            self.path = tmp_path / "state" / "ledger.db"
            self.url = f"sqlite:///{self.path}"
        else:
            self.url = server.url(server.create_database())

    def open(self) -> Ledger:
        return open_ledger(self.url, password=pg.PASSWORD)

    def raw(self, *statements: str) -> None:
        """Statements run outside asrd, as an older asrd would have."""
        if self.backend == "sqlite":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path)
            for statement in statements:
                db.execute(statement)
            db.commit()
            db.close()
            return
        import psycopg

        with psycopg.connect(self.url, password=pg.PASSWORD, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement.encode())

    def version(self) -> int:
        if self.backend == "sqlite":
            return int(sqlite3.connect(self.path).execute("PRAGMA user_version").fetchone()[0])
        import psycopg

        with psycopg.connect(self.url, password=pg.PASSWORD) as conn:
            row = conn.execute(b"SELECT max(version) FROM asrd_schema").fetchone()
            return int(row[0]) if row else 0

    @property
    def time_type(self) -> str:
        return "REAL" if self.backend == "sqlite" else "DOUBLE PRECISION"


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    server = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    return Store(request.param, tmp_path, server)


@pytest.fixture(params=["memory", *BACKENDS])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Ledger]:
    """Each backend, and the in-memory ledger of the fast tests (asrd.testing): the tests that
    take this fixture are the contract every ledger keeps."""
    if request.param == "memory":
        opened: Ledger = MemoryLedger()
    else:
        server = request.getfixturevalue("postgres") if request.param == "postgresql" else None
        opened = Store(request.param, tmp_path, server).open()
    yield opened
    opened.close()


def test_deliveries_and_attempts_survive_reopening(store: Store) -> None:
    ledger = store.open()
    deliver(ledger, "s1", "files")
    deliver(ledger, "s1", "files")  # a second delivery of the same job is one row
    deliver(ledger, "s1", "app")
    first = begin(ledger, "topic|1:0:-1")
    ledger.note_failure("topic|1:0:-1", "CI 503")
    ledger.close()

    ledger = store.open()  # as after a crash and restart
    assert ledger.delivered("s1") == {"files", "app"}
    assert ledger.delivered("s2") == set()
    second = begin(ledger, "topic|1:0:-1")
    assert (first.count, second.count) == (1, 2)
    assert second.first_at == first.first_at  # times keep their full precision
    assert second.last_reason == "CI 503"
    clear(ledger, "topic|1:0:-1")
    assert begin(ledger, "topic|1:0:-1").count == 1
    ledger.close()


def test_prune_forgets_only_old_rows(ledger: Ledger) -> None:
    deliver(ledger, "s-old", "files")
    begin(ledger, "old")
    time.sleep(0.2)
    deliver(ledger, "s-new", "files")
    begin(ledger, "new")
    assert ledger.prune(older_than_s=0.1) == 2
    assert ledger.delivered("s-old") == set()
    assert ledger.delivered("s-new") == {"files"}
    assert begin(ledger, "new").count == 2


def test_a_version_1_ledger_is_migrated_and_keeps_its_deliveries(store: Store) -> None:
    t = store.time_type
    store.raw(
        f"CREATE TABLE deliveries (job_id TEXT NOT NULL, sink TEXT NOT NULL,"
        f" delivered_at {t} NOT NULL, PRIMARY KEY (job_id, sink))",
        "CREATE TABLE attempts (message_key TEXT PRIMARY KEY, count INTEGER NOT NULL,"
        f" last_reason TEXT NOT NULL, updated_at {t} NOT NULL)",
        f"INSERT INTO deliveries VALUES ('s1', 'files', {time.time()})",
        "INSERT INTO attempts VALUES ('k', 3, 'x', 0)",
    )
    ledger = store.open()
    assert ledger.delivered("s1") == {"files"}
    assert begin(ledger, "k").count == 1
    assert ledger.prune(older_than_s=3600) == 0
    ledger.close()
    assert store.version() == SCHEMA_VERSION


def test_a_version_2_ledger_gains_the_jobs_table(store: Store) -> None:
    t = store.time_type
    version = (
        ["PRAGMA user_version = 2"]
        if store.backend == "sqlite"
        else ["CREATE TABLE asrd_schema (version INTEGER NOT NULL)",
              "INSERT INTO asrd_schema VALUES (2)"]
    )  # fmt: skip
    store.raw(
        f"CREATE TABLE deliveries (job_id TEXT NOT NULL, sink TEXT NOT NULL,"
        f" delivered_at {t} NOT NULL, PRIMARY KEY (job_id, sink))",
        "CREATE TABLE attempts (message_key TEXT PRIMARY KEY, count INTEGER NOT NULL,"
        f" last_reason TEXT NOT NULL, first_at {t} NOT NULL)",
        f"INSERT INTO deliveries VALUES ('s1', 'files', {time.time()})",
        "INSERT INTO attempts VALUES ('k', 3, 'x', 0)",
        *version,
    )
    ledger = store.open()
    assert ledger.delivered("s1") == {"files"}
    assert begin(ledger, "k").count == 4  # version 2 attempts are kept
    assert ledger.job_stats(time.time()).owed == 0
    ledger.close()
    assert store.version() == SCHEMA_VERSION


def test_a_batch_of_messages_in_one_transaction_each_way(ledger: Ledger) -> None:
    keys = [f"topic|{i}:0:-1" for i in range(3)]
    begin(ledger, keys[0])
    first = ledger.begin_attempts(keys)
    assert [first[k].count for k in keys] == [2, 1, 1]
    assert ledger.finished_many([]) == {}
    deliver(ledger, "s1", "files")
    assert ledger.finished_many(["s1", "s2", "s1"]) == {"s1": {"files"}, "s2": set()}
    ledger.commit(
        LedgerWrites(delivered=[("s2", "files"), ("s2", "app"), ("s1", "files")], cleared=keys[:2])
    )
    assert ledger.finished_many(["s1", "s2"]) == {"s1": {"files"}, "s2": {"files", "app"}}
    again = ledger.begin_attempts(keys)
    assert [again[k].count for k in keys] == [1, 1, 2]  # the cleared ones start again
    many = [f"s{i:05d}" for i in range(1200)]  # more ids than one statement may carry
    ledger.commit(LedgerWrites(delivered=[(j, "files") for j in many]))
    assert all(v == {"files"} for v in ledger.finished_many(many).values())


def test_claims_let_one_owner_deliver_a_job_at_a_time(store: Store) -> None:
    one, two = store.open(), store.open()  # two workers
    assert one.claim_jobs(["s1", "s2"], "w1", lease_s=30) == {"s1", "s2"}
    assert two.claim_jobs(["s1", "s3"], "w2", lease_s=30) == {"s3"}  # s1 is w1's
    assert one.claim_jobs(["s1"], "w1", lease_s=30) == {"s1"}  # an owner may renew
    one.release_jobs(["s1"], "w1")
    assert two.claim_jobs(["s1"], "w2", lease_s=30) == {"s1"}
    assert one.claim_jobs(["s2"], "w1", lease_s=0.0) == {"s2"}  # a lease that has ended...
    time.sleep(0.05)
    assert two.claim_jobs(["s2"], "w2", lease_s=30) == {"s2"}  # ...is taken over
    one.release_jobs(["s2"], "w1")  # not w1's any more: nothing happens
    assert one.claim_jobs(["s2"], "w1", lease_s=30) == set()
    one.close()
    two.close()


def test_a_batch_settles_jobs_and_records_unwanted_sinks_in_one_go(ledger: Ledger) -> None:
    now = time.time()
    ledger.record_job(entry("t1", "s1", now, 3600))
    deliver(ledger, "s1", "files")
    ledger.commit(LedgerWrites(
        delivered=[("s2", "files")], not_wanted=[("s1", "app"), ("s1", "app")],
        settled=[("s1", "Success"), ("s9", None)],
    ))  # fmt: skip
    assert ledger.finished_many(["s1", "s2", "s3"]) == {
        "s1": {"files", "app"}, "s2": {"files"}, "s3": set(),
    }  # fmt: skip
    assert ledger.delivered("s1") == {"files"}  # unwanted is not delivered
    assert ledger.job("s1").status == SETTLED  # type: ignore[union-attr]


def test_several_processes_share_one_ledger(store: Store) -> None:
    """Workers open the ledger together (one migrates, the others wait) and then count
    attempts and record deliveries through their own connections without losing any."""
    ledgers: list[Ledger] = []
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            ledger = store.open()
            ledgers.append(ledger)
            for i in range(50):
                begin(ledger, "shared")
                deliver(ledger, f"s{i}", "files")
                deliver(ledger, f"own-{n}-{i}", "files")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    check = store.open()
    assert begin(check, "shared").count == 4 * 50 + 1
    assert all(check.delivered(f"s{i}") == {"files"} for i in range(50))
    assert all(check.delivered(f"own-{n}-49") == {"files"} for n in range(4))
    for ledger in [*ledgers, check]:
        ledger.close()


def test_a_new_sqlite_ledger_opens_while_another_process_writes_to_it(tmp_path: Path) -> None:
    """Opening switches the file to WAL, which SQLite refuses at once (no busy wait) while
    another connection holds a write transaction: the open waits for it instead of failing."""
    path = tmp_path / "ledger.db"
    held, release = threading.Event(), threading.Event()

    def writer() -> None:
        db = sqlite3.connect(path, isolation_level=None)
        db.execute("CREATE TABLE other (x)")
        db.execute("BEGIN IMMEDIATE")
        held.set()
        release.wait(30)
        db.execute("COMMIT")
        db.close()

    thread = threading.Thread(target=writer)
    thread.start()
    assert held.wait(30)
    threading.Timer(0.3, release.set).start()  # how long the open waits, not whether it works
    ledger = SqliteLedger(path)
    thread.join()
    assert begin(ledger, "k").count == 1
    ledger.close()


def entry(token: str, job_id: str | None, submitted_at: float, deadline_s: float) -> JobEntry:
    return JobEntry(token, job_id, f"media/{token}.mp3", PENDING, submitted_at,
                    submitted_at + deadline_s)  # fmt: skip


def test_submitted_jobs_from_pending_to_settled(ledger: Ledger) -> None:
    now = time.time()
    ledger.record_pending(entry("t1", None, now - 100, 50))
    ledger.record_pending(entry("t1", None, now, 50))  # a second record keeps the first
    assert ledger.job_by_token("t1") == entry("t1", None, now - 100, 50)
    ledger.record_job(entry("t1", "s1", now, 50))  # CI answered: owed from then on
    ledger.record_job(entry("t2", "s2", now, 3600))
    ledger.record_job(entry("t3", "s3", now - 10, 3600))
    ledger.record_pending(entry("t4", None, now, 3600))

    one = ledger.job("s1")
    assert one is not None and one.status == OWED and one.submitted_at == now - 100
    assert one.overdue(now) and not ledger.job("s2").overdue(now)  # type: ignore[union-attr]
    stats = ledger.job_stats(now)
    assert (stats.owed, stats.overdue, stats.oldest_owed_at) == (4, 1, now - 100)
    assert [e.job_id for e in select(ledger, "overdue", None, now)] == ["s1"]
    assert {e.client_token for e in select(ledger, "owed", None, now)} == {"t1", "t2", "t3", "t4"}

    settle(ledger, "s1", "Success")
    settle(ledger, "s2", "Failed")  # CI ended it Failed: nothing more is owed, but it failed
    settle(ledger, "s9", "Success")  # not submitted by asrd: nothing to settle
    ledger.fail_job("t4", "the create never reached CI")
    assert ledger.job("s1").status == SETTLED  # type: ignore[union-attr]
    assert ledger.job("s2").status == FAILED  # type: ignore[union-attr]
    failed = {e.client_token: e.reason for e in select(ledger, "failed", None, now)}
    assert failed == {"t2": "", "t4": "the create never reached CI"}
    assert [e.job_id for e in select(ledger, "owed", now - 20, now)] == ["s3"]
    begin(ledger, "topic|1:0:-1")
    begin(ledger, "topic|1:1:-1")
    ledger.note_failure("topic|1:1:-1", "sink down")  # waiting on the retry topic: pending
    clear(ledger, "topic|1:0:-1")  # settled for good: no longer pending
    gauges = job_gauges(ledger, now)
    assert gauges == {
        "jobs_owed": 1.0, "jobs_overdue": 0.0, "jobs_oldest_owed_age_seconds": 10.0,
        "deliveries_pending": 1.0,
    }  # fmt: skip
    clear(ledger, "topic|1:1:-1")

    ledger.note_check("s3", "Running", "still Running at CI past its deadline")
    assert ledger.job("s3").ci_state == "Running"  # type: ignore[union-attr]
    time.sleep(0.2)
    assert ledger.prune(older_than_s=0.1) == 3  # settled and failed jobs go, owed ones stay
    assert ledger.job_by_token("t3") is not None and ledger.job_by_token("t1") is None


def test_a_refused_create_starts_again_and_sweeps_take_the_least_checked(ledger: Ledger) -> None:
    now = time.time()
    ledger.record_pending(entry("t1", None, now - 50, 10))
    ledger.fail_job("t1", "InvalidArgument")
    ledger.record_pending(entry("t1", None, now, 10))  # a re-run tries the refused row again
    again = ledger.job_by_token("t1")
    assert again is not None and (again.status, again.reason) == (PENDING, "")
    assert again.submitted_at == now
    ledger.record_job(entry("t2", "s2", now - 300, 10))
    ledger.record_job(entry("t3", "s3", now - 200, 10))
    ledger.record_job(entry("t4", "s4", now - 100, 10))
    settle(ledger, "s4", "Success")
    ledger.record_pending(entry("t4", None, now, 10))  # settled: never touched again
    assert ledger.job_by_token("t4").status == SETTLED  # type: ignore[union-attr]
    assert [e.job_id for e in ledger.overdue_jobs(now, 10)] == ["s2", "s3"]
    ledger.note_check("s2", "Running")
    assert [e.job_id for e in ledger.overdue_jobs(now, 1)] == ["s3"]


def test_ledger_urls_that_cannot_be_used_say_why_without_the_password(
    postgres: Any, tmp_path: Path
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(LedgerError) as err:
        open_ledger(f"sqlite:///{blocker}/ledger.db")
    assert err.value.config and str(err.value).startswith(f"ledger.url: cannot open {blocker}")

    with pytest.raises(LedgerError) as err:
        open_ledger(postgres.url(), password="wrong-secret-value")
    assert err.value.config  # refused credentials: the configuration is wrong (exit 78)
    assert "password authentication failed" in str(err.value)
    assert "wrong-secret-value" not in str(err.value)
    assert str(err.value).startswith(f"ledger.url: postgresql://asrd@127.0.0.1:{postgres.port}/")

    with pytest.raises(LedgerError) as err:
        open_ledger(postgres.url("no_such_db"), password=pg.PASSWORD)
    assert err.value.config and "no_such_db" in str(err.value)

    closed = postgres.url().replace(str(postgres.port), "1")
    with pytest.raises(LedgerError) as err:
        open_ledger(closed.replace("asrd@", "asrd:hunter2@"))
    assert not err.value.config  # a server that does not answer may come back
    assert "hunter2" not in str(err.value)

    with pytest.raises(LedgerError, match="unknown scheme 'mysql'"):
        open_ledger("mysql://x/y")


def test_a_job_delivered_before_its_submit_recorded_the_id_is_not_left_owed(
    ledger: Ledger,
) -> None:
    """The create's answer was lost; CI made the job, which finished and was delivered while the
    submit was still looking it up. The delivery settles the job's row by its client token, and
    the submit's late record (the look-up found the id) does not reopen it."""
    now = time.time()
    for token in ("t1", "t2", "t3"):
        ledger.record_pending(entry(token, None, now, 3600))
    ledger.commit(
        LedgerWrites(
            settled=[("s1", "Success"), ("s2", "Failed"), ("s3", "Success")],
            tokens={"s1": "t1", "s2": "t2", "s3": "someone-else's"},
        )
    )
    assert ledger.job("s1").status == SETTLED  # type: ignore[union-attr]
    assert ledger.job("s2").status == FAILED  # type: ignore[union-attr]
    assert ledger.job("s3") is None  # a token of no pending job settles nothing
    ledger.record_job(entry("t1", "s1", now, 3600))
    ledger.record_job(entry("t2", "s2", now, 3600))
    ledger.record_job(entry("t3", "s3", now, 3600))
    assert ledger.job("s1").status == SETTLED  # type: ignore[union-attr]
    assert ledger.job("s2").status == FAILED  # type: ignore[union-attr]
    assert ledger.job("s3").status == OWED  # type: ignore[union-attr]
    assert ledger.job_stats(now).owed == 1
    stages = [e.stage for e in ledger.events("s1")]
    assert "settled" in stages and "created" in stages


def test_steps_of_known_jobs_only_at_their_own_times(ledger: Ledger) -> None:
    now = time.time()
    ledger.record_job(entry("t1", "s1", now - 5, 3600))
    ledger.note_job_events(
        [
            ("s1", now - 2, "callback received", "CMQ queue q (message m)"),
            ("s9", now - 2, "callback received", "another deployment's job"),
            ("s1", now - 1, "moved onto Pulsar", "persistent://public/default/t"),
        ]
    )
    ledger.note_job_events([])  # nothing to write: no transaction
    steps = [
        (e.at, e.stage) for e in ledger.events("s1") if e.stage not in ("submitted", "created")
    ]
    assert steps == [(now - 2, "callback received"), (now - 1, "moved onto Pulsar")]
    assert ledger.events("s9") == []


def test_each_job_keeps_its_timeline_written_with_its_changes(ledger: Ledger) -> None:
    now = time.time()
    ledger.record_pending(entry("t1", None, now - 5, 3600))
    ledger.record_job(entry("t1", "s1", now - 5, 3600))
    ledger.record_job(entry("t1", "s1", now - 5, 3600))  # adopted again: nothing new
    deliver(ledger, "s1", "files")
    deliver(ledger, "s1", "files")  # a duplicate callback: nothing new
    ledger.commit(LedgerWrites(
        delivered=[("s1", "files"), ("s1", "hook")], not_wanted=[("s1", "archive")],
        settled=[("s1", "Success")],
    ))  # fmt: skip
    settle(ledger, "s1", "Success")  # settled already: nothing new
    stages = [(e.stage, e.detail) for e in ledger.events("s1")]
    assert stages == [
        ("submitted", "media/t1.mp3"),
        ("created", "client token t1"),
        ("delivered", "files"),
        ("delivered", "hook"),
        ("not selected", "archive"),
        ("settled", "CI state Success"),
    ]
    assert ledger.events("s1")[0].at == now - 5

    ledger.record_job(entry("t2", "s2", now, 3600))
    ledger.note_check("s2", "Running", "still Running at CI past its deadline")
    ledger.fail_job("t2", "CI does not know the job")
    ledger.fail_job("t2", "again")  # failed already: nothing new
    assert [(e.stage, e.detail) for e in ledger.events("s2")][2:] == [
        ("checked", "CI state Running: still Running at CI past its deadline"),
        ("failed", "CI does not know the job"),
    ]
    ledger.record_job(entry("t3", "s3", now, 3600))  # still owed: its timeline stays
    time.sleep(0.2)
    ledger.prune(older_than_s=0.1)
    assert ledger.events("s1") == [] and ledger.events("s2") == []
    assert [e.stage for e in ledger.events("s3")] == ["submitted", "created"]


def test_browsing_jobs_pages_by_key_with_filters(ledger: Ledger) -> None:
    now = time.time()
    for i in range(30):
        # Two jobs per second: equal submission times are ordered by their token.
        job = JobEntry(
            f"t{i:02d}", f"s{i:02d}", f"{'a' if i % 2 else 'b'}/{i:02d}.mp3", PENDING,
            now - 3600 - (i // 2), now + 3600,
        )  # fmt: skip
        ledger.record_job(job)
    settle(ledger, "s00", "Success")
    deliver(ledger, "s00", "files")
    seen: list[str] = []
    before = None
    while True:
        page = ledger.browse_jobs(JobQuery(before=before, limit=7))
        seen += [str(e.job_id) for e in page]
        if len(page) < 7:
            break
        before = (page[-1].submitted_at, page[-1].client_token)
    # Newest first, then by token (descending) within one submission time.
    expected = sorted(
        (f"s{i:02d}" for i in range(30)), key=lambda j: (int(j[1:]) // 2, -int(j[1:]))
    )
    assert seen == expected
    odd = ledger.browse_jobs(JobQuery(input_prefix="a/", limit=100))
    assert {e.job_id for e in odd} == {f"s{i:02d}" for i in range(1, 30, 2)}
    assert ledger.browse_jobs(JobQuery(input_prefix="A/", limit=100)) == []
    assert [e.job_id for e in ledger.browse_jobs(JobQuery(job_id="s07"))] == ["s07"]
    settled = ledger.browse_jobs(JobQuery(statuses=(SETTLED,)))
    assert [e.job_id for e in settled] == ["s00"]
    ranged = ledger.browse_jobs(JobQuery(since=now - 3600 - 2, until=now - 3600, limit=100))
    assert {e.job_id for e in ranged} == {"s02", "s03", "s04", "s05"}
    assert ledger.status_counts() == {OWED: 29, SETTLED: 1}
    assert ledger.deliveries_per_sink() == {"files": 1}
    hours = ledger.per_hour("submitted_at", now - 2 * 3600 + 30, 2)
    assert hours == [30, 0]


def test_a_version_5_ledger_keeps_its_jobs_and_gains_their_queue_and_user_data(
    store: Store,
) -> None:
    t = store.time_type
    version = (
        ["PRAGMA user_version = 5"]
        if store.backend == "sqlite"
        else ["CREATE TABLE asrd_schema (version INTEGER NOT NULL)",
              "INSERT INTO asrd_schema VALUES (5)"]
    )  # fmt: skip
    store.raw(
        "CREATE TABLE jobs (client_token TEXT PRIMARY KEY, job_id TEXT UNIQUE,"
        f" input TEXT NOT NULL, status TEXT NOT NULL, submitted_at {t} NOT NULL,"
        f" deadline_at {t} NOT NULL, settled_at {t}, ci_state TEXT NOT NULL DEFAULT '',"
        f" checked_at {t}, reason TEXT NOT NULL DEFAULT '')",
        f"INSERT INTO jobs (client_token, job_id, input, status, submitted_at, deadline_at)"
        f" VALUES ('old', 's-old', 'media/old.mp3', 'owed', {time.time()}, {time.time() + 60})",
        *version,
    )
    ledger = store.open()
    old = ledger.job("s-old")
    assert old is not None and (old.input, old.queue_id, old.user_data) == ("media/old.mp3", "", "")
    now = time.time()
    new = JobEntry("new", None, "media/new.mp3", PENDING, now, now + 60, queue_id="q1",
                   user_data="Batch=100%_done")  # fmt: skip
    ledger.record_pending(new)
    ledger.record_job(JobEntry("new", "s-new", "media/new.mp3", PENDING, now, now + 60))
    got = ledger.job("s-new")
    assert got is not None and (got.queue_id, got.user_data) == ("q1", "Batch=100%_done")
    found = ledger.browse_jobs(JobQuery(user_data="batch=100%_"))  # any case; % and _ literal
    assert [e.job_id for e in found] == ["s-new"]
    assert ledger.browse_jobs(JobQuery(user_data="100%x")) == []
    assert [e.job_id for e in ledger.browse_jobs(JobQuery(queue_id="q1"))] == ["s-new"]
    ledger.close()
    assert store.version() == SCHEMA_VERSION


def test_usage_of_delivered_jobs_by_day_queue_and_engine(ledger: Ledger) -> None:
    now = time.time()
    ledger.commit(LedgerWrites(
        delivered=[("s1", "files"), ("s2", "files"), ("s3", "files")],
        usage=[Usage("s1", "q1", "16k_zh", 1800.0), Usage("s2", "q1", "16k_en", 900.0),
               Usage("s3", "q2", "16k_zh", 3600.0)],
    ))  # fmt: skip
    ledger.commit(LedgerWrites(usage=[Usage("s1", "q1", "16k_zh", 1800.0)]))  # counted once
    today = time.strftime("%Y-%m-%d", time.gmtime(now))
    by_day = ledger.usage(now - 3600, "day")
    assert {(r.key, r.engine, r.jobs, r.audio_seconds) for r in by_day} == {
        (today, "16k_en", 1, 900.0), (today, "16k_zh", 2, 5400.0),
    }  # fmt: skip
    by_queue = {(r.key, r.engine): (r.jobs, r.audio_seconds) for r in ledger.usage(0, "queue")}
    assert by_queue == {("q1", "16k_en"): (1, 900.0), ("q1", "16k_zh"): (1, 1800.0),
                        ("q2", "16k_zh"): (1, 3600.0)}  # fmt: skip
    assert ledger.usage(now + 60, "engine") == []
