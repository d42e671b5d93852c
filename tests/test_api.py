"""The sidecar HTTP API and systemd notification, on a real daemon process."""

from __future__ import annotations

import json
import signal
import socket
from pathlib import Path

import requests

from .conftest import Broker
from .support import free_port, start_daemon, start_emulator, wait_for, write_config


def test_api_health_metrics_submit_get_and_sd_notify(tmp_path: Path, broker: Broker) -> None:
    emu = start_emulator(tmp_path / "emulator", broker.service_url, "--job-delay", "0.2")
    port = free_port()
    cfg = write_config(tmp_path, emu, broker.service_url)
    cfg.path.write_text(cfg.path.read_text() + f'\n[http]\nlisten = "127.0.0.1:{port}"\n')
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)
    cfg.env["NOTIFY_SOCKET"] = str(tmp_path / "notify.sock")
    daemon = start_daemon(cfg, tmp_path / "daemon.log")
    base = f"http://127.0.0.1:{port}"
    try:
        assert notify.recv(100) == b"READY=1"
        assert requests.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
        wait_for(lambda: requests.get(f"{base}/readyz", timeout=5).status_code == 200, 10, "ready")

        bad = requests.post(f"{base}/v1/jobs", json={"input": "a", "url": "http://x/y"}, timeout=5)
        assert bad.status_code == 400 and "exactly one" in bad.json()["error"]
        created = requests.post(f"{base}/v1/jobs", json={"input": "media/x.mp3"}, timeout=10)
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        wait_for((cfg.results / f"{job_id}.json").exists, 30, "the submitted job's result")

        got = requests.get(f"{base}/v1/jobs/{job_id}", timeout=10)
        assert got.status_code == 200 and got.json()["job_id"] == job_id
        assert requests.get(f"{base}/v1/jobs/../../etc", timeout=5).status_code in (400, 404)
        unknown = requests.get(f"{base}/v1/jobs/s{'0' * 32}", timeout=10)
        assert unknown.status_code == 404

        metrics = requests.get(f"{base}/metrics", timeout=5).text
        assert "asrd_ready 1" in metrics
        assert 'asrd_events_total{kind="delivered",name="files"} 1' in metrics
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=40) == 0
        emu.stop()
    assert notify.recv(100) == b"STOPPING=1"
    record = json.loads((cfg.results / f"{job_id}.json").read_text())
    # No transcript sidecar: the emulator makes one up from the object name; the job still ends.
    assert record["state"] in ("Success", "Failed")
