"""The benchmark scenarios: backlog drains, steady rate with idle phase, and a deep topic."""

from __future__ import annotations

import math
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests import support

from benchmarks import load, metrics
from benchmarks.harness import (
    DaemonSetup,
    Emulator,
    ProcSample,
    Sampler,
    broker_pid,
    count_files,
    daemon_counters,
    delivery_times,
    start_daemon,
    stop_process,
    write_config,
)
from benchmarks.profile import Profiler, top_functions


def topic_prefix(rid: str) -> str:
    """Every topic of run ``rid`` starts with this."""
    return f"asrd-bench-{rid}-"


@dataclass
class Context:
    """What every scenario shares: the run's directory and id, the emulator, the callbacks."""

    base: Path
    rid: str
    emulator: Emulator
    bodies: list[tuple[str, bytes]] = field(default_factory=list)  # (job id, callback body)

    def setup(self, name: str, concurrency: int, max_in_flight: int) -> DaemonSetup:
        """A daemon directory and config for scenario ``name``, on a topic of its own."""
        mq_name = topic_prefix(self.rid) + name
        return write_config(
            self.base / name, self.emulator.endpoint, mq_name, concurrency, max_in_flight
        )


@dataclass
class Baseline:
    """The raw consume-and-ack ceiling measured on one topic."""

    messages: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds > 0 else 0.0


@dataclass
class DaemonRun:
    """One daemon process over one topic: deliveries, latencies, /proc samples."""

    name: str
    concurrency: int
    latency_ms: float
    expected: int
    started: float
    delivered: dict[str, float]
    latency: dict[str, float]
    samples: list[ProcSample]
    peers: dict[str, list[ProcSample]]  # emulator, broker, machine (all cores)
    complete: bool

    @property
    def first(self) -> float:
        return min(self.delivered.values(), default=math.nan)

    @property
    def last(self) -> float:
        return max(self.delivered.values(), default=math.nan)

    @property
    def rate(self) -> float:
        """Jobs per second from the first result file to the last."""
        span = self.last - self.first
        return (len(self.delivered) - 1) / span if span > 0 else 0.0

    def latency_ms_at(self, q: float) -> float:
        return metrics.percentile(list(self.latency.values()), q) * 1000

    @property
    def peak_rss_mb(self) -> float:
        return metrics.peak_rss_mb(self.samples)

    @property
    def cpu_per_1000(self) -> float:
        used = metrics.cpu_between(self.samples, self.started, self.last + 1)
        return used / len(self.delivered) * 1000 if self.delivered else math.nan

    @property
    def rss_growth(self) -> float:
        return metrics.rss_growth(self.samples, self.first, self.last)

    def cores(self, who: str = "asrd") -> float:
        """Mean cores ``who`` (asrd or a peer) used between the first and the last delivery."""
        samples = self.samples if who == "asrd" else self.peers.get(who, [])
        return metrics.cpu_between(samples, self.first, self.last) / (self.last - self.first)

    @property
    def stalled_s(self) -> int:
        """Whole seconds without any delivery between the first and the last one."""
        seconds = {int(t - self.first) for t in self.delivered.values()}
        return int(self.last - self.first) + 1 - len(seconds) if seconds else 0


def run_daemon(
    setup: DaemonSetup,
    name: str,
    ctx: Context,
    expected: int,
    published: dict[str, float],
    latency_ms: float,
    concurrency: int,
    stall_s: float = 30.0,
    limit_s: float = 240.0,
    profile_to: Path | None = None,
) -> DaemonRun:
    """Run ``asrd run`` until ``expected`` result files exist, progress stalls or time runs out;
    with ``profile_to``, py-spy samples it from the first delivery on."""
    started = time.time()
    proc = start_daemon(setup)
    daemon = Sampler(proc.pid).start()
    peers = _peer_samplers(ctx)
    profiler: Profiler | None = None
    complete = False
    try:
        seen, progress = 0, time.monotonic()
        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.5)
            now = count_files(setup.results)
            if now >= expected:
                complete = True
                break
            if now > seen:
                seen, progress = now, time.monotonic()
                if profile_to is not None and profiler is None:
                    profiler = Profiler(proc.pid, profile_to)
            elif time.monotonic() - progress > stall_s:
                break
        time.sleep(0.5)  # one more sample after the last delivery
        _check_alive(proc, setup)
    finally:
        samples = daemon.stop()
        if profiler is not None:
            profiler.stop()
        stop_process(proc)
        peer_samples = {name: sampler.stop() for name, sampler in peers.items()}
    delivered = delivery_times(setup.results)
    return DaemonRun(
        name,
        concurrency,
        latency_ms,
        expected,
        started,
        delivered,
        metrics.latencies(published, delivered),
        samples,
        peer_samples,
        complete,
    )


def _peer_samplers(ctx: Context) -> dict[str, Sampler]:
    """CPU samplers of the emulator, the broker and the whole machine, started."""
    peers = {"emulator": Sampler(ctx.emulator.proc.pid).start(), "machine": Sampler(0).start()}
    broker = broker_pid()
    if broker is not None:
        peers["broker"] = Sampler(broker).start()
    return peers


def _check_alive(proc: subprocess.Popen[bytes], setup: DaemonSetup) -> None:
    """Fail the benchmark when the daemon exited by itself (crash, bad config)."""
    if proc.poll() is not None:
        tail = setup.log.read_text(errors="replace").splitlines()[-5:]
        raise RuntimeError(
            f"asrd run exited with status {proc.returncode}; {setup.log}:\n" + "\n".join(tail)
        )


def preload(ctx: Context, jobs: int) -> tuple[DaemonSetup, Baseline, dict[str, float]]:
    """Create ``jobs`` finished jobs whose callbacks CI publishes while no daemon runs; then
    drain a second subscription as the raw baseline, keeping the bodies for later scenarios."""
    setup = ctx.setup("backlog", concurrency=32, max_in_flight=256)
    load.subscribe(setup.topic, setup.subscription)
    load.subscribe(setup.topic, "raw")
    started = time.monotonic()
    support.create_jobs(setup, jobs, threads=16)
    waiting = load.wait_backlog(setup.topic, "raw", jobs, timeout=120)
    print(f"  {jobs} jobs created, {waiting} callbacks waiting ({time.monotonic() - started:.0f}s)")
    raw = load.consume_all(setup.topic, "raw", waiting, keep_bodies=True)
    ctx.bodies = sorted(raw.bodies.items())
    return setup, Baseline(raw.count, raw.seconds), raw.published


def republish(
    ctx: Context, name: str, concurrency: int
) -> tuple[DaemonSetup, Baseline, dict[str, float]]:
    """The preloaded callbacks again on a fresh topic (one message each, as CI sends them),
    with the raw baseline measured on that topic."""
    setup = ctx.setup(name, concurrency=concurrency, max_in_flight=max(256, 4 * concurrency))
    load.subscribe(setup.topic, setup.subscription)
    load.subscribe(setup.topic, "raw")
    load.publish_bulk(setup.topic, ctx.bodies, len(ctx.bodies), batching=False)
    waiting = load.wait_backlog(setup.topic, "raw", len(ctx.bodies), timeout=60)
    raw = load.consume_all(setup.topic, "raw", waiting, keep_bodies=False)
    return setup, Baseline(raw.count, raw.seconds), raw.published


def backlog_run(
    ctx: Context,
    setup: DaemonSetup,
    name: str,
    published: dict[str, float],
    latency_ms: float,
    concurrency: int,
) -> DaemonRun:
    ctx.emulator.set_faults(latency_ms=latency_ms)
    try:
        return run_daemon(setup, name, ctx, len(published), published, latency_ms, concurrency)
    finally:
        ctx.emulator.set_faults(latency_ms=0)


@dataclass
class SteadyRun:
    rate: float  # offered callbacks per second
    idle_seconds: float
    idle_cpu_s: float
    run: DaemonRun

    @property
    def idle_share(self) -> float:
        """Share of one core the daemon used while the topic was empty."""
        return self.idle_cpu_s / self.idle_seconds if self.idle_seconds else math.nan


def steady(
    ctx: Context, rate: float, seconds: float, latency_ms: float, concurrency: int, idle_s: float
) -> SteadyRun:
    """Start the daemon on an empty topic (the idle measurement), then publish at ``rate``."""
    setup = ctx.setup("steady", concurrency=concurrency, max_in_flight=max(256, 4 * concurrency))
    load.subscribe(setup.topic, setup.subscription)
    load.subscribe(setup.topic, "tap")
    ctx.emulator.set_faults(latency_ms=latency_ms)
    proc = start_daemon(setup)
    sampler = Sampler(proc.pid, interval=0.5).start()
    peers = _peer_samplers(ctx)
    started = time.time()
    try:
        _wait_subscribed(proc, setup, timeout=30)
        time.sleep(2.0)  # let start-up work settle before measuring idle
        idle_from = time.time()
        time.sleep(idle_s)
        idle_to = time.time()
        bodies = ctx.bodies[: int(rate * seconds)]
        load.publish_paced(setup.topic, bodies, rate, seconds)
        expected = len(bodies)
        deadline = time.monotonic() + 60
        while count_files(setup.results) < expected and time.monotonic() < deadline:
            _check_alive(proc, setup)
            time.sleep(0.5)
        time.sleep(0.5)
    finally:
        samples = sampler.stop()
        stop_process(proc)
        peer_samples = {name: peer.stop() for name, peer in peers.items()}
        ctx.emulator.set_faults(latency_ms=0)
    tap = load.consume_all(setup.topic, "tap", expected, keep_bodies=False, idle_timeout=5)
    delivered = delivery_times(setup.results)
    run = DaemonRun(
        "steady",
        concurrency,
        latency_ms,
        expected,
        started,
        delivered,
        metrics.latencies(tap.published, delivered),
        samples,
        peer_samples,
        len(delivered) >= expected,
    )
    idle_cpu = metrics.cpu_between(samples, idle_from, idle_to)
    return SteadyRun(rate, idle_to - idle_from, idle_cpu, run)


def _wait_subscribed(proc: subprocess.Popen[bytes], setup: DaemonSetup, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(proc, setup)
        if setup.log.exists() and '"subscribed"' in setup.log.read_text(errors="replace"):
            return
        time.sleep(0.2)
    raise RuntimeError(f"daemon did not subscribe within {timeout:.0f}s; see {setup.log}")


@dataclass
class DeepTopicRun:
    messages: int
    publish_s: float
    consumed: int  # acknowledged by the daemon while it ran
    run: DaemonRun
    profile: list[tuple[str, float]]  # py-spy: (function, share of GIL samples), maybe empty


def deep_topic(ctx: Context, messages: int, seconds: float) -> DeepTopicRun:
    """``messages`` callbacks (the preloaded jobs, repeated) waiting before the daemon starts;
    the daemon consumes for ``seconds`` while its memory is sampled (and, when py-spy is
    installed, where its Python time goes: its throughput is no target, so sampling may
    cost it a little)."""
    setup = ctx.setup("deep", concurrency=32, max_in_flight=256)
    load.subscribe(setup.topic, setup.subscription)
    publish_s = load.publish_bulk(setup.topic, ctx.bodies, messages, batching=True)
    raw_profile = setup.dir / "py-spy.txt"
    run = run_daemon(
        setup, "deep", ctx, messages, {}, 0.0, 32, limit_s=seconds, profile_to=raw_profile
    )
    counters = daemon_counters(setup)
    consumed = sum(counters.get(f"messages.{o}", 0) for o in ("done", "ignored", "retry", "dead"))
    profile = top_functions(raw_profile) if raw_profile.exists() else []
    return DeepTopicRun(messages, publish_s, consumed, run, profile)
