"""``make bench``: start what is needed, run every scenario, write benchmarks/results/."""

from __future__ import annotations

import argparse
import contextlib
import shutil
import signal
import sys
import time
from pathlib import Path

from benchmarks import load, report, scale, scenarios, spread
from benchmarks.harness import ROOT, Broker, run_id, start_emulator

RESULTS = ROOT / "benchmarks" / "results"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--jobs", type=int, default=20_000, help="backlog size (default 20000)")
    p.add_argument("--deep", type=int, default=100_000, help="messages for the RSS run")
    p.add_argument("--deep-seconds", type=float, default=30.0, help="consume time, RSS run")
    p.add_argument("--latency-ms", type=float, default=50.0, help="injected CI latency")
    p.add_argument("--concurrency", type=int, default=64, help="workers with CI latency")
    p.add_argument("--steady-seconds", type=float, default=20.0)
    p.add_argument("--idle-seconds", type=float, default=20.0)
    p.add_argument("--out", type=Path, default=RESULTS, help="where the summaries go")
    p.add_argument("--keep", action="store_true", help="keep var/bench/<run> afterwards")
    p.add_argument(
        "--no-scale", action="store_true", help="skip the baseline, CI quota and workers runs"
    )
    return p


def _step(text: str, since: float) -> None:
    print(f"[{time.monotonic() - since:6.1f}s] {text}", flush=True)


def run(args: argparse.Namespace) -> int:
    t0 = time.monotonic()
    rid = run_id()
    host = report.machine()  # before the run: the commit that is measured
    base = ROOT / "var" / "bench" / rid
    broker = Broker()
    with contextlib.ExitStack() as cleanup:
        _step(f"run {rid}: broker", t0)
        broker.ensure()
        cleanup.callback(broker.release)
        if not args.keep:
            cleanup.callback(shutil.rmtree, base, True)
        emulator = start_emulator(base / "emulator")
        cleanup.callback(emulator.stop)
        ctx = scenarios.Context(base, rid, emulator)
        cleanup.callback(load.delete_topics, scenarios.topic_prefix(rid))

        _step(f"preloading {args.jobs:,} finished jobs and their callbacks", t0)
        setup, raw_a, published = scenarios.preload(ctx, args.jobs)
        count = len(ctx.bodies)
        _step(f"raw consume-and-ack baseline: {raw_a.rate:.0f} msg/s; the early spread run", t0)
        early = spread.drain(ctx, "spread-early", count)
        _step(f"early run: {early.drain.rate:.0f} jobs/s; backlog run", t0)
        backlog = scenarios.backlog_run(ctx, setup, "backlog", published, 0.0, 32)
        _step(f"backlog: {backlog.rate:.0f} jobs/s; republishing for the latency run", t0)
        setup_b, raw_b, published_b = scenarios.republish(ctx, "latency", args.concurrency)
        latency = scenarios.backlog_run(
            ctx, setup_b, "backlog-latency", published_b, args.latency_ms, args.concurrency
        )
        rate = max(1.0, latency.rate / 2)
        _step(f"latency backlog: {latency.rate:.0f} jobs/s; idle, then steady {rate:.0f}/s", t0)
        steady = scenarios.steady(
            ctx, rate, args.steady_seconds, args.latency_ms, args.concurrency, args.idle_seconds
        )
        _step(f"steady p99 {steady.run.latency_ms_at(99):.0f} ms; deep topic {args.deep:,}", t0)
        deep = scenarios.deep_topic(ctx, args.deep, args.deep_seconds)
        _step("the baseline, the CI quota, workers", t0)
        scaled = None if args.no_scale else scale.run_all(ctx, args.jobs, args.latency_ms)
        _step("two identical runs back to back (the spread)", t0)
        late_a = spread.drain(ctx, "spread-late-a", count)
        late_b = spread.drain(ctx, "spread-late-b", count)
        results = report.Results(
            host,
            args.jobs,
            raw_a,
            raw_b,
            backlog,
            latency,
            steady,
            deep,
            time.monotonic() - t0,
            scaled,
            spread.Spread(early, late_a, late_b),
        )
        targets = report.write(results, args.out)
    _step(f"done; summary in {args.out}/summary.md", t0)
    for t in targets:
        print(f"  {t.verdict}  {t.key}: {t.measured} (ratio {t.ratio:.2f})")
    return 0


def main() -> int:
    # SIGTERM unwinds like Ctrl-C, so the emulator and daemons are stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return run(_parser().parse_args())
