"""scripts/pulsar: a second start is a no-op, and stop ends only the broker it started."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import requests

from .conftest import ROOT, Broker

SCRIPT = str(ROOT / "scripts" / "pulsar")


def test_second_start_is_a_noop(broker: Broker) -> None:
    if broker.script is None:
        # An external or container broker: this run cannot restart it; check it is the one used.
        health = requests.get(f"{broker.admin_url}/admin/v2/brokers/health", timeout=30)
        assert health.text == "ok"
        return
    pid_before = (ROOT / "var" / "pulsar" / "broker.pid").read_text().strip()
    started = time.monotonic()
    again = subprocess.run([SCRIPT, "start"], capture_output=True, text=True, timeout=60)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == broker.service_url
    assert time.monotonic() - started < 10
    assert (ROOT / "var" / "pulsar" / "broker.pid").read_text().strip() == pid_before
    status = subprocess.run([SCRIPT, "status"], capture_output=True, text=True)
    assert status.returncode == 0 and f"pid {pid_before}" in status.stderr


def test_stop_never_kills_a_process_it_did_not_start(tmp_path: Path) -> None:
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        run = tmp_path / "run"
        run.mkdir()
        (run / "broker.pid").write_text(f"{stranger.pid}\n")  # a stale or forged pid file
        env = {**os.environ, "PULSAR_RUN_DIR": str(run)}
        out = subprocess.run([SCRIPT, "stop"], capture_output=True, text=True, env=env)
        assert out.returncode == 0
        assert "not running" in out.stderr
        assert stranger.poll() is None, "stop killed a process that is not its broker"
        status = subprocess.run([SCRIPT, "status"], capture_output=True, env=env)
        assert status.returncode == 3
    finally:
        stranger.kill()
        stranger.wait()
