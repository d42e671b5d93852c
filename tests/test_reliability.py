"""Delivery guarantees against the real broker and the emulator: retries, dead letters and
replay, crashes (SIGKILL), CI faults, SIGTERM under load, a broker restart."""

from __future__ import annotations

import json
import random
import signal
import time
from collections import Counter
from pathlib import Path

import pytest
import requests

from .conftest import Broker
from .receiver import Receiver
from .support import (
    DaemonConfig,
    Emulator,
    asrd,
    create_jobs,
    dead_letters,
    free_port,
    ledger_rows,
    readyz,
    result_ids,
    set_faults,
    start_daemon,
    stop_daemon,
    wait_for,
    webhook_sink,
    write_config,
)

FAST_RETRY = "retry_base_s = 0.2\nretry_max_s = 1.0"


def check_delivered_once(cfg: DaemonConfig, jobs: list[str]) -> None:
    """Every job in the file sink with the right content, and the ledger agrees: one row each."""
    assert result_ids(cfg) == set(jobs)
    for job_id in jobs:
        record = json.loads((cfg.results / f"{job_id}.json").read_text())
        assert record["job_id"] == job_id and record["state"] == "Success"
        assert record["transcript"] == "第一句。\nsecond sentence"
    rows = Counter(ledger_rows(cfg))
    assert set(rows) == {(j, "files") for j in jobs}
    assert max(rows.values()) == 1
    assert not list(cfg.results.glob(".*.tmp"))


def test_callback_before_job_is_visible_is_retried_not_lost(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg = write_config(tmp_path, emulator, broker.service_url, extra_pulsar=FAST_RETRY)
    set_faults(emulator.endpoint, callback_early_rate=1.0, callback_early_s=1.5)
    log = tmp_path / "daemon.log"
    daemon = start_daemon(cfg, log)
    try:
        jobs = create_jobs(cfg, 5)
        wait_for(lambda: result_ids(cfg) >= set(jobs), 60, "all results")
    finally:
        assert stop_daemon(daemon) == 0
    check_delivered_once(cfg, jobs)
    assert "still Running after its callback" in log.read_text()
    assert dead_letters(broker.service_url, cfg) == []


def test_dead_letter_then_replay(tmp_path: Path, broker: Broker, emulator: Emulator) -> None:
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        extra_pulsar=f"max_attempts = 2\n{FAST_RETRY}",
    )
    [job] = create_jobs(cfg, 1)
    set_faults(emulator.endpoint, error_rate=1.0)  # CI answers every get with 503
    daemon = start_daemon(cfg, tmp_path / "daemon.log")
    try:
        wait_for(lambda: dead_letters(broker.service_url, cfg), 60, "the dead letter")
        listed = asrd("dlq", "list", "--config", str(cfg.path))
        assert listed.returncode == 0, listed.stderr
        assert job in listed.stdout
        assert "gave up after 2 attempts" in listed.stdout and "ServiceUnavailable" in listed.stdout
        assert result_ids(cfg) == set()

        set_faults(emulator.endpoint, error_rate=0.0)
        replayed = asrd("dlq", "replay", "--config", str(cfg.path), "--id", job)
        assert replayed.returncode == 0, replayed.stderr
        assert "replayed" in replayed.stdout and job in replayed.stdout
        wait_for(lambda: result_ids(cfg) == {job}, 30, "the replayed job delivered")
        after = asrd("dlq", "list", "--config", str(cfg.path))
        assert after.stdout.startswith("0 message(s)")
        missing = asrd("dlq", "replay", "--config", str(cfg.path), "--id", "s" + "0" * 32)
        assert missing.returncode == 1 and "not found" in missing.stderr
    finally:
        assert stop_daemon(daemon) == 0
    check_delivered_once(cfg, [job])


def test_ci_faults_5xx_throttling_latency(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        extra_pulsar=f"concurrency = 16\n{FAST_RETRY}",
    )
    # One id per describe: every job costs CI requests of its own, so the faults hit often
    # (batches of messages still go through the pipeline together).
    cfg.env = {"ASRD_CI__GET_BATCH_SIZE": "1"}
    jobs = create_jobs(cfg, 200)
    set_faults(
        emulator.endpoint, error_rate=0.2, error_code="mixed", throttle_rps=20,
        latency_ms=0, latency_max_ms=300,
    )  # fmt: skip
    daemon = start_daemon(cfg, tmp_path / "daemon.log")
    try:
        wait_for(lambda: result_ids(cfg) >= set(jobs), 120, "all 200 results under CI faults")
    finally:
        assert stop_daemon(daemon) == 0
    check_delivered_once(cfg, jobs)
    assert dead_letters(broker.service_url, cfg) == []
    # The faults really happened: the emulator counts what it injected.
    counts = requests.get(f"{emulator.endpoint}/-/faults", timeout=5).json()["counts"]
    assert counts.get("error", 0) >= 10, counts
    assert counts.get("latency", 0) >= 100, counts
    assert counts.get("throttled", 0) >= 1, counts


def test_sigkill_at_random_moments_loses_and_duplicates_nothing(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        extra_pulsar=f"concurrency = 8\n{FAST_RETRY}",
    )
    jobs = create_jobs(cfg, 1000)
    # Slow CI down so that the 1,000 jobs take long enough to be killed in the middle of, often
    # (look-ups of up to 10 ids share one request).
    set_faults(emulator.endpoint, latency_ms=300, latency_max_ms=600)
    log = tmp_path / "daemon.log"
    rng = random.Random(7)
    kills = 0
    daemon = start_daemon(cfg, log)
    try:
        while kills < 6 and len(result_ids(cfg)) < len(jobs):
            time.sleep(rng.uniform(0.5, 2.0))
            daemon.kill()  # SIGKILL: no drain, no flush
            daemon.wait()
            kills += 1
            # Half the time kill again before it has even subscribed.
            daemon = start_daemon(cfg, log, wait_subscribed=rng.random() < 0.5)
        set_faults(emulator.endpoint, latency_ms=0, latency_max_ms=0)
        wait_for(lambda: result_ids(cfg) >= set(jobs), 180, "all 1000 results after the kills")
        wait_for(lambda: b'"event": "subscribed"' in log.read_bytes(), 30, "the last start")
    finally:
        assert stop_daemon(daemon) == 0
    assert kills >= 5
    check_delivered_once(cfg, jobs)
    assert dead_letters(broker.service_url, cfg) == []


def test_sigterm_under_load_drains_within_deadline(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    deadline = 5.0
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        extra_pulsar=f"concurrency = 8\nmax_in_flight = 40\nshutdown_deadline_s = {deadline}\n"
        f"{FAST_RETRY}",
    )
    jobs = create_jobs(cfg, 300)
    # Look-ups of up to 10 ids share a request, 40 messages in flight at most: slow enough that
    # 300 jobs outlast the stop (16 look-ups in flight would finish them all within it).
    set_faults(emulator.endpoint, latency_ms=800, latency_max_ms=1200)
    log = tmp_path / "daemon.log"
    daemon = start_daemon(cfg, log)
    wait_for(lambda: len(result_ids(cfg)) >= 20, 60, "the first results")
    started = time.monotonic()
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=deadline + 15) == 0
    assert time.monotonic() - started < deadline + 5
    assert len(result_ids(cfg)) < len(jobs), "stopped too late to test anything"
    set_faults(emulator.endpoint, latency_ms=0, latency_max_ms=0)
    daemon = start_daemon(cfg, log)
    try:
        wait_for(lambda: result_ids(cfg) >= set(jobs), 120, "the rest after restart")
    finally:
        assert stop_daemon(daemon) == 0
    check_delivered_once(cfg, jobs)


def test_broker_restart_mid_run(tmp_path: Path, broker: Broker, emulator: Emulator) -> None:
    if broker.script is None:
        pytest.fail("this test restarts the broker: run it against scripts/pulsar")
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        extra_pulsar=f"concurrency = 2\n{FAST_RETRY}",
    )
    port = free_port()
    cfg.path.write_text(cfg.path.read_text() + f'\n[http]\nlisten = "127.0.0.1:{port}"\n')
    jobs = create_jobs(cfg, 500)
    # Slow enough that the broker goes away mid-run (2 look-ups of up to 10 ids at a time):
    # the daemon holds the backlog it has prefetched and works on it while the broker stops.
    set_faults(emulator.endpoint, latency_ms=500, latency_max_ms=800)
    log = tmp_path / "daemon.log"
    daemon = start_daemon(cfg, log)
    try:
        wait_for(lambda: len(result_ids(cfg)) >= 50, 60, "the first results")
        broker.stop()
        delivered_while_down = len(result_ids(cfg))
        assert delivered_while_down < len(jobs), "the broker went down too late to test anything"
        wait_for(lambda: readyz(port) == 503, 15, "/readyz to report not ready")
        broker.start()
        assert daemon.poll() is None, "the daemon must survive a broker restart"
        wait_for(lambda: readyz(port) == 200, 60, "/readyz to report ready again")
        set_faults(emulator.endpoint, latency_ms=0, latency_max_ms=0)
        wait_for(lambda: result_ids(cfg) >= set(jobs), 180, "all 500 results after the restart")
    finally:
        assert stop_daemon(daemon) == 0
    check_delivered_once(cfg, jobs)
    assert dead_letters(broker.service_url, cfg) == []


def test_duplicate_callbacks_reach_a_sink_once(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    hook = Receiver()
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        extra_sinks=webhook_sink(hook.url()),
    )
    set_faults(emulator.endpoint, callback_duplicate_rate=1.0)
    daemon = start_daemon(cfg, tmp_path / "daemon.log")
    try:
        jobs = create_jobs(cfg, 50)
        wait_for(lambda: set(hook.by_job()) >= set(jobs), 60, "every job at the webhook")
        time.sleep(2)  # let the duplicates arrive and be settled
    finally:
        assert stop_daemon(daemon) == 0
        hook.close()
    assert {k: len(v) for k, v in hook.by_job().items()} == dict.fromkeys(jobs, 1)
    # Both copies of every callback were settled; only one of each had an effect.
    assert '"messages.done": 100' in (tmp_path / "daemon.log").read_text()
