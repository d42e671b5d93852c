"""The ledger knows what it is owed: a job whose callback never comes and that is older than the
reconciler's list window is delivered by the deadline sweep; a job CI never finishes shows as
overdue (``asrd jobs``, ``GET /v1/jobs``, metrics), on a real daemon, emulator and broker."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import requests

from asrd import config, queueid
from asrd.ci import CiClient
from asrd.ledger import JobEntry, SqliteLedger
from asrd.submit import JobSpec

from .conftest import Broker
from .support import (
    asrd,
    free_port,
    set_faults,
    start_daemon,
    start_emulator,
    stop_daemon,
    wait_for,
    write_config,
)


def test_deadline_sweep_delivers_what_the_list_window_misses(
    tmp_path: Path, broker: Broker
) -> None:
    emu = start_emulator(tmp_path / "emulator", broker.service_url, "--job-delay", "0.5")
    port = free_port()
    # The reconciler looks back 1 s only; anything owed 4 s after its submit is overdue.
    cfg = write_config(
        tmp_path, emu, broker.service_url,
        extra=f'[http]\nlisten = "127.0.0.1:{port}"\n\n[reconcile]\ninterval_s = 1\n'
        "lookback_s = 1\ngrace_s = 0\ndeadline_s = 4\nsweep_interval_s = 1\n",
    )  # fmt: skip
    ci = CiClient(config.load(cfg.path).ci)
    ci.put_object("media/lost.mp3", b"audio")
    ci.put_object("media/stuck.mp3", b"audio")
    set_faults(emu.endpoint, callback_drop_rate=1.0)
    lost = asrd("submit", "--config", str(cfg.path), "--input", "media/lost.mp3")
    assert lost.returncode == 0, lost.stderr
    lost_id = lost.stdout.strip()
    set_faults(emu.endpoint, job_stall_rate=1.0)
    stuck = asrd("submit", "--config", str(cfg.path), "--input", "media/stuck.mp3")
    assert stuck.returncode == 0, stuck.stderr
    stuck_id = stuck.stdout.strip()
    set_faults(emu.endpoint, job_stall_rate=0.0)
    # Two creates a killed `asrd submit` left unanswered (pending in the ledger): one reached
    # CI, one never did. The sweep resolves both by client token.
    settings = queueid.resolved(config.load(cfg.path), ci)  # the queue id, as asrd submit has it
    ledger = SqliteLedger(settings.ledger.path)
    now = time.time()
    reached = JobSpec(input_object="media/lost.mp3", user_data="reached")
    ledger.record_pending(JobEntry("tok-reached", None, "media/lost.mp3", "pending", now, now + 4))
    ledger.record_pending(JobEntry("tok-never", None, "media/never.mp3", "pending", now, now + 4))
    ledger.close()
    reached_id = ci.create_job(reached.request(settings.ci, "tok-reached"))["JobId"]
    wait_for(lambda: (ci.get_job(lost_id) or {}).get("State") == "Success", 10, "the lost job")
    time.sleep(1.5)  # both jobs are now older than the reconciler's window when it first looks

    daemon = start_daemon(cfg, tmp_path / "daemon.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for((cfg.results / f"{lost_id}.json").exists, 30, "the deadline sweep's delivery")
        wait_for((cfg.results / f"{reached_id}.json").exists, 30, "the adopted pending create")
        failed = asrd("jobs", "--config", str(cfg.path), "--state", "failed", "--json").stdout
        [never] = [json.loads(line) for line in failed.splitlines()]
        assert (never["client_token"], never["job_id"]) == ("tok-never", None)
        assert never["reason"] == "the create never reached CI (no job carries its client token)"
        record = json.loads((cfg.results / f"{lost_id}.json").read_text())
        assert (record["job_id"], record["state"]) == (lost_id, "Success")

        def overdue() -> list[dict[str, object]]:
            out = asrd("jobs", "--config", str(cfg.path), "--state", "overdue")
            assert out.returncode == 0, out.stderr
            return [json.loads(line) for line in out.stdout.splitlines()]

        # Swept at least once: CI's state of the stuck job is known.
        [entry] = wait_for(
            lambda: [e for e in overdue() if e["ci_state"] == "Running"], 15, "a swept job"
        )
        assert (entry["job_id"], entry["status"], entry["overdue"]) == (stuck_id, "owed", True)
        assert entry["input"] == "media/stuck.mp3"
        assert entry["reason"] == "still Running at CI past its deadline"
        settled = asrd("jobs", "--config", str(cfg.path), "--state", "settled").stdout
        assert {json.loads(line)["job_id"] for line in settled.splitlines()} == {
            lost_id,
            reached_id,
        }

        listed = requests.get(f"{base}/v1/jobs", params={"state": "overdue"}, timeout=10)
        assert listed.status_code == 200
        assert [j["job_id"] for j in listed.json()["jobs"]] == [stuck_id]
        owed = requests.get(f"{base}/v1/jobs?state=owed&since=1h", timeout=10).json()["jobs"]
        assert [j["job_id"] for j in owed] == [stuck_id]
        bad = requests.get(f"{base}/v1/jobs?state=lost", timeout=10)
        assert bad.status_code == 400 and "state must be one of" in bad.json()["error"]
        metrics = requests.get(f"{base}/metrics", timeout=10).text
        assert "asrd_jobs_owed 1.0\n" in metrics and "asrd_jobs_overdue 1.0\n" in metrics
        age = re.search(r"^asrd_jobs_oldest_owed_age_seconds ([\d.]+)$", metrics, re.M)
        assert age is not None and float(age.group(1)) > 4

        shown = asrd("jobs", "--config", str(cfg.path), "show", stuck_id)
        view = json.loads(shown.stdout)
        assert view["ledger"]["status"] == "owed" and view["ci"]["state"] == "Running"
        assert view["delivered_to"] == []

        # The sidecar API submits through the same ledger, idempotent by client token.
        set_faults(emu.endpoint, callback_drop_rate=0.0)
        body = {"input": "media/api.mp3", "client_token": "app-42", "user_data": "x"}
        made = requests.post(f"{base}/v1/jobs", json=body, timeout=30)
        assert made.status_code == 201, made.text
        repeat = requests.post(f"{base}/v1/jobs", json=body, timeout=30)
        assert repeat.status_code == 200
        assert repeat.json() == {**made.json(), "status": "skipped"}
        assert made.json()["client_token"] == "app-42"
        wait_for((cfg.results / f"{made.json()['job_id']}.json").exists, 30, "the API job")
        assert emu.stats()["stats"]["jobs_created"] == 4
    finally:
        assert stop_daemon(daemon) == 0
        emu.stop()
    log = (tmp_path / "daemon.log").read_text()
    assert "deadline sweep delivered an overdue job" in log
    # The reconciler's window had passed the swept jobs (the API job, whose callback is on its
    # way, it may deliver first).
    reconciled = [ln for ln in log.splitlines() if "reconciled a job whose callback" in ln]
    assert not [ln for ln in reconciled if lost_id in ln or reached_id in ln], reconciled
