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
from asrd.ledger.postgres import PgLockSession
from tests import postgres as pg
from tests.support import Clock, free_port


@pytest.fixture
def ledger(postgres: Any) -> Iterator[Ledger]:
    ledger = open_ledger(postgres.url(postgres.create_database()), password=pg.PASSWORD)
    yield ledger
    ledger.close()


LEASE_S = 8.0


def _candidates(ledger: Ledger, clock: Clock, n: int = 2) -> list[Leadership]:
    return [
        Leadership(CHORES, ledger.lock_sessions(), candidate=True, lease_s=LEASE_S, clock=clock)
        for _ in range(n)
    ]


def _leading(node: Leadership) -> set[str]:
    return {chore for chore, leads in node.gauges().items() if leads}


def _beat(clock: Clock, *nodes: Leadership, seconds: float = 3.0) -> None:
    for node in nodes:
        node.step()
    clock.now += seconds


def test_one_of_two_candidates_holds_every_chore(ledger: Ledger) -> None:
    clock = Clock()
    a, b = _candidates(ledger, clock)
    try:
        _beat(clock, a, seconds=0.1)
        _beat(clock, b, seconds=LEASE_S)
        assert _leading(a) == _leading(b) == set()  # a new session waits one lease
        for _ in range(3):  # however often both try, the first keeps them
            _beat(clock, a, b)
        assert _leading(a) == set(CHORES)
        assert _leading(b) == set()
        a.stop()  # a clean stop frees the locks at once
        assert _leading(a) == set()
        b.step()
        assert _leading(b) == set(CHORES)
    finally:
        a.stop()
        b.stop()


def test_when_every_session_ends_at_once_nobody_leads_twice(ledger: Ledger, postgres: Any) -> None:
    clock = Clock()
    a, b = _candidates(ledger, clock)
    try:
        _beat(clock, a, b, seconds=LEASE_S)
        _beat(clock, a, b)
        assert _leading(a) == set(CHORES)
        # The server ends both sessions (as a restart does): a's locks are free, though a has
        # not noticed yet.
        with psycopg.connect(postgres.url(password=True), autocommit=True) as admin:
            ended = admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'asrd-leadership'"
            ).fetchall()
        assert ended == [(True,), (True,)]
        _beat(clock, b)  # b notices its loss and opens a new session: no lock for one lease
        assert _leading(b) == set()
        assert _leading(a) == set(CHORES)  # a's view, until its beat or its lease ends
        _beat(clock, a)
        assert _leading(a) == set()
        clock.now += LEASE_S
        _beat(clock, b, a)
        assert _leading(b) == set(CHORES) and _leading(a) == set()
    finally:
        a.stop()
        b.stop()


def test_a_chore_pass_confirms_the_session_first(ledger: Ledger, postgres: Any) -> None:
    clock = Clock()
    (a,) = _candidates(ledger, clock, 1)
    runs: list[str] = []
    chore = a.only_leader("reconcile", lambda: runs.append("pass"))
    try:
        _beat(clock, a, seconds=LEASE_S)
        _beat(clock, a)
        chore()
        assert runs == ["pass"]
        with psycopg.connect(postgres.url(password=True), autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = 'asrd-leadership'"
            )
        chore()  # before a's next beat: the pass finds the session gone and does not run
        assert runs == ["pass"]
        assert _leading(a) == set()
    finally:
        a.stop()


def test_a_holder_that_cannot_confirm_its_session_stops_leading_after_its_lease(
    ledger: Ledger,
) -> None:
    clock = Clock()
    (a,) = _candidates(ledger, clock, 1)
    try:
        _beat(clock, a, seconds=LEASE_S)
        _beat(clock, a, seconds=0)
        assert a.leads("reconcile")
        clock.now += LEASE_S - 0.5
        assert a.leads("reconcile")
        clock.now += 1.0  # no beat for longer than the lease (a check stuck on the network)
        assert not a.leads("reconcile")
        a.step()  # a beat that gets through confirms it again
        assert a.leads("reconcile")
    finally:
        a.stop()


def test_only_the_leader_runs_a_guarded_chore(ledger: Ledger) -> None:
    clock = Clock()
    a, b = _candidates(ledger, clock)
    runs: list[str] = []
    try:
        _beat(clock, a, b, seconds=LEASE_S)
        _beat(clock, a, b)
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

    clock = Clock()
    node = Leadership(CHORES, sessions, candidate=True, lease_s=LEASE_S, clock=clock)
    try:
        _beat(clock, node)  # the open fails: no leader, no exception
        assert _leading(node) == set() and len(tries) == 1
        _beat(clock, node, seconds=LEASE_S)
        _beat(clock, node)
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
