"""The soak harness (soak/run.py) for a short run with one fault of each cheap kind: a SIGKILL of
one worker and of the whole daemon, a broker restart, the webhook sink down, a degraded network
link, the file sink's disk full. Its checker must find nothing lost, nothing applied twice and
no dead letter but the planted ones, so the harness cannot rot between full runs.

It runs the harness as its own process with its own broker (on free ports, beside the session's),
PostgreSQL, emulator and network namespace, and needs root, as `make soak` does."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from soak import faults

from tests.support import ROOT, free_port

# With the set-up (a broker start takes 20-75 s on a loaded 2-core machine) and the drain, the
# harness runs about 3 minutes.
LOAD_S = 150
GAP_S = 6


def test_short_schedules_fit_and_cover_the_cheap_kinds() -> None:
    cheap = faults._short(LOAD_S - 30 - GAP_S, GAP_S)
    assert [p.kind for p in cheap] == [k.name for k in faults.KINDS.values() if k.cheap]
    # The faults fit in the load's time (the drain follows).
    assert sum(p.gap_before_s + faults.cost(p.kind, p.hold_s) for p in cheap) <= LOAD_S
    full = faults.plan(3600, 20)
    kinds = {p.kind for p in full} | {p.overlay for p in full if p.overlay}
    # every kind, several times, some overlapping
    assert kinds == set(faults.KINDS) - faults.NOT_FOR["postgres"]
    assert len(full) + sum(1 for p in full if p.overlay) >= 40
    pg_kinds = set(faults.KINDS) - faults.NOT_FOR["postgres"]
    assert min(sum(1 for p in full if p.kind == k) for k in pg_kinds) >= 2
    sqlite = faults.plan(1800, 20, ledger="sqlite")
    kinds = {p.kind for p in sqlite} | {p.overlay for p in sqlite if p.overlay}
    assert kinds == set(faults.KINDS) - faults.NOT_FOR["sqlite"]
    short = {p.kind for p in faults._short(300, 10, ledger="sqlite")}
    assert "ledger-full" in short and not short & faults.NOT_FOR["sqlite"]


def test_named_kinds_repeat_for_the_whole_run_with_their_second_phase() -> None:
    named = faults.named(600, 20, ["webhook-500"])
    assert [p.kind for p in named[:4]] == ["webhook-500", "webhook-timeout"] * 2
    assert named[1].gap_before_s == 0  # the second phase follows its first at once
    assert sum(p.gap_before_s + faults.cost(p.kind, p.hold_s) for p in named) <= 600 - 30 - 20
    assert len(named) == 6  # 3 rounds of 140 s fit in the 550 s
    with pytest.raises(ValueError, match="unknown fault kind 'webhook'"):
        faults.named(600, 20, ["webhook"])


@pytest.mark.slow
def test_soak_under_cheap_faults_loses_nothing(tmp_path: Path) -> None:
    assert os.geteuid() == 0, "the soak needs root (network namespace, tmpfs)"
    env = {
        **os.environ,
        "SOAK_S": str(LOAD_S),
        "SOAK_RATE": "10",
        "SOAK_GAP_S": str(GAP_S),
        "SOAK_KINDS": "cheap",
        "SOAK_DRAIN_S": "90",
        "SOAK_RESULTS": str(tmp_path / "results"),
        "SOAK_DIR": str(tmp_path / "work"),
        # Its own broker, beside the one the other tests share.
        "PULSAR_BROKER_PORT": str(free_port()),
        "PULSAR_WEB_PORT": str(free_port()),
        "PULSAR_BOOKIE_PORT": str(free_port()),
    }
    done = subprocess.run(
        [sys.executable, "-m", "soak.run"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    found = sorted((tmp_path / "results").glob("*.json"))
    assert found, f"no result; exit {done.returncode}: {done.stdout[-2000:]} {done.stderr[-2000:]}"
    result = json.loads(found[-1].read_text())
    assert result["jobs_submitted"] >= 1000  # 10 jobs/s
    assert result["lost_count"] == 0, result["lost"]
    assert result["double_effects"] == {"files": 0, "webhook": 0}
    assert result["dead_letters_not_planted"] == 0
    assert result["owed_at_end"] == 0
    assert result["unknown_creates_at_end"] <= result["submit_failed"]
    assert result["daemon_unexpected_exits"] == []
    cheap = {k.name for k in faults.KINDS.values() if k.cheap}
    assert {k: v["count"] for k, v in result["fault_kinds"].items()} == dict.fromkeys(cheap, 1)
    assert all(f["resumed_s"] is not None and not f["note"] for f in result["faults"])
    assert all(result["verdict"].values())
    # The samples have the broker's view of each worker's consumer, found by its pid, and each
    # process's CPU time: what tells a worker the broker left out.
    seen = [s for s in result["samples"] if set(s.get("consumers", {})) == {"worker0", "worker1"}]
    assert seen, "no sample has the broker's view of both workers' consumers"
    assert seen[-1]["consumers"]["worker0"]["out"] > 0
    assert all(p["cpu_s"] > 0 for p in seen[-1]["procs"].values())
    assert done.returncode == 0, done.stdout[-2000:]
