"""The runs against the baseline (benchmarks/baseline.py): asrd on the same
backlog, CI's request quota (the emulator's throttle_rps), and workers = 1 vs 2 on a shared
SQLite and PostgreSQL ledger. Every figure is a ratio of two runs of this same ``make bench``."""

from __future__ import annotations

import contextlib
import json
import math
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import SECRET_ID, SECRET_KEY

from benchmarks import load
from benchmarks.harness import (
    DaemonSetup,
    count_files,
    daemon_counters,
    delivery_times,
    pulsar_url,
    read_proc,
    start_daemon,
    stop_process,
)
from benchmarks.scenarios import Context

QUOTA_RPS = 20
BASELINE = Path(__file__).resolve().parent / "baseline.py"


@dataclass
class Drain:
    """One consumer (asrd or the baseline) over one backlog: rate and CPU."""

    name: str
    jobs: int
    delivered: int
    seconds: float  # first file to last file
    cpu_s: float  # the consumer's processes, start to stop
    dead: int = 0
    notes: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return (self.delivered - 1) / self.seconds if self.seconds > 0 else 0.0

    @property
    def cpu_ms_per_job(self) -> float:
        return self.cpu_s / self.delivered * 1000 if self.delivered else math.nan

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "jobs": self.jobs,
            "delivered": self.delivered,
            "jobs_per_s": round(self.rate, 1),
            "seconds": round(self.seconds, 2),
            "cpu_ms_per_job": round(self.cpu_ms_per_job, 3),
            "dead_lettered": self.dead,
            **self.notes,
        }


@dataclass
class ScaleResults:
    baseline_0: Drain
    baseline_native: Drain  # the same script with the client's native logger (no target)
    baseline_50: Drain
    quota: Drain
    quota_baseline: Drain
    workers: dict[str, Drain]  # "sqlite-1", "sqlite-2", "postgresql-1", "postgresql-2"

    def to_dict(self) -> dict[str, Any]:
        return {
            "baseline_latency_0": self.baseline_0.to_dict(),
            "baseline_native_logger_latency_0": self.baseline_native.to_dict(),
            "baseline_latency_50": self.baseline_50.to_dict(),
            "quota": self.quota.to_dict(),
            "quota_baseline": self.quota_baseline.to_dict(),
            "workers": {k: v.to_dict() for k, v in self.workers.items()},
        }


def _config_path(setup: DaemonSetup) -> Path:
    return Path(getattr(setup, "config", None) or setup.path)  # type: ignore[attr-defined]


def _append(setup: DaemonSetup, section: str, lines: str) -> None:
    """Add keys to a section of the setup's TOML (after its header)."""
    path = _config_path(setup)
    text = path.read_text()
    header = f"[{section}]\n"
    if header in text:
        text = text.replace(header, header + lines.rstrip("\n") + "\n", 1)
    else:
        text += f"\n{header}{lines}\n"
    path.write_text(text)


def fresh_backlog(ctx: Context, name: str, count: int, concurrency: int = 32) -> DaemonSetup:
    """``count`` of the preloaded callbacks on a topic of their own, waiting for ``asrd``."""
    setup = ctx.setup(name, concurrency=concurrency, max_in_flight=max(256, 4 * concurrency))
    load.subscribe(setup.topic, setup.subscription)
    load.publish_bulk(setup.topic, ctx.bodies, count, batching=False)
    load.wait_backlog(setup.topic, setup.subscription, count, timeout=120)
    return setup


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants (the supervisor and its workers)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        with contextlib.suppress(OSError):
            todo += [int(c) for c in Path(f"/proc/{p}/task/{p}/children").read_text().split()]
    return out


def run_asrd(
    setup: DaemonSetup, name: str, expected: int, stall_s: float = 30.0, limit_s: float = 300.0
) -> Drain:
    """``asrd run`` (any number of workers) until ``expected`` files exist or progress stops;
    CPU summed over its process tree (a worker's CPU is read until it exits)."""
    proc = start_daemon(setup)
    cpu: dict[int, float] = {}
    peak_kb: dict[int, int] = {}  # VmHWM per process of the tree
    seen, progress = 0, time.monotonic()
    deadline = time.monotonic() + limit_s
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.25)
            for pid in _tree(proc.pid):
                sample = read_proc(pid)
                if sample is not None:
                    cpu[pid] = sample.cpu_s
                    peak_kb[pid] = max(peak_kb.get(pid, 0), sample.hwm_kb)
            now = count_files(setup.results)
            if now >= expected:
                break
            if now > seen:
                seen, progress = now, time.monotonic()
            elif time.monotonic() - progress > stall_s:
                break
    finally:
        stop_process(proc, timeout=60)
    delivered = delivery_times(setup.results)
    span = max(delivered.values()) - min(delivered.values()) if delivered else 0.0
    counters = daemon_counters(setup)
    dead = counters.get("messages.dead_lettered", 0)
    rss = {
        # The supervisor (workers > 1) is one more process of the tree; its peak counts too.
        "peak_rss_mb_largest_process": round(max(peak_kb.values(), default=0) / 1024, 1),
        "peak_rss_mb_total": round(sum(peak_kb.values()) / 1024, 1),
        "processes": len(peak_kb),
    }
    return Drain(name, expected, len(delivered), span, sum(cpu.values()), dead, rss)


def run_baseline(
    ctx: Context,
    setup: DaemonSetup,
    name: str,
    expected: int,
    seconds: float = 0.0,
    logger: str = "python",
) -> Drain:
    out = setup.dir / "baseline-out"  # type: ignore[attr-defined]
    bucket = _bucket(setup)
    done = subprocess.run(
        [
            sys.executable, str(BASELINE), "--service-url", pulsar_url(), "--topic", setup.topic,
            "--subscription", setup.subscription, "--endpoint", ctx.emulator.endpoint,
            "--bucket", bucket, "--secret-id", SECRET_ID, "--secret-key", SECRET_KEY,
            "--out", str(out), "--expected", str(expected), "--seconds", str(seconds),
            "--logger", logger,
        ],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    lines = done.stdout.strip().splitlines()
    if not lines:
        raise RuntimeError(f"baseline.py exited {done.returncode}: {done.stderr[-2000:]}")
    result = json.loads(lines[-1])
    return Drain(name, expected, int(result["files"]), float(result["seconds"]),
                 float(result["cpu_s"]), notes={"errors": result["errors"]})  # fmt: skip


def _bucket(setup: DaemonSetup) -> str:
    for line in _config_path(setup).read_text().splitlines():
        if line.startswith("bucket = "):
            return line.split('"')[1]
    raise RuntimeError("no bucket in the benchmark config")


def run_all(ctx: Context, jobs: int, latency_ms: float) -> ScaleResults:
    """Every run against the baseline, the CI quota and workers, printed as it goes."""
    count = min(jobs, len(ctx.bodies))
    emu = ctx.emulator

    setup = fresh_backlog(ctx, "baseline-0", count)
    baseline_0 = run_baseline(ctx, setup, "baseline (32 threads), CI latency 0", count)
    print(f"  baseline, latency 0: {baseline_0.rate:.0f} jobs/s", flush=True)

    setup = fresh_backlog(ctx, "baseline-native", count)
    native = run_baseline(
        ctx, setup, "baseline, native client logger, CI latency 0", count, logger="native"
    )
    print(f"  baseline with the native logger, latency 0: {native.rate:.0f} jobs/s", flush=True)

    setup = fresh_backlog(ctx, "baseline-50", count)
    emu.set_faults(latency_ms=latency_ms)
    try:
        baseline_50 = run_baseline(ctx, setup, f"baseline, CI latency {latency_ms:.0f} ms", count)
    finally:
        emu.set_faults(latency_ms=0)
    print(f"  baseline, latency {latency_ms:.0f} ms: {baseline_50.rate:.0f} jobs/s", flush=True)

    quota_jobs = min(10_000, count)
    emu.set_faults(throttle_rps=QUOTA_RPS)
    try:
        setup = fresh_backlog(ctx, "quota", quota_jobs)
        _append(setup, "ci", f"max_requests_per_s = {QUOTA_RPS}")
        quota = run_asrd(setup, f"asrd, CI quota {QUOTA_RPS} requests/s", quota_jobs)
        print(f"  asrd under a {QUOTA_RPS}/s quota: {quota.rate:.0f} jobs/s", flush=True)
        setup = fresh_backlog(ctx, "quota-baseline", quota_jobs)
        quota_baseline = run_baseline(
            ctx, setup, f"baseline, CI quota {QUOTA_RPS}/s (30 s)", quota_jobs, seconds=30
        )
        print(f"  baseline under the quota: {quota_baseline.rate:.0f} jobs/s", flush=True)
    finally:
        emu.set_faults(throttle_rps=0)

    workers: dict[str, Drain] = {}
    from tests import postgres as pg  # the same PostgreSQL server set-up as the tests

    server = pg.start()
    try:
        for ledger in ("sqlite", "postgresql"):
            for n in (1, 2):
                key = f"{ledger}-{n}"
                setup = fresh_backlog(ctx, f"workers-{key}", count)
                _append(setup, "pulsar", f"workers = {n}")
                if ledger == "postgresql":
                    (setup.dir / "pg_password").write_text(pg.PASSWORD)  # type: ignore[attr-defined]
                    url = server.url(server.create_database())
                    text = _config_path(setup).read_text()
                    start = text.index("[ledger]\n")
                    end = text.index("\n[", start + 1)
                    pw = setup.dir / "pg_password"  # type: ignore[attr-defined]
                    text = (
                        text[:start]
                        + f'[ledger]\nurl = "{url}"\npassword_file = "{pw}"\n'
                        + text[end:]
                    )
                    _config_path(setup).write_text(text)
                workers[key] = run_asrd(setup, f"asrd, workers = {n}, {ledger} ledger", count)
                print(f"  workers = {n}, {ledger}: {workers[key].rate:.0f} jobs/s", flush=True)
    finally:
        server.stop()
    return ScaleResults(baseline_0, native, baseline_50, quota, quota_baseline, workers)
