"""The SQLite ledger on its own: deliveries, crash-proof attempt counts, submitted jobs, pruning,
reopening, migration."""

from __future__ import annotations

import time
from pathlib import Path

from asrd.jobs import job_gauges, select
from asrd.ledger import FAILED, OWED, PENDING, SCHEMA_VERSION, SETTLED, JobEntry, SqliteLedger


def test_deliveries_and_attempts_survive_reopening(tmp_path: Path) -> None:
    path = tmp_path / "state" / "ledger.db"
    ledger = SqliteLedger(path)
    ledger.mark_delivered("s1", "files")
    ledger.mark_delivered("s1", "files")  # a second delivery of the same job is one row
    ledger.mark_delivered("s1", "app")
    first = ledger.begin_attempt("topic|1:0:-1")
    ledger.note_failure("topic|1:0:-1", "CI 503")
    ledger.close()

    ledger = SqliteLedger(path)  # as after a crash and restart
    assert ledger.delivered("s1") == {"files", "app"}
    assert ledger.delivered("s2") == set()
    second = ledger.begin_attempt("topic|1:0:-1")
    assert (first.count, second.count) == (1, 2)
    assert second.first_at == first.first_at
    assert second.last_reason == "CI 503"
    ledger.clear_attempts("topic|1:0:-1")
    assert ledger.begin_attempt("topic|1:0:-1").count == 1
    ledger.close()


def test_prune_forgets_only_old_rows(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    ledger.mark_delivered("s-old", "files")
    ledger.begin_attempt("old")
    time.sleep(0.2)
    ledger.mark_delivered("s-new", "files")
    ledger.begin_attempt("new")
    assert ledger.prune(older_than_s=0.1) == 2
    assert ledger.delivered("s-old") == set()
    assert ledger.delivered("s-new") == {"files"}
    assert ledger.begin_attempt("new").count == 2
    ledger.close()


def test_a_version_1_ledger_is_migrated_and_keeps_its_deliveries(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "ledger.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE deliveries (job_id TEXT NOT NULL, sink TEXT NOT NULL,
            delivered_at REAL NOT NULL, PRIMARY KEY (job_id, sink)) WITHOUT ROWID;
        CREATE TABLE attempts (message_key TEXT PRIMARY KEY, count INTEGER NOT NULL,
            last_reason TEXT NOT NULL, updated_at REAL NOT NULL) WITHOUT ROWID;
        """
    )
    old.execute("INSERT INTO deliveries VALUES ('s1', 'files', ?)", (time.time(),))
    old.execute("INSERT INTO attempts VALUES ('k', 3, 'x', 0)")
    old.commit()
    old.close()

    ledger = SqliteLedger(path)
    assert ledger.delivered("s1") == {"files"}
    assert ledger.begin_attempt("k").count == 1
    assert ledger.prune(older_than_s=3600) == 0
    ledger.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_a_version_2_ledger_gains_the_jobs_table(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "ledger.db"
    old = sqlite3.connect(path)
    old.executescript(
        """
        CREATE TABLE deliveries (job_id TEXT NOT NULL, sink TEXT NOT NULL,
            delivered_at REAL NOT NULL, PRIMARY KEY (job_id, sink)) WITHOUT ROWID;
        CREATE TABLE attempts (message_key TEXT PRIMARY KEY, count INTEGER NOT NULL,
            last_reason TEXT NOT NULL, first_at REAL NOT NULL) WITHOUT ROWID;
        PRAGMA user_version = 2;
        """
    )
    old.execute("INSERT INTO deliveries VALUES ('s1', 'files', ?)", (time.time(),))
    old.commit()
    old.close()
    ledger = SqliteLedger(path)
    assert ledger.delivered("s1") == {"files"}
    assert ledger.job_stats(time.time()).owed == 0
    ledger.close()
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def entry(token: str, job_id: str | None, submitted_at: float, deadline_s: float) -> JobEntry:
    return JobEntry(token, job_id, f"media/{token}.mp3", PENDING, submitted_at,
                    submitted_at + deadline_s)  # fmt: skip


def test_submitted_jobs_from_pending_to_settled(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
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

    ledger.settle("s1", "Success")
    ledger.settle("s2", "Failed")  # CI ended it Failed: nothing more is owed, but it failed
    ledger.settle("s9", "Success")  # not submitted by asrd: nothing to settle
    ledger.fail_job("t4", "the create never reached CI")
    assert ledger.job("s1").status == SETTLED  # type: ignore[union-attr]
    assert ledger.job("s2").status == FAILED  # type: ignore[union-attr]
    failed = {e.client_token: e.reason for e in select(ledger, "failed", None, now)}
    assert failed == {"t2": "", "t4": "the create never reached CI"}
    assert [e.job_id for e in select(ledger, "owed", now - 20, now)] == ["s3"]
    gauges = job_gauges(ledger, now)
    assert gauges == {
        "jobs_owed": 1.0, "jobs_overdue": 0.0, "jobs_oldest_owed_age_seconds": 10.0,
    }  # fmt: skip

    ledger.note_check("s3", "Running", "still Running at CI past its deadline")
    assert ledger.job("s3").ci_state == "Running"  # type: ignore[union-attr]
    time.sleep(0.2)
    assert ledger.prune(older_than_s=0.1) == 3  # settled and failed jobs go, owed ones stay
    assert ledger.job_by_token("t3") is not None and ledger.job_by_token("t1") is None
    ledger.close()


def test_a_refused_create_starts_again_and_sweeps_take_the_least_checked(tmp_path: Path) -> None:
    ledger = SqliteLedger(tmp_path / "ledger.db")
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
    ledger.settle("s4", "Success")
    ledger.record_pending(entry("t4", None, now, 10))  # settled: never touched again
    assert ledger.job_by_token("t4").status == SETTLED  # type: ignore[union-attr]
    assert [e.job_id for e in ledger.overdue_jobs(now, 10)] == ["s2", "s3"]
    ledger.note_check("s2", "Running")
    assert [e.job_id for e in ledger.overdue_jobs(now, 1)] == ["s3"]
    ledger.close()
