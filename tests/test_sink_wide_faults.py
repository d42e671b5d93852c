"""A sink down as a whole costs no message an attempt: the file sink's disk full (a real tmpfs
filled by the test), the webhook refusing connections or failing every job. With
``max_attempts = 3`` nothing is dead-lettered for them, the other sink keeps getting its
records, /readyz stays up, and every job reaches the sink once it is back. A record the webhook
refuses on its own still spends its attempts and is dead-lettered."""

from __future__ import annotations

import contextlib
import errno
import math
import sqlite3
import subprocess
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from asrd.sinks.breaker import Breaker

from .conftest import Broker
from .receiver import Received, Receiver
from .support import (
    DaemonConfig,
    Emulator,
    create_jobs,
    dead_letters,
    free_port,
    ledger_rows,
    readyz,
    result_ids,
    start_daemon,
    stop_daemon,
    wait_for,
    webhook_sink,
    write_config,
)

# Quick retries: without the outage pause, every job would be out of attempts within seconds.
RETRIES = "max_attempts = 3\nretry_base_s = 0.2\nretry_max_s = 1.0\nconcurrency = 4"


class Hook:
    """A webhook receiver that records which deliveries it acknowledged (2xx)."""

    def __init__(self, port: int = 0) -> None:
        self.failing: set[str] = set()  # job ids answered 500
        self.fail_all = False
        self.acked: Counter[str] = Counter()
        self.refused: Counter[str] = Counter()  # deliveries answered 500
        self._lock = threading.Lock()
        self.receiver = Receiver(self._reply, port=port)

    def _reply(self, got: Received) -> tuple[int, float]:
        key = got.headers.get("idempotency-key", "")
        with self._lock:
            if self.fail_all or key in self.failing:
                self.refused[key] += 1
                return 500, 0.0
            self.acked[key] += 1
            return 200, 0.0

    def got(self) -> set[str]:
        with self._lock:
            return set(self.acked)


def config(tmp_path: Path, emulator: Emulator, broker: Broker, hook_url: str) -> DaemonConfig:
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        extra_pulsar=RETRIES,
        extra_sinks=webhook_sink(hook_url, "timeout_s = 2"),
    )
    return cfg


def with_http(cfg: DaemonConfig) -> int:
    port = free_port()
    cfg.path.write_text(cfg.path.read_text() + f'\n[http]\nlisten = "127.0.0.1:{port}"\n')
    return port


def paused_metric(port: int, source: str) -> str:
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith(f'asrd_paused{{source="{source}"}}'):
            return line.split()[-1]
    return ""


def logged_pause(cfg: DaemonConfig, source: str) -> bool:
    return any(
        '"paused: ' in line and f'"source": "{source}"' in line
        for line in cfg.log.read_text().splitlines()
    )


@contextlib.contextmanager
def tmpfs(where: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``where`` (root only), unmounted afterwards."""
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(directory: Path) -> Path:
    """Write a file until the file system refuses (ENOSPC); returns it."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with filler.open("wb", buffering=0) as fh:
        try:
            while True:
                fh.write(chunk)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    # Smaller writes too, so not even one page is left.
    with filler.open("ab", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 512)
    return filler


def assert_once_each(cfg: DaemonConfig, jobs: list[str], hook: Hook) -> None:
    rows = Counter(ledger_rows(cfg))
    assert set(rows) == {(j, s) for j in jobs for s in ("files", "app")}
    assert max(rows.values()) == 1, "a sink was recorded twice for a job"
    assert set(hook.acked) == set(jobs)
    assert max(hook.acked.values()) == 1, "the webhook acknowledged a job twice"


def test_file_sink_disk_full_pauses_the_sink_and_loses_nothing(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    hook = Hook()
    cfg = config(tmp_path, emulator, broker, hook.receiver.url())
    port = with_http(cfg)
    with tmpfs(cfg.results, "2m"):
        daemon = start_daemon(cfg, cfg.log)
        try:
            filler = fill(cfg.results)
            jobs = create_jobs(cfg, 150)
            # The other sink keeps getting its records while the disk is full.
            wait_for(lambda: hook.got() >= set(jobs), 120, "the webhook to get every job")
            wait_for(lambda: logged_pause(cfg, "files"), 30, "the file sink's pause")
            assert result_ids(cfg) == set()
            assert paused_metric(port, "files") == "1.0"
            assert readyz(port) == 200, "one sink down must not make the daemon unready"
            # Each job put back several times (each would have been an attempt): still nothing
            # dead-lettered.
            wait_for(lambda: _released(port) >= 3 * len(jobs), 90, "messages to wait for the disk")
            assert dead_letters(broker.service_url, cfg) == []
            filler.unlink()  # space returns
            wait_for(lambda: result_ids(cfg) == set(jobs), 120, "every job in the file sink")
            wait_for(lambda: paused_metric(port, "files") == "0.0", 30, "the sink's resume")
        finally:
            assert stop_daemon(daemon) == 0
            hook.receiver.close()
    assert dead_letters(broker.service_url, cfg) == []
    assert_once_each(cfg, jobs, hook)
    log = cfg.log.read_text()
    assert "No space left on device" in log
    assert '"resumed: files works again"' in log


@pytest.mark.parametrize("fault", ["refused", "500-for-all"])
def test_webhook_down_pauses_the_sink_without_spending_attempts(
    tmp_path: Path, broker: Broker, emulator: Emulator, fault: str
) -> None:
    hook = Hook()
    port = hook.receiver.port
    cfg = config(tmp_path, emulator, broker, hook.receiver.url())
    http = with_http(cfg)
    if fault == "refused":
        hook.receiver.close()
    else:
        hook.fail_all = True
    daemon = start_daemon(cfg, cfg.log)
    try:
        jobs = create_jobs(cfg, 100)
        wait_for(lambda: result_ids(cfg) == set(jobs), 120, "the file sink to get every job")
        wait_for(lambda: logged_pause(cfg, "app"), 30, "the webhook sink's pause")
        assert readyz(http) == 200
        # Several rounds of redelivery at nack_delay_ms = 1 s: each would have cost an attempt.
        wait_for(lambda: _released(http) >= 3 * len(jobs), 90, "messages to wait for the hook")
        assert dead_letters(broker.service_url, cfg) == []
        if fault == "refused":
            hook = Hook(port=port)  # back on the same address
        else:
            hook.fail_all = False
        wait_for(lambda: hook.got() >= set(jobs), 120, "every job at the webhook")
    finally:
        assert stop_daemon(daemon) == 0
        hook.receiver.close()
    assert dead_letters(broker.service_url, cfg) == []
    assert_once_each(cfg, jobs, hook)


def _released(port: int) -> float:
    """Messages put back during an outage without spending an attempt (asrd_messages_total)."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("asrd_messages_total{") and 'outcome="paused"' in line
    )


def test_a_lone_job_the_webhook_fails_from_the_start_is_held_not_dead_lettered(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    """Fewer jobs than the breaker needs, the webhook answering 500 from the first try: the job
    runs through its three quick attempts, yet nothing shows the record is at fault, so it is
    put back without spending more and arrives once the webhook answers again."""
    hook = Hook()
    hook.fail_all = True
    cfg = config(tmp_path, emulator, broker, hook.receiver.url())
    http = with_http(cfg)
    daemon = start_daemon(cfg, cfg.log)
    try:
        [job] = create_jobs(cfg, 1)
        # Retried twice (counted), then put back twice past its budget.
        wait_for(lambda: _released(http) >= 2, 60, "the job to be held past its attempts")
        assert hook.refused[job] >= 4 and dead_letters(broker.service_url, cfg) == []
        assert not logged_pause(cfg, "app"), "one job must not pause the sink"
        hook.fail_all = False
        wait_for(lambda: hook.got() == {job}, 60, "the job at the webhook")
    finally:
        assert stop_daemon(daemon) == 0
        hook.receiver.close()
    assert dead_letters(broker.service_url, cfg) == []
    assert_once_each(cfg, [job], hook)
    assert "held without spending an attempt" in cfg.log.read_text()


def test_one_record_the_webhook_refuses_is_still_dead_lettered(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    hook = Hook()
    cfg = config(tmp_path, emulator, broker, hook.receiver.url())
    jobs = create_jobs(cfg, 30)  # callbacks wait in the queue until the daemon starts
    bad = jobs[7]
    hook.failing.add(bad)  # 500 for this job only, every time
    daemon = start_daemon(cfg, cfg.log)
    try:
        wait_for(lambda: hook.got() == set(jobs) - {bad}, 120, "the other jobs at the webhook")
        wait_for(lambda: hook.refused[bad] > 0, 60, "the bad job's first try")
        # The webhook takes other records after the bad one's first try: the failure is the
        # record's own (had it taken nothing since, the job would be held, not dead-lettered).
        jobs += create_jobs(cfg, 5)
        wait_for(lambda: hook.got() == set(jobs) - {bad}, 120, "the later jobs at the webhook")
        wait_for(lambda: dead_letters(broker.service_url, cfg), 120, "the bad job's dead letter")
    finally:
        assert stop_daemon(daemon) == 0
        hook.receiver.close()
    letters = dead_letters(broker.service_url, cfg)
    assert len(letters) == 1
    reason = letters[0].properties()["ASRD_DLQ_REASON"]
    assert "gave up after 3 attempts" in reason and "HTTP 500" in reason, reason
    assert bad.encode() in letters[0].data()
    assert not logged_pause(cfg, "app"), "one refused record must not pause the sink"
    assert result_ids(cfg) == set(jobs)


def test_breaker_opens_on_different_jobs_in_a_row_only() -> None:
    b = Breaker(threshold=3)
    # One job failing again and again, others getting through: never open.
    for _ in range(10):
        assert not b.record("app", 0, ["j1"])
        assert not b.record("app", 1, ["j1"])
    # Three different jobs in a row with no success between: open, until a success.
    assert not b.record("app", 0, ["j2"])
    assert b.record("app", 0, ["j3"])
    assert b.record("app", 0, ["j4"])
    assert not b.record("other", 0, ["j5"]), "each sink has its own count"
    assert not b.record("app", 2, [])
    assert not b.record("app", 0, ["j2", "j3"])


def test_breaker_remembers_when_a_sink_last_worked() -> None:
    b = Breaker(threshold=3)
    assert b.worked_at("app") == 0.0  # never yet
    b.record("app", 1, [], began=100.0)
    b.record("app", 0, ["j1"], began=150.0)  # a failed call proves nothing
    b.record("app", 2, ["j2"], began=90.0)  # an older call finishing late moves nothing back
    assert b.worked_at("app") == 100.0 and b.worked_at("other") == 0.0
    b.record("app", 1, ["j3"], began=200.0)
    assert b.worked_at("app") == 200.0
    # Off: every failure is the record's own, so nothing is ever held for the sink.
    assert Breaker(threshold=0).worked_at("app") == math.inf


def test_ledger_disk_full_stops_acknowledging_and_loses_nothing(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    """The SQLite ledger on a real tmpfs that the test fills: the daemon stops consuming and
    acknowledging (/readyz 503) and, once space returns, delivers every job; nothing is
    dead-lettered."""
    ledger_dir = tmp_path / "ledgerfs"
    with tmpfs(ledger_dir, "4m"):
        cfg = write_config(
            tmp_path,
            emulator,
            broker.service_url,
            extra_pulsar=RETRIES,
            ledger_url=f"sqlite:///{ledger_dir / 'ledger.db'}",
        )
        port = with_http(cfg)
        daemon = start_daemon(cfg, cfg.log)
        try:
            first = create_jobs(cfg, 20)
            wait_for(lambda: result_ids(cfg) == set(first), 60, "the first jobs delivered")
            filler = fill(ledger_dir)
            jobs = first + create_jobs(cfg, 150)
            wait_for(lambda: readyz(port) == 503, 60, "the ledger's outage to show in /readyz")
            wait_for(lambda: logged_pause(cfg, "ledger"), 10, "the ledger's pause in the log")
            assert paused_metric(port, "ledger") == "1.0"
            assert result_ids(cfg) < set(jobs), "the ledger filled too late to test anything"
            assert dead_letters(broker.service_url, cfg) == []
            filler.unlink()
            wait_for(lambda: result_ids(cfg) == set(jobs), 120, "every job after space returns")
            wait_for(lambda: readyz(port) == 200, 30, "readiness back")
        finally:
            assert stop_daemon(daemon) == 0
        assert dead_letters(broker.service_url, cfg) == []
        db = sqlite3.connect(ledger_dir / "ledger.db")
        try:
            rows = Counter(r[0] for r in db.execute("SELECT job_id FROM deliveries"))
        finally:
            db.close()
    assert set(rows) == set(jobs)


def test_postgresql_ledger_commits_synchronously_whatever_the_server_default(
    postgres: Any,
) -> None:
    """What docs/guarantees.md promises about an OS crash holds on a server configured with
    ``synchronous_commit = off``: asrd's own sessions turn it on."""
    import psycopg

    from asrd.ledger import open_ledger
    from asrd.ledger.postgres import PostgresLedger
    from tests import postgres as pg

    database = postgres.create_database()
    url = postgres.url(database)
    with psycopg.connect(url, password=pg.PASSWORD, autocommit=True) as conn:
        conn.execute(f"ALTER DATABASE {database} SET synchronous_commit = off".encode())
        with psycopg.connect(url, password=pg.PASSWORD) as plain:
            assert plain.execute(b"SHOW synchronous_commit").fetchone() == ("off",)
    ledger = open_ledger(url, password=pg.PASSWORD)
    try:
        assert isinstance(ledger, PostgresLedger)
        with ledger._pool.connection() as conn:
            assert conn.execute(b"SHOW synchronous_commit").fetchone() == ("on",)
    finally:
        ledger.close()
