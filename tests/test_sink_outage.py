"""A webhook target down for 30 s mid-run: the backlog waits on the broker (not in memory) and
drains once it is back, each job once per idempotency key; the file sink is not written again;
nothing is dead-lettered."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path

import pytest

from .conftest import Broker
from .receiver import Receiver
from .support import (
    Emulator,
    create_jobs,
    dead_letters,
    ledger_rows,
    result_ids,
    start_daemon,
    stop_daemon,
    wait_for,
    webhook_sink,
    write_config,
)

OUTAGE_S = 30


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` and its children (a supervisor's workers)."""
    total = 0
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    for p in [pid, *map(int, children)]:
        for line in Path(f"/proc/{p}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total


@pytest.mark.parametrize("workers", [1, 3], ids=["one-process", "3-workers-postgresql"])
def test_webhook_down_30s_backlog_drains_memory_bounded(
    tmp_path: Path,
    broker: Broker,
    emulator: Emulator,
    workers: int,
    request: pytest.FixtureRequest,
) -> None:
    ledger: dict[str, str] = {}
    if workers > 1:
        from tests import postgres as pg

        ledger = pg.ledger_config(request.getfixturevalue("postgres"))
    hook = Receiver(lambda _: (200, 0.05))  # a slowish target, so the outage hits mid-run
    port = hook.port
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        extra_pulsar="concurrency = 8\nmax_in_flight = 32\nmax_attempts = 1000\n"
        f"retry_base_s = 0.5\nretry_max_s = 4.0\nworkers = {workers}",
        extra_sinks=webhook_sink(hook.url(), "timeout_s = 2"),
        **ledger,
    )
    jobs = create_jobs(cfg, 600)
    ready = "all workers subscribed" if workers > 1 else "subscribed"
    daemon = start_daemon(cfg, tmp_path / "daemon.log", ready_event=ready)
    samples: list[int] = []
    try:
        wait_for(lambda: len(hook.by_job()) >= 40, 60, "the first webhook deliveries")
        hook.close()  # the target goes away
        time.sleep(1.0)  # a request the server was still answering is recorded by now
        before = set(hook.by_job())
        assert len(before) < len(jobs) / 2, "the outage came too late to test anything"
        # What the target had acknowledged before it went away: delivered, never sent again.
        acknowledged = {job for job, sink in ledger_rows(cfg) if sink == "app"}
        down_at = time.monotonic()
        while time.monotonic() - down_at < OUTAGE_S:
            samples.append(rss_kib(daemon.pid))
            time.sleep(1)
        # During the outage the file sink kept going; the webhook got nothing.
        assert result_ids(cfg) == set(jobs)
        assert daemon.poll() is None
        assert set(hook.by_job()) == before, "the target was not really down"
        hook = Receiver(port=port)  # back, on the same address
        wait_for(
            lambda: before | set(hook.by_job()) >= set(jobs), 120, "the webhook backlog to drain"
        )
    finally:
        assert stop_daemon(daemon) == 0
        hook.close()

    rows = Counter(ledger_rows(cfg))
    assert set(rows) == {(j, s) for j in jobs for s in ("files", "app")}
    assert max(rows.values()) == 1, "a sink was recorded twice for a job"
    # Once per idempotency key: every job reached the target under its own key, and the ones
    # it had acknowledged before the outage did not come again (only requests cut short by the
    # outage may have).
    after = hook.by_job()
    assert before | set(after) == set(jobs)
    assert all(r.json()["job_id"] == key for key, got in after.items() for r in got)
    assert acknowledged and not acknowledged & set(after), acknowledged & set(after)
    assert dead_letters(broker.service_url, cfg) == []
    # Memory: waiting messages live on the broker, so RSS stays flat through the outage.
    first, peak = samples[0], max(samples)
    assert peak < first * 1.25, f"RSS grew from {first} KiB to {peak} KiB during the outage"
    assert peak < 300 * 1024 * workers
