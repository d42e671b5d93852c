"""Targets as ratios with PASS/MISS, and the JSON, Markdown and PNG summaries of one run."""

from __future__ import annotations

import json
import math
import os
import platform
import subprocess
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from asrd.config import CiSettings
from benchmarks import metrics
from benchmarks.harness import ROOT
from benchmarks.scale import QUOTA_RPS, ScaleResults
from benchmarks.scenarios import Baseline, DaemonRun, DeepTopicRun, SteadyRun
from benchmarks.spread import Spread

RSS_LIMIT_MB = 200.0
GROWTH_LIMIT = 0.10
IDLE_LIMIT = 0.02
VS_BASELINE = 3.0  # asrd's jobs/s over the baseline's
QUOTA_SHARE = 0.9  # of QUOTA_RPS x get_batch_size jobs/s
CPU_MS_PER_JOB = 0.7
WORKERS_GAIN = 1.6  # workers = 2 over workers = 1
WORKER_RSS_MB = 200.0  # peak RSS of any one process with workers = 2
GET_BATCH_SIZE = CiSettings.model_fields["get_batch_size"].default  # the runs use the defaults
LANES = CiSettings.model_fields["max_connections"].default  # look-ups in flight


@dataclass(frozen=True)
class Target:
    key: str
    requirement: str
    measured: str
    ratio: float  # measured / bound
    bound: float  # the ratio must be >= bound (at_least) or < bound
    at_least: bool
    note: str = ""

    @property
    def passed(self) -> bool:
        if math.isnan(self.ratio):
            return False
        return self.ratio >= self.bound if self.at_least else self.ratio < self.bound

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"

    def shortfall(self) -> str:
        """How far from the bound, in words (empty when passed)."""
        if self.passed or math.isnan(self.ratio):
            return "" if self.passed else "not measured"
        if self.at_least:
            return f"short by {(1 - self.ratio / self.bound) * 100:.0f}% of the target"
        return f"over by {(self.ratio / self.bound - 1) * 100:.0f}%"


@dataclass
class Results:
    """Everything one ``make bench`` measured."""

    machine: dict[str, Any]
    jobs: int
    raw_backlog: Baseline
    raw_latency: Baseline
    backlog: DaemonRun
    latency: DaemonRun
    steady: SteadyRun
    deep: DeepTopicRun
    wall_s: float
    scale: ScaleResults | None = None
    spread: Spread | None = None


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "describe", "--always", "--dirty"], capture_output=True, text=True
    ).stdout.strip() or os.environ.get("BENCH_COMMIT", "")  # a run from an exported tree
    mem = Path("/proc/meminfo").read_text().splitlines()[0].split()[1]
    return {
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(int(mem) / 1024 / 1024, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
        "commit": commit,
    }


def _cores_note(run: DaemonRun, cores: int) -> str:
    """Where the CPU went while the backlog drained, and what that allows on this machine."""
    busy = run.cores("machine")
    parts = [
        f"asrd {run.cores():.2f} cores ({run.cpu_per_1000:.2f} CPU-s per 1,000 jobs)",
        f"emulator {run.cores('emulator'):.2f}",
        f"broker {run.cores('broker'):.2f}",
        f"whole machine {busy:.2f} of {cores}",
    ]
    note = "CPU while draining: " + ", ".join(parts)
    if run.cores() >= 0.85:
        note += (
            "; asrd is one Python process and its workers share one interpreter lock, so "
            f"about one core caps it at {1000 / run.cpu_per_1000:.0f} jobs/s at this cost "
            "per job, whatever the concurrency"
        )
    elif busy >= 0.8 * cores:
        note += (
            f"; the machine is CPU-bound, so at this cost per job {cores} cores allow about "
            f"{run.rate * cores / busy:.0f} jobs/s"
        )
    if run.stalled_s:
        note += (
            f"; {run.stalled_s} s with no delivery at all (the shared broker restarted? see "
            "the reconnects in daemon.log)"
        )
    return note + "; profile: benchmarks/PROFILE.md"


def _steady_note(run: DaemonRun, cores: int, bound_ms: float) -> str:
    """Whether the slow deliveries were spread out or bunched in a few seconds."""
    bins = metrics.per_second(run.delivered, run.latency, run.samples)
    slow = [b for b in bins if b.p99_ms > bound_ms]
    return (
        f"{len(run.delivered):,} of {run.expected:,} delivered; {len(slow)} of {len(bins)} "
        f"seconds had a p99 over {bound_ms:.0f} ms (worst {max(b.p99_ms for b in bins):.0f} "
        f"ms); CPU: asrd {run.cores():.2f} cores, whole machine {run.cores('machine'):.2f} "
        f"of {cores} (see steady.png; spikes bunched in a few seconds point at the shared "
        "machine or broker, spread-out ones at the daemon)"
    )


def targets(r: Results) -> list[Target]:
    a, b, s = r.backlog, r.latency, r.steady
    notes_scale: dict[str, str] = {}
    bound_ms = 3 * s.run.latency_ms + 50
    p99 = s.run.latency_ms_at(99)
    growth = a.rss_growth
    out = [
        Target(
            "steady_p99",
            f"steady {s.rate:.0f}/s (half of the measured maximum), latency "
            f"{s.run.latency_ms:.0f} ms: p99 < {bound_ms:.0f} ms",
            f"p50 {s.run.latency_ms_at(50):.0f} / p95 {s.run.latency_ms_at(95):.0f} / "
            f"p99 {p99:.0f} ms",
            p99 / bound_ms,
            1.0,
            False,
        ),
        Target(
            "deep_topic_peak_rss",
            f"peak RSS < {RSS_LIMIT_MB:.0f} MB with {r.deep.messages:,} messages waiting",
            f"{r.deep.run.peak_rss_mb:.0f} MB ({r.deep.consumed:,} consumed in "
            f"{r.deep.run.samples[-1].t - r.deep.run.started:.0f} s)",
            r.deep.run.peak_rss_mb / RSS_LIMIT_MB,
            1.0,
            False,
        ),
        Target(
            "rss_growth",
            f"RSS growth < {GROWTH_LIMIT:.0%} between first and last quarter of the "
            f"{a.expected:,}-job run",
            f"{growth:+.1%}",
            growth / GROWTH_LIMIT,
            1.0,
            False,
        ),
        Target(
            "idle_cpu",
            f"idle daemon < {IDLE_LIMIT:.0%} of one core (empty topic, {s.idle_seconds:.0f} s)",
            f"{s.idle_share:.2%} of one core",
            s.idle_share / IDLE_LIMIT,
            1.0,
            False,
        ),
    ]
    with_workers = ""
    if r.scale is not None:
        out = _scale_targets(r, r.scale) + out
        cores = r.machine["cores"]
        for ledger in ("sqlite", "postgresql"):
            one, two = r.scale.workers[f"{ledger}-1"], r.scale.workers[f"{ledger}-2"]
            notes_scale[f"workers_{ledger}"] = (
                f"{two.cpu_ms_per_job:.2f} CPU-ms per job with two workers "
                f"({one.cpu_ms_per_job:.2f} with one): at {two.rate:.0f} jobs/s they use "
                f"{two.rate * two.cpu_ms_per_job / 1000:.2f} of the {cores} cores the broker, "
                "the emulator, the ledger's server and the load share"
            )
        two = r.scale.workers["sqlite-2"]
        with_workers = (
            f"; with `workers = 2` (a process per core) asrd drains {two.rate:.0f} jobs/s, "
            f"{two.rate / r.scale.baseline_0.rate:.2f}x the script"
        )
        notes_scale["cpu_vs_baseline"] = (
            "the baseline does one describe, one file write and one ack per job and "
            "nothing else; asrd adds the ledger (attempts, deliveries, claims), routing and "
            "normalisation"
        )
    notes = {
        "vs_baseline_latency_0": _cores_note(a, r.machine["cores"]) + with_workers,
        "vs_baseline_latency_50": _cores_note(b, r.machine["cores"]),
        "cpu_per_job": _cores_note(a, r.machine["cores"]),
        "steady_p99": _steady_note(s.run, r.machine["cores"], bound_ms),
        **notes_scale,
    }
    return [t if t.passed else Target(**{**asdict(t), "note": notes.get(t.key, "")}) for t in out]


def _scale_targets(r: Results, sc: ScaleResults) -> list[Target]:
    a, b = r.backlog, r.latency
    b0, b50, q, w = sc.baseline_0, sc.baseline_50, sc.quota, sc.workers
    quota_rate = QUOTA_RPS * GET_BATCH_SIZE
    cpu_ms = a.cpu_per_1000  # CPU-s per 1,000 jobs = CPU-ms per job
    out = [
        Target(
            "vs_baseline_latency_0",
            f"backlog, CI latency 0: asrd >= {VS_BASELINE:g}x the baseline (32 threads)",
            f"{a.rate:.0f} vs {b0.rate:.0f} jobs/s",
            a.rate / b0.rate if b0.rate else math.nan,
            VS_BASELINE,
            True,
        ),
        Target(
            "vs_baseline_latency_50",
            f"backlog, CI latency {b.latency_ms:.0f} ms: asrd (concurrency {b.concurrency}) >= "
            f"{VS_BASELINE:g}x the baseline",
            f"{b.rate:.0f} vs {b50.rate:.0f} jobs/s",
            b.rate / b50.rate if b50.rate else math.nan,
            VS_BASELINE,
            True,
        ),
        Target(
            "cpu_vs_baseline",
            "CPU per job, CI latency 0: asrd < the baseline",
            f"{cpu_ms:.2f} vs {b0.cpu_ms_per_job:.2f} CPU-ms per job",
            cpu_ms / b0.cpu_ms_per_job,
            1.0,
            False,
        ),
        Target(
            "quota",
            f"CI quota {QUOTA_RPS} requests/s: {q.jobs:,} jobs at >= {QUOTA_SHARE:.0%} of "
            f"{QUOTA_RPS} x get_batch_size {GET_BATCH_SIZE} = {quota_rate} jobs/s, none "
            "dead-lettered",
            f"{q.rate:.0f} jobs/s, {q.delivered:,} delivered, {q.dead} dead-lettered "
            f"(the baseline: {sc.quota_baseline.rate:.0f} jobs/s)",
            q.rate / quota_rate if q.dead == 0 and q.delivered >= q.jobs else 0.0,
            QUOTA_SHARE,
            True,
        ),
        Target(
            "cpu_per_job",
            f"CPU per job <= {CPU_MS_PER_JOB} ms, CI latency 0, one worker",
            f"{cpu_ms:.2f} CPU-ms per job",
            cpu_ms / CPU_MS_PER_JOB,
            1.0,
            False,
        ),
    ]
    two = w["sqlite-2"]
    largest, total = two.notes["peak_rss_mb_largest_process"], two.notes["peak_rss_mb_total"]
    out.append(
        Target(
            "peak_rss_workers",
            f"workers = 2: peak RSS of each process < {WORKER_RSS_MB:.0f} MB (total reported)",
            f"largest {largest:.0f} MB, total {total:.0f} MB over {two.notes['processes']} "
            "processes (supervisor and workers)",
            largest / WORKER_RSS_MB,
            1.0,
            False,
        )
    )
    for ledger in ("sqlite", "postgresql"):
        one, two = w[f"{ledger}-1"], w[f"{ledger}-2"]
        out.append(
            Target(
                f"workers_{ledger}",
                f"workers = 2 on one {ledger} ledger >= {WORKERS_GAIN:g}x workers = 1",
                f"{two.rate:.0f} vs {one.rate:.0f} jobs/s ({two.cpu_ms_per_job:.2f} vs "
                f"{one.cpu_ms_per_job:.2f} CPU-ms per job)",
                two.rate / one.rate if one.rate else math.nan,
                WORKERS_GAIN,
                True,
            )
        )
    return out


def _run_dict(run: DaemonRun) -> dict[str, Any]:
    return {
        "name": run.name,
        "expected": run.expected,
        "delivered": len(run.delivered),
        "complete": run.complete,
        "concurrency": run.concurrency,
        "emulator_latency_ms": run.latency_ms,
        "jobs_per_s": round(run.rate, 1),
        "drain_s": round(run.last - run.first, 2) if run.delivered else None,
        "latency_ms": {f"p{q}": round(run.latency_ms_at(q), 1) for q in (50, 95, 99)},
        "peak_rss_mb": round(run.peak_rss_mb, 1),
        "cpu_s_per_1000_jobs": round(run.cpu_per_1000, 2),
        "rss_growth": round(run.rss_growth, 4),
        "stalled_s": run.stalled_s,
        "cores": {who: round(run.cores(who), 2) for who in ("asrd", *run.peers)},
    }


def to_json(r: Results, ts: list[Target]) -> dict[str, Any]:
    return {
        "machine": r.machine,
        "wall_s": round(r.wall_s, 1),
        "baselines": {
            "raw_consume_ack_backlog_msg_per_s": round(r.raw_backlog.rate, 1),
            "raw_consume_ack_latency_topic_msg_per_s": round(r.raw_latency.rate, 1),
            "ideal_fetch_rate_per_s": r.latency.concurrency / (r.latency.latency_ms / 1000),
            # Reported without a target: asrd's drain over the raw consume-and-ack.
            "asrd_over_raw_consume_ack_latency_0": round(r.backlog.rate / r.raw_backlog.rate, 3),
            "asrd_over_raw_consume_ack_latency_50": round(r.latency.rate / r.raw_latency.rate, 3),
        },
        "scale": r.scale.to_dict() if r.scale is not None else None,
        "spread": r.spread.to_dict() if r.spread is not None else None,
        "runs": {
            "backlog": _run_dict(r.backlog),
            "backlog_latency": _run_dict(r.latency),
            "steady": {
                **_run_dict(r.steady.run),
                "offered_per_s": round(r.steady.rate, 1),
                "idle_cpu_share": round(r.steady.idle_share, 5),
            },
            "deep_topic": {
                **_run_dict(r.deep.run),
                "messages": r.deep.messages,
                "consumed": r.deep.consumed,
                "publish_s": round(r.deep.publish_s, 1),
                "profile_gil_share": {f: round(v, 3) for f, v in r.deep.profile},
            },
        },
        "targets": [{**asdict(t), "ratio": round(t.ratio, 3), "verdict": t.verdict} for t in ts],
    }


def to_markdown(r: Results, ts: list[Target]) -> str:
    m = r.machine
    lines = [
        "# asrd benchmark summary",
        "",
        f"Machine: {m['cores']} cores, {m['cpu_model']}, {m['memory_gb']} GB; Python "
        f"{m['python']}; commit {m['commit']}; whole run {r.wall_s:.0f} s. Broker, emulator, "
        "daemon and load generator share the machine; every figure is a ratio against a "
        "baseline measured in the same run.",
        "",
        "## Targets",
        "",
        "| | target | measured | ratio | |",
        "|---|---|---|---|---|",
    ]
    for t in ts:
        cmp = ">=" if t.at_least else "<"
        lines.append(
            f"| {t.verdict} | {t.requirement} | {t.measured} | {t.ratio:.2f} "
            f"({cmp} {t.bound:g}) | {t.shortfall()} |"
        )
    misses = [t for t in ts if not t.passed]
    if misses:
        lines += ["", "Why the misses:", ""]
        lines += [f"- {t.key}: {t.shortfall()}; {t.note}" for t in misses]
    if r.deep.profile:
        lines += [
            "",
            "Where asrd's Python time goes (py-spy `--gil` during the deep-topic run, latency "
            "off; inclusive share of samples):",
            "",
            "| share | function |",
            "|---|---|",
        ]
        lines += [f"| {share:.0%} | `{frame}` |" for frame, share in r.deep.profile]
    if r.spread is not None:
        lines += ["", *r.spread.markdown()]
    lines += [
        "",
        "## Runs",
        "",
        "| run | jobs | jobs/s | p50 ms | p95 ms | p99 ms | peak RSS MB | CPU s / 1k jobs |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for run in (r.backlog, r.latency, r.steady.run, r.deep.run):
        lines.append(
            f"| {run.name} (concurrency {run.concurrency}, CI latency {run.latency_ms:.0f} ms) "
            f"| {len(run.delivered):,} | {run.rate:.0f} | {run.latency_ms_at(50):.0f} | "
            f"{run.latency_ms_at(95):.0f} | {run.latency_ms_at(99):.0f} | "
            f"{run.peak_rss_mb:.0f} | {run.cpu_per_1000:.2f} |"
        )
    if r.scale is not None:
        lines += [
            "",
            "The baseline, CI quota and workers runs (same backlog, same broker and emulator):",
            "",
            "| run | jobs | jobs/s | CPU-ms per job | peak RSS MB, largest / all processes |",
            "|---|---|---|---|---|",
        ]
        sc = r.scale
        runs = (sc.baseline_0, sc.baseline_native, sc.baseline_50, sc.quota, sc.quota_baseline)
        for d in (*runs, *sc.workers.values()):
            rss = d.notes.get("peak_rss_mb_total")
            lines.append(
                f"| {d.name} | {d.delivered:,} | {d.rate:.0f} | {d.cpu_ms_per_job:.2f} | "
                + (f"{d.notes['peak_rss_mb_largest_process']:.0f} / {rss:.0f} |" if rss else "- |")
            )
        lines += [
            "",
            f"asrd over the baseline with the client's native logger (no target; the "
            f"baseline as first measured quiets the client through a Python logger, which "
            f"costs it a crossing into Python per DEBUG line): "
            f"{r.backlog.rate / sc.baseline_native.rate:.2f} "
            f"({r.backlog.rate:.0f} vs {sc.baseline_native.rate:.0f} jobs/s; "
            f"{sc.baseline_native.cpu_ms_per_job:.2f} CPU-ms per job).",
        ]
    lines += [
        "",
        f"asrd over raw consume-and-ack (no target): {r.backlog.rate / r.raw_backlog.rate:.2f} "
        f"(latency 0), {r.latency.rate / r.raw_latency.rate:.2f} (latency "
        f"{r.latency.latency_ms:.0f} ms).",
        "",
        f"Baselines: raw consume-and-ack {r.raw_backlog.rate:.0f} msg/s (backlog topic), "
        f"{r.raw_latency.rate:.0f} msg/s (latency topic); ideal CI fetch rate at "
        f"{r.latency.latency_ms:.0f} ms: {LANES} look-ups in flight x {GET_BATCH_SIZE} ids / "
        f"{r.latency.latency_ms / 1000:g} s = "
        f"{LANES * GET_BATCH_SIZE / (r.latency.latency_ms / 1000):.0f} jobs/s.",
        "",
        "Backlog latency is publish-to-file time, so it includes the wait in the backlog. "
        "The deep-topic run repeats job ids, so its files count distinct jobs; see "
        "`consumed` in summary.json.",
        "",
        "![throughput, latency and RSS over time, backlog runs](backlog.png)",
        "",
        "![the same for the steady run](steady.png)",
        "",
    ]
    return "\n".join(lines)


def plot(runs: list[DaemonRun], path: Path, title: str) -> None:
    """Throughput, latency and RSS per second of daemon runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(3, 1, figsize=(9, 8), sharex=True)
    for run in runs:
        bins = metrics.per_second(run.delivered, run.latency, run.samples)
        label = f"{run.name} (CI latency {run.latency_ms:.0f} ms)"
        xs = [b.t for b in bins]
        axes[0].plot(xs, [b.jobs for b in bins], label=label)
        axes[1].plot(xs, [b.p99_ms for b in bins], label=f"{run.name} p99")
        axes[1].plot(xs, [b.p50_ms for b in bins], "--", label=f"{run.name} p50")
        axes[2].plot(xs, [b.rss_mb for b in bins], label=run.name)
    axes[0].set_ylabel("jobs delivered / s")
    axes[1].set_ylabel("publish → file (ms)")
    axes[1].set_yscale("log")
    axes[2].set_ylabel("daemon RSS (MB)")
    axes[2].set_xlabel("seconds since the first delivery")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _finite(value: Any) -> Any:
    """NaN (a figure that could not be measured) as JSON null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


def write(r: Results, out: Path) -> list[Target]:
    out.mkdir(parents=True, exist_ok=True)
    ts = targets(r)
    doc = _finite(to_json(r, ts))
    (out / "summary.json").write_text(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    (out / "summary.md").write_text(to_markdown(r, ts))
    plot([r.backlog, r.latency], out / "backlog.png", "asrd draining a backlog")
    plot([r.steady.run], out / "steady.png", f"asrd at a steady {r.steady.rate:.0f} callbacks/s")
    return ts
