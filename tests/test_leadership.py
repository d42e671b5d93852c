"""The election of the process that runs the singleton chores, driven beat by beat (``step``)
against a real PostgreSQL server: two candidates, one holder; the holder leaving, dying (its
backend terminated by the server) or going silent hands the chores over."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from asrd.leadership import CHORES, Leadership
from asrd.ledger import Ledger, LockSession, open_ledger
from asrd.ledger_pg import PgLockSession
from tests import postgres as pg
from tests.support import Clock, free_port


@pytest.fixture
def ledger(postgres: Any) -> Iterator[Ledger]:
    ledger = open_ledger(postgres.url(postgres.create_database()), password=pg.PASSWORD)
    yield ledger
    ledger.close()


def _candidates(ledger: Ledger, n: int = 2, **kw: Any) -> list[Leadership]:
    return [Leadership(CHORES, ledger.lock_sessions(), candidate=True, **kw) for _ in range(n)]


def _leading(node: Leadership) -> set[str]:
    return {chore for chore, leads in node.gauges().items() if leads}


def test_one_of_two_candidates_holds_every_chore(ledger: Ledger) -> None:
    a, b = _candidates(ledger)
    try:
        for _ in range(3):  # however often both try, the first keeps them
            a.step()
            b.step()
        assert _leading(a) == set(CHORES)
        assert _leading(b) == set()
        a.stop()  # a clean stop frees the locks at once
        assert _leading(a) == set()
        b.step()
        assert _leading(b) == set(CHORES)
    finally:
        a.stop()
        b.stop()


def test_a_holder_whose_connection_ends_steps_down_and_another_takes_over(
    ledger: Ledger, postgres: Any
) -> None:
    a, b = _candidates(ledger)
    try:
        a.step()
        b.step()
        assert _leading(a) == set(CHORES)
        # The server ends a's session (as on a restart or a network cut): its locks are gone.
        with psycopg.connect(postgres.url(password=True), autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'asrd-leadership'"
            ).fetchall()
        assert ended == [(True,), (True,)]  # both candidates' sessions
        b.step()  # b notices its own loss first, and takes the chores
        a.step()  # a notices, steps down, reopens and finds them taken
        assert _leading(b) == set(CHORES)
        assert _leading(a) == set()
    finally:
        a.stop()
        b.stop()


def test_a_holder_that_cannot_confirm_its_session_stops_leading_after_its_lease(
    ledger: Ledger,
) -> None:
    clock = Clock()
    (a,) = _candidates(ledger, 1, lease_s=15.0, clock=clock)
    try:
        a.step()
        assert a.leads("reconcile")
        clock.now += 14.0
        assert a.leads("reconcile")
        clock.now += 2.0  # no beat for longer than the lease (a check stuck on the network)
        assert not a.leads("reconcile")
        a.step()  # a beat that gets through confirms it again
        assert a.leads("reconcile")
    finally:
        a.stop()


def test_only_the_leader_runs_a_guarded_chore(ledger: Ledger) -> None:
    a, b = _candidates(ledger)
    runs: list[str] = []
    try:
        a.step()
        b.step()
        a.only_leader("reconcile", lambda: runs.append("a"))()
        b.only_leader("reconcile", lambda: runs.append("b"))()
        assert runs == ["a"]
    finally:
        a.stop()
        b.stop()


def test_an_unreachable_ledger_means_no_leader_until_it_answers(
    ledger: Ledger, postgres: Any
) -> None:
    opened = ledger.lock_sessions()
    assert opened is not None
    down = postgres.url().replace(f":{postgres.port}/", f":{free_port()}/")
    tries: list[int] = []

    def sessions() -> LockSession:
        # The first try meets a port nobody listens on (the server down), the next the server.
        tries.append(1)
        return opened() if len(tries) > 1 else PgLockSession(down, {}, "down")

    node = Leadership(CHORES, sessions, candidate=True)
    try:
        node.step()  # the open fails: no leader, no exception
        assert _leading(node) == set() and len(tries) == 1
        node.step()
        assert _leading(node) == set(CHORES)
    finally:
        node.stop()


def test_with_sqlite_the_first_worker_leads_without_an_election(tmp_path: Path) -> None:
    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        assert ledger.lock_sessions() is None
        first = Leadership(CHORES, ledger.lock_sessions(), candidate=True)
        other = Leadership(CHORES, ledger.lock_sessions(), candidate=False)
        assert _leading(first) == set(CHORES)
        assert _leading(other) == set()
    finally:
        ledger.close()
