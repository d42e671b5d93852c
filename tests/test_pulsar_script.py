"""scripts/pulsar: a second start is a no-op, stop ends only the broker it started, and a
default port another process holds is replaced by a free one (an explicit one never is)."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
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


def _held_port(port: int) -> socket.socket | None:
    """A listener on loopback ``port``, or None when another process already holds it (the
    port is taken either way)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past closed connections' ports
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        sock.close()
        return None
    sock.listen()
    return sock


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


PORT_VARS = ("PULSAR_BROKER_PORT", "PULSAR_WEB_PORT", "PULSAR_BOOKIE_PORT")


def _script_env(run: Path, **ports: str) -> dict[str, str]:
    """This environment for scripts/pulsar with its own run directory and only ``ports`` set."""
    env = {k: v for k, v in os.environ.items() if k not in PORT_VARS}
    return {**env, "PULSAR_RUN_DIR": str(run), **ports}


def test_an_explicit_port_that_is_taken_stops_the_start_with_its_name(tmp_path: Path) -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    try:
        port = str(listener.getsockname()[1])
        env = _script_env(tmp_path / "run", PULSAR_WEB_PORT=port)
        out = subprocess.run([SCRIPT, "start"], capture_output=True, text=True, env=env)
        assert out.returncode == 1
        assert f"port {port} (PULSAR_WEB_PORT) is taken" in out.stderr
        assert out.stdout == ""
    finally:
        listener.close()


@pytest.mark.slow
def test_a_default_port_taken_by_another_listener_is_replaced_by_a_free_one(
    tmp_path: Path,
) -> None:
    """8080 (the default admin port) held by another listener: the broker starts on a free
    port, `url` / `admin-url` name the ports it runs on, and a restart keeps them (the test
    fixture's Broker.restart relies on it). The two other ports are set explicitly so the test
    never takes this machine's defaults."""
    listener = _held_port(8080)
    run = tmp_path / "run"
    broker_port, bookie_port = str(_free_port()), str(_free_port())
    env = _script_env(run, PULSAR_BROKER_PORT=broker_port, PULSAR_BOOKIE_PORT=bookie_port)
    try:
        started = subprocess.run([SCRIPT, "start"], capture_output=True, text=True, env=env)
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip() == f"pulsar://127.0.0.1:{broker_port}"
        assert "port 8080 is taken by another process; using" in started.stderr
        admin = subprocess.run([SCRIPT, "admin-url"], capture_output=True, text=True, env=env)
        admin_url = admin.stdout.strip()
        assert admin_url.startswith("http://127.0.0.1:") and not admin_url.endswith(":8080")
        health = requests.get(f"{admin_url}/admin/v2/brokers/health", timeout=30)
        assert health.text == "ok"
        url = subprocess.run([SCRIPT, "url"], capture_output=True, text=True, env=env)
        assert url.stdout.strip() == started.stdout.strip()
        again = subprocess.run([SCRIPT, "restart"], capture_output=True, text=True, env=env)
        assert again.returncode == 0, again.stderr
        admin = subprocess.run([SCRIPT, "admin-url"], capture_output=True, text=True, env=env)
        assert admin.stdout.strip() == admin_url
        health = requests.get(f"{admin_url}/admin/v2/brokers/health", timeout=30)
        assert health.text == "ok"
    finally:
        subprocess.run([SCRIPT, "stop"], capture_output=True, env=env, check=False)
        if listener is not None:
            listener.close()
    assert subprocess.run([SCRIPT, "status"], capture_output=True, env=env).returncode == 3
