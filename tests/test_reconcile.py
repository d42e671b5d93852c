"""Callbacks that never come: the reconciler finds finished jobs and delivers them once."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from asrd import config, queueid
from asrd.ci import CiClient

from .conftest import Broker
from .support import (
    asrd,
    create_jobs,
    ledger_rows,
    result_ids,
    set_faults,
    start_daemon,
    start_emulator,
    stop_daemon,
    wait_for,
    write_config,
)


def test_reconcile_delivers_jobs_whose_callback_was_dropped(tmp_path: Path, broker: Broker) -> None:
    emu = start_emulator(tmp_path / "emulator", broker.service_url, "--job-delay", "0")
    try:
        cfg = write_config(tmp_path, emu, broker.service_url)
        set_faults(emu.endpoint, callback_drop_rate=1.0)
        jobs = create_jobs(cfg, 30)
        ci = CiClient(config.load(cfg.path).ci)
        queue = queueid.lookup(ci)
        finished = lambda: sum(1 for _ in ci.list_jobs(queue_id=queue, states="Success"))  # noqa: E731
        wait_for(lambda: finished() >= 30, 30, "jobs to finish")

        first = asrd("reconcile", "--config", str(cfg.path))
        assert first.returncode == 0, first.stderr
        assert "30 delivered now" in first.stdout
        assert result_ids(cfg) == set(jobs)

        again = asrd("reconcile", "--config", str(cfg.path))
        assert "30 already delivered, 0 delivered now" in again.stdout
        assert Counter(ledger_rows(cfg)) == Counter({(j, "files"): 1 for j in jobs})
    finally:
        emu.stop()


def test_daemon_reconciles_periodically(tmp_path: Path, broker: Broker) -> None:
    emu = start_emulator(tmp_path / "emulator", broker.service_url, "--job-delay", "0")
    cfg = write_config(tmp_path, emu, broker.service_url)
    cfg.path.write_text(cfg.path.read_text() + "\n[reconcile]\ninterval_s = 1\ngrace_s = 0\n")
    set_faults(emu.endpoint, callback_drop_rate=0.5)
    daemon = start_daemon(cfg, tmp_path / "daemon.log")
    try:
        jobs = create_jobs(cfg, 20)
        wait_for(lambda: result_ids(cfg) >= set(jobs), 30, "every job, called back or not")
    finally:
        assert stop_daemon(daemon) == 0
        emu.stop()
    assert Counter(ledger_rows(cfg)) == Counter({(j, "files"): 1 for j in jobs})
    assert "reconciled a job whose callback never came" in (tmp_path / "daemon.log").read_text()
