"""Two ``asrd run`` processes on one PostgreSQL ledger and one subscription, as two hosts or pods
of a fleet (and once with ``workers = 3`` each): the singleton chores run in one process.

- Exactly one reconciler across the fleet: every list request the emulator answers comes from
  the leader's passes (each pass over an empty window is one list request), the other process
  makes none, and passes come no faster than the interval.
- SIGKILL of the leading process: the other process leads within 30 s; the killed one, back,
  follows.
- A PostgreSQL restart ends every lock session: the leader steps down and exactly one process
  leads again, never two at once.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import postgres as pg

from .conftest import Broker
from .support import (
    DaemonConfig,
    Emulator,
    free_port,
    readyz,
    start_daemon,
    stop_daemon,
    wait_for,
    write_config,
)
from .test_workers import ALL_READY, worker_pids

INTERVAL_S = 2.0
TAKEOVER_S = 30.0  # the promise: another process leads within this after the leader dies


@dataclass
class Node:
    """One ``asrd run`` of the fleet (a supervisor with ``workers``)."""

    cfg: DaemonConfig
    port: int
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of its /metrics; empty while it does not answer."""
        from prometheus_client.parser import text_string_to_metric_families

        try:
            r = requests.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5)
        except requests.RequestException:
            return {}
        if r.status_code != 200:
            return {}
        return {
            (s.name, tuple(sorted(s.labels.items()))): float(s.value)
            for family in text_string_to_metric_families(r.text)
            for s in family.samples
        }

    def leads(self) -> bool | None:
        """Whether it leads the reconciler now (None: no answer)."""
        samples = self.metrics()
        value = samples.get(("asrd_leader", (("chore", "reconcile"),)))
        return None if value is None else value == 1.0

    def passes(self) -> float:
        return self.metrics().get(("asrd_reconcile_passes_total", ()), -1.0)


def _node(
    tmp: Path, emulator: Emulator, broker: Broker, ledger: dict[str, str], mq: str, workers: int
) -> Node:
    port = free_port()
    cfg = write_config(
        tmp,
        emulator,
        broker.service_url,
        mq_name=mq,
        extra_pulsar=f"workers = {workers}",
        extra=f'[http]\nlisten = "127.0.0.1:{port}"\n\n'
        f"[reconcile]\ninterval_s = {INTERVAL_S}\ngrace_s = 0\nlookback_s = 60\n",
        **ledger,
    )
    return Node(cfg, port, tmp / "daemon.log")


def _start(node: Node, workers: int) -> None:
    ready = ALL_READY if workers > 1 else "subscribed"
    node.proc = start_daemon(node.cfg, node.log, ready_event=ready)
    wait_for(lambda: node.leads() is not None, 30, "its /metrics")


def _list_pages(emulator: Emulator) -> int:
    return int(emulator.stats().get("stats", {}).get("job_list_pages", 0))


def _one_reconciler(emulator: Emulator, leader: Node, others: list[Node], passes: int) -> None:
    """Over the next ``passes`` passes of ``leader``: every list request is one of its passes,
    no other node runs one, and they come no faster than the interval."""
    before, before_pages = leader.passes(), _list_pages(emulator)
    others_before = [n.passes() for n in others]
    started = time.monotonic()
    wait_for(lambda: leader.passes() >= before + passes, 60, f"{passes} reconcile passes")
    done = leader.passes() - before
    elapsed = time.monotonic() - started
    pages = _list_pages(emulator) - before_pages
    # A pass under way while the two counters are read (its list request answered, its pass
    # not yet counted) puts one at either end out of step; a second reconciler would add one
    # list request per pass of its own.
    assert done - 1 <= pages <= done + 1, (done, pages)
    assert [n.passes() for n in others] == others_before
    # Fleet-wide, as CI sees it: no more than one pass per interval.
    assert pages <= elapsed / INTERVAL_S + 2, (pages, elapsed)


def _the_leader(
    nodes: list[Node], timeout: float, after: Callable[[], bool] = lambda: True
) -> Node:
    """The one node that leads, once exactly one does, every node answers and ``after()``
    holds; never two at any look meanwhile."""

    def one() -> Node | None:
        views = [n.leads() for n in nodes]
        assert views.count(True) <= 1, f"two leaders: {views}"
        if None in views or views.count(True) != 1 or not after():
            return None
        return nodes[views.index(True)]

    found: Node = wait_for(one, timeout, "exactly one leader", interval=0.2)
    return found


def _logged_since(node: Node, offset: int, event: str) -> Callable[[], bool]:
    def check() -> bool:
        with node.log.open("rb") as fh:
            fh.seek(offset)
            return f'"event": "{event}"'.encode() in fh.read()

    return check


@pytest.mark.slow
@pytest.mark.parametrize("workers", [1, 3])
def test_one_process_of_the_fleet_runs_the_chores(
    tmp_path: Path, broker: Broker, emulator: Emulator, postgres: Any, workers: int
) -> None:
    ledger = pg.ledger_config(postgres)
    mq = f"asr-fleet-{uuid.uuid4().hex[:10]}"
    nodes = [_node(tmp_path / n, emulator, broker, ledger, mq, workers) for n in ("a", "b")]
    try:
        for node in nodes:
            _start(node, workers)
        leader = _the_leader(nodes, 30)
        follower = next(n for n in nodes if n is not leader)
        assert '"event": "gained leadership"' in leader.log.read_text()
        assert '"event": "gained leadership"' not in follower.log.read_text()
        # Readiness has nothing to do with leadership: both consume and answer 200.
        wait_for(lambda: [readyz(n.port) for n in nodes] == [200, 200], 30, "both ready")
        _one_reconciler(emulator, leader, [follower], passes=3)

        # The leader dies without a word: its worker 0 (the process holding the locks).
        assert leader.proc is not None
        pid = leader.proc.pid if workers == 1 else worker_pids(leader.log)[0]
        os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        # With workers, the supervisor restarts its worker 0, which competes again.
        candidates = [follower] if workers == 1 else nodes
        new = _the_leader(candidates, TAKEOVER_S)
        took = time.monotonic() - killed
        print(f"takeover after SIGKILL of the leader ({workers} workers each): {took:.1f} s")
        assert took < TAKEOVER_S
        _one_reconciler(emulator, new, [n for n in candidates if n is not new], passes=3)
        if workers == 1:  # the killed process comes back as a follower
            assert leader.proc.wait(timeout=10) == -signal.SIGKILL
            _start(leader, workers)
            assert _the_leader(nodes, 5) is new
            candidates = nodes

        # PostgreSQL restarts: every session ends, every process elects again, and the old
        # leader has stepped down before anyone else leads.
        offset = new.log.stat().st_size
        # (-l: the server's output to its log, else it holds pg_ctl's captured stdout open.)
        log = str(postgres.data_dir.parent / "server.log")
        done = postgres.pg_ctl("-l", log, "-m", "fast", "-w", "-t", "60", "restart")
        assert done.returncode == 0, done.stderr
        restarted = time.monotonic()
        stepped_down = _logged_since(new, offset, "lost leadership")
        again = _the_leader(candidates, TAKEOVER_S, after=stepped_down)
        print(f"one leader again {time.monotonic() - restarted:.1f} s after the restart")
        _one_reconciler(emulator, again, [n for n in candidates if n is not again], passes=3)
        assert _the_leader(candidates, 5) is again
    finally:
        statuses = {id(n): stop_daemon(n.proc) for n in nodes if n.proc is not None}
    # Every process not killed stops cleanly (with workers, the killed worker was restarted).
    assert [statuses[id(n)] for n in candidates] == [0] * len(candidates)
