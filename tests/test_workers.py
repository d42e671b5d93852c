"""``[pulsar] workers = 3`` on a PostgreSQL ledger: the supervisor's contract (READY=1 and
/readyz once all workers are subscribed, watchdog only while all are alive, dead workers
restarted, one exit status) and the delivery guarantees when single workers and the supervisor
are killed, when the broker restarts, under CI faults and duplicate callbacks. The sink outage
and hostile messages with workers are in test_sink_outage.py and test_bad_messages.py."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests

from tests import postgres as pg

from .conftest import Broker
from .receiver import Receiver
from .support import (
    DaemonConfig,
    Emulator,
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
from .test_reliability import FAST_RETRY, check_delivered_once

ALL_READY = "all workers subscribed"


def workers_config(
    tmp_path: Path,
    emulator: Emulator,
    broker: Broker,
    postgres: Any,
    extra_pulsar: str = "",
    **kw: Any,
) -> DaemonConfig:
    return write_config(
        tmp_path,
        emulator,
        broker.service_url,
        extra_pulsar=f"workers = 3\n{FAST_RETRY}\n{extra_pulsar}",
        **pg.ledger_config(postgres),
        **kw,
    )


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split() if not gone(int(p))]


def gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie (not yet reaped) counts as gone.
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


class Notifications:
    """A stand-in for systemd's notify socket: what the supervisor says, with arrival times."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.05)
        self.seen: list[tuple[float, str]] = []

    def drain(self) -> list[tuple[float, str]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                return self.seen
            for line in data.decode().splitlines():
                self.seen.append((time.monotonic(), line))

    def times(self, state: str) -> list[float]:
        return [t for t, s in self.drain() if s == state]


def test_supervisor_ready_watchdog_restart_and_stop(
    tmp_path: Path, broker: Broker, emulator: Emulator, postgres: Any
) -> None:
    port = free_port()
    cfg = workers_config(
        tmp_path, emulator, broker, postgres, extra=f'[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    notify = Notifications(tmp_path / "notify")
    cfg.env = {"NOTIFY_SOCKET": str(notify.path), "WATCHDOG_USEC": "2000000"}
    log = tmp_path / "daemon.log"
    daemon = start_daemon(cfg, log, ready_event=ALL_READY)
    try:
        wait_for(lambda: notify.times("READY=1"), 10, "READY=1")
        text = log.read_text()
        assert text.count('"event": "worker subscribed"') == 3  # all three before READY=1
        assert text.count('"event": "subscribed"') == 3
        workers = worker_pids(log)
        assert sorted(children(daemon.pid)) == sorted(workers)
        wait_for(lambda: len(notify.times("WATCHDOG=1")) >= 2, 5, "watchdog pings")
        wait_for(lambda: readyz(port) == 200, 5, "/readyz to say ready")
        assert scrape(port, "asrd_workers_ready") == 3.0

        os.kill(workers[1], signal.SIGKILL)  # worker 1 dies (worker 0 serves the API)
        killed_at = time.monotonic()
        # Worker 0 is still subscribed, but not every worker is: not ready.
        wait_for(lambda: readyz(port) == 503, 5, "/readyz to say not ready")
        assert scrape(port, "asrd_workers_ready") == 2.0
        wait_for(
            lambda: len(children(daemon.pid)) == 3 and workers[1] not in children(daemon.pid),
            15,
            "the worker restarted",
        )
        wait_for(lambda: log.read_text().count('"event": "worker subscribed"') == 4, 30, "resub")
        wait_for(lambda: readyz(port) == 200, 5, "/readyz to say ready again")
        time.sleep(2.5)
        pings = notify.times("WATCHDOG=1")
        after = [t for t in pings if t > killed_at]
        gaps = [b - a for a, b in zip([killed_at, *after], after, strict=False)]
        assert max(gaps) >= 1.5, gaps  # no ping while a worker was dead or not yet subscribed
        assert after and after[-1] > time.monotonic() - 2.0  # pings again once all are back
        assert "worker died; restarting" in log.read_text()
        assert "killed by SIGKILL" in log.read_text()
        assert len(notify.times("READY=1")) == 1  # READY=1 once, not per restart

        # Work still flows through the restarted set of workers, and worker 0's /metrics
        # counts what all of them did.
        jobs = create_jobs(cfg, 30)
        wait_for(lambda: result_ids(cfg) >= set(jobs), 60, "results")
        wait_for(
            lambda: scrape(port, "asrd_messages_total", outcome="done") == 30.0,
            10,
            "/metrics to count all 30 messages",
        )
        workers = children(daemon.pid)
    finally:
        status = stop_daemon(daemon)
    assert status == 0
    assert all(gone(pid) for pid in workers)
    assert "STOPPING=1" in [s for _, s in notify.drain()]
    check_delivered_once(cfg, jobs)
    by_worker = {
        line["worker"]: line["counters"].get("messages.done", 0)
        for line in map(json.loads, log.read_text().splitlines())
        if line.get("event") == "asrd stopped"
    }
    assert sorted(by_worker) == [0, 1, 2] and sum(by_worker.values()) == 30
    assert sum(1 for n in by_worker.values() if n) >= 2, by_worker  # not worker 0 alone


def scrape(port: int, name: str, **labels: str) -> float:
    """One sample as /metrics shows it (-1 if it is not there)."""
    from prometheus_client.parser import text_string_to_metric_families

    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return -1.0


def worker_pids(log: Path) -> list[int]:
    """The workers' pids by index, as the supervisor's latest start says."""
    starts = [line for line in log.read_text().splitlines() if '"workers started"' in line]
    return [int(pid) for pid in json.loads(starts[-1])["pids"]]


def test_a_worker_configuration_error_is_the_supervisors_exit_78(
    tmp_path: Path, broker: Broker, emulator: Emulator, postgres: Any
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    cfg = workers_config(tmp_path, emulator, broker, postgres)
    cfg.path.write_text(cfg.path.read_text().replace(str(cfg.results), str(blocker / "results")))
    done = subprocess.run(
        [*_asrd_run(cfg)], capture_output=True, text=True, timeout=60, env={**os.environ}
    )
    assert done.returncode == 78, done.stderr[-2000:]
    assert f"config error: sinks.0.dir: cannot write to {blocker / 'results'}" in done.stderr
    assert "worker died; restarting" not in done.stderr  # a config error is not retried


def _asrd_run(cfg: DaemonConfig) -> list[str]:
    import sys

    return [sys.executable, "-m", "asrd.cli", "run", "--config", str(cfg.path)]


def test_killing_single_workers_and_the_supervisor_loses_and_duplicates_nothing(
    tmp_path: Path, broker: Broker, emulator: Emulator, postgres: Any
) -> None:
    cfg = workers_config(tmp_path, emulator, broker, postgres, extra_pulsar="concurrency = 8")
    jobs = create_jobs(cfg, 1200)
    # Slow enough to be killed in the middle of: 3 workers look up to 8 x 10 ids at a time each.
    set_faults(emulator.endpoint, latency_ms=1500, latency_max_ms=2500)
    log = tmp_path / "daemon.log"
    rng = random.Random(11)
    daemon = start_daemon(cfg, log, ready_event=ALL_READY)
    kills = 0
    try:
        while kills < 4 and len(result_ids(cfg)) < len(jobs):
            time.sleep(rng.uniform(0.5, 1.5))
            workers = children(daemon.pid)
            if workers:
                os.kill(rng.choice(workers), signal.SIGKILL)
                kills += 1
        assert len(result_ids(cfg)) < len(jobs), "the jobs went too fast to kill anything"
        wait_for(lambda: log.read_text().count("worker died; restarting") == kills, 5, "restarts")
        # The supervisor itself, without warning: its workers get SIGTERM and drain.
        workers = children(daemon.pid)
        daemon.kill()
        daemon.wait()
        wait_for(lambda: all(gone(p) for p in workers), 45, "the orphaned workers to stop")
        daemon = start_daemon(cfg, log, ready_event=ALL_READY)
        set_faults(emulator.endpoint, latency_ms=0, latency_max_ms=0)
        wait_for(lambda: result_ids(cfg) >= set(jobs), 180, "all 1200 results after the kills")
    finally:
        assert stop_daemon(daemon) == 0
    assert kills == 4
    check_delivered_once(cfg, jobs)
    assert dead_letters(broker.service_url, cfg) == []


def subscription_consumers(broker: Broker, cfg: DaemonConfig) -> list[str]:
    """The names of the consumers the broker has on the run's subscription of its topic."""
    name = cfg.topic.removeprefix("persistent://")
    stats = requests.get(f"{broker.admin_url}/admin/v2/persistent/{name}/stats", timeout=10)
    stats.raise_for_status()
    consumers = stats.json()["subscriptions"][cfg.subscription]["consumers"]
    return sorted(c.get("consumerName", "") for c in consumers)


def worker_consumers(daemon: subprocess.Popen[bytes]) -> list[str]:
    """The consumer names the broker should list for the daemon's workers: host and pid."""
    return sorted(f"asrd-{socket.gethostname()}-{pid}" for pid in children(daemon.pid))


def test_broker_restart_with_workers(
    tmp_path: Path, broker: Broker, emulator: Emulator, postgres: Any
) -> None:
    if broker.script is None:
        pytest.fail("this test restarts the broker: run it against scripts/pulsar")
    port = free_port()
    cfg = workers_config(
        tmp_path, emulator, broker, postgres, extra_pulsar="concurrency = 2",
        extra=f'[http]\nlisten = "127.0.0.1:{port}"\n',
    )  # fmt: skip
    jobs = create_jobs(cfg, 600)
    # Slow enough that the broker goes away mid-run: 3 workers x 2 look-ups of 10 ids at a time.
    set_faults(emulator.endpoint, latency_ms=1000, latency_max_ms=1500)
    log = tmp_path / "daemon.log"
    daemon = start_daemon(cfg, log, ready_event=ALL_READY)
    try:
        wait_for(lambda: readyz(port) == 200, 10, "/readyz to say ready")
        # The broker names each worker's consumer by host and pid, so a consumer it lists can
        # be traced to its process.
        assert subscription_consumers(broker, cfg) == worker_consumers(daemon)
        wait_for(lambda: len(result_ids(cfg)) >= 50, 60, "the first results")
        broker.stop()
        assert len(result_ids(cfg)) < len(jobs), "the broker went down too late to test anything"
        wait_for(lambda: readyz(port) == 503, 15, "/readyz to say not ready")
        broker.start()
        assert daemon.poll() is None, "the daemon must survive a broker restart"
        wait_for(lambda: readyz(port) == 200, 60, "/readyz to say ready again")
        # Every worker comes back on the subscription, not just worker 0. The broker's stats
        # after its restart can trail the clients' own view of their connection by a moment
        # (seen: 0 consumers listed right after /readyz turned 200), so this waits for them.
        wait_for(
            lambda: subscription_consumers(broker, cfg) == worker_consumers(daemon),
            30,
            "every worker's consumer on the broker",
        )
        set_faults(emulator.endpoint, latency_ms=0, latency_max_ms=0)
        wait_for(lambda: result_ids(cfg) >= set(jobs), 120, "all 600 results after the restart")
    finally:
        assert stop_daemon(daemon) == 0
    assert "worker died" not in log.read_text()  # the workers rode it out; none was restarted
    check_delivered_once(cfg, jobs)
    assert dead_letters(broker.service_url, cfg) == []


def test_duplicates_across_workers_reach_a_sink_once_under_ci_faults(
    tmp_path: Path, broker: Broker, emulator: Emulator, postgres: Any
) -> None:
    hook = Receiver()
    cfg = workers_config(
        tmp_path,
        emulator,
        broker,
        postgres,
        extra_pulsar="concurrency = 8",
        extra_sinks=webhook_sink(hook.url()),
    )
    jobs = create_jobs(cfg, 150)
    set_faults(
        emulator.endpoint, callback_duplicate_rate=1.0, error_rate=0.2, error_code="mixed",
        throttle_rps=30, latency_ms=0, latency_max_ms=200,
    )  # fmt: skip
    log = tmp_path / "daemon.log"
    daemon = start_daemon(cfg, log, ready_event=ALL_READY)
    try:
        wait_for(lambda: set(hook.by_job()) >= set(jobs), 120, "every job at the webhook")
        wait_for(lambda: result_ids(cfg) >= set(jobs), 60, "every job in the files")
        time.sleep(2)  # let the duplicates arrive and be settled
    finally:
        assert stop_daemon(daemon) == 0
        hook.close()
    assert {k: len(v) for k, v in hook.by_job().items()} == dict.fromkeys(jobs, 1)
    rows = Counter(ledger_rows(cfg))
    assert set(rows) == {(j, s) for j in jobs for s in ("files", "app")}
    assert max(rows.values()) == 1
    done = log.read_text()
    # The copies were spread over the workers, and more than one worker delivered.
    assert len({line.split('"worker": ')[1][0] for line in done.splitlines()
                if '"asrd stopped"' in line and '"worker": ' in line}) == 3  # fmt: skip
    assert dead_letters(broker.service_url, cfg) == []
