"""The SQLite ledger on its own: deliveries, crash-proof attempt counts, pruning, reopening."""

from __future__ import annotations

import time
from pathlib import Path

from asrd.ledger import SqliteLedger


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
    assert sqlite3.connect(path).execute("PRAGMA user_version").fetchone()[0] == 2
