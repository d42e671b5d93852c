"""The spread between identical runs of one ``make bench``, and where it comes from.

The same drain (``workers = 1``, SQLite ledger, CI latency 0, a fresh topic holding the same
preloaded callbacks) runs three times: right after the preload, before any other daemon run
(``early``), and twice back to back at the end of the bench (``late_a``, ``late_b``). The two
late runs give the spread between identical runs; early against late shows what the position
in the bench (a cold broker, its caches and JIT) costs. Each run also records the broker's and
the whole machine's CPU, so a slower run can be told from a busier machine.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from benchmarks.harness import broker_pid, read_proc, read_system
from benchmarks.scale import Drain, fresh_backlog, run_asrd
from benchmarks.scenarios import Context


@dataclass
class SpreadRun:
    drain: Drain
    broker_cpu_s: float  # the broker's CPU while asrd drained
    machine_cpu_s: float  # every process's CPU while asrd drained (all cores)
    wall_s: float

    def to_dict(self) -> dict[str, Any]:
        per_k = 1000 / self.drain.delivered if self.drain.delivered else 0.0
        return {
            **self.drain.to_dict(),
            "broker_cpu_s_per_1000": round(self.broker_cpu_s * per_k, 3),
            "machine_cores_busy": round(self.machine_cpu_s / self.wall_s, 2) if self.wall_s else 0,
        }


def drain(ctx: Context, name: str, count: int) -> SpreadRun:
    """One measured drain of ``count`` callbacks on a fresh topic."""
    setup = fresh_backlog(ctx, name, count)
    pid = broker_pid()
    broker0 = read_proc(pid) if pid else None
    machine0 = read_system()
    result = run_asrd(setup, name, count)
    machine1 = read_system()
    broker1 = read_proc(pid) if pid else None
    broker_s = broker1.cpu_s - broker0.cpu_s if broker0 and broker1 else 0.0
    return SpreadRun(result, broker_s, machine1.cpu_s - machine0.cpu_s, machine1.t - machine0.t)


def _gap(a: float, b: float) -> float:
    """How far apart two figures are, as a share of the larger."""
    return abs(a - b) / max(a, b) if max(a, b) > 0 else 0.0


@dataclass
class Spread:
    early: SpreadRun
    late_a: SpreadRun
    late_b: SpreadRun

    @property
    def identical_rate_gap(self) -> float:
        return _gap(self.late_a.drain.rate, self.late_b.drain.rate)

    @property
    def identical_cpu_gap(self) -> float:
        return _gap(self.late_a.drain.cpu_ms_per_job, self.late_b.drain.cpu_ms_per_job)

    @property
    def early_rate_gap(self) -> float:
        late = (self.late_a.drain.rate + self.late_b.drain.rate) / 2
        return _gap(self.early.drain.rate, late)

    def to_dict(self) -> dict[str, Any]:
        return {
            "early": self.early.to_dict(),
            "late_a": self.late_a.to_dict(),
            "late_b": self.late_b.to_dict(),
            "identical_runs_rate_gap": round(self.identical_rate_gap, 3),
            "identical_runs_cpu_gap": round(self.identical_cpu_gap, 3),
            "early_vs_late_rate_gap": round(self.early_rate_gap, 3),
        }

    def markdown(self) -> list[str]:
        lines = [
            "## Spread between identical runs",
            "",
            "The same drain (workers = 1, SQLite, CI latency 0, a fresh topic of the same "
            "callbacks) first thing in the bench and twice back to back at its end.",
            "",
            "| run | jobs/s | asrd CPU-ms/job | broker CPU-s/1k jobs | machine cores busy |",
            "|---|---|---|---|---|",
        ]
        for name, run in (("early", self.early), ("late a", self.late_a), ("late b", self.late_b)):
            d = run.to_dict()
            lines.append(
                f"| {name} | {d['jobs_per_s']:,.0f} | {d['cpu_ms_per_job']:.2f} | "
                f"{d['broker_cpu_s_per_1000']:.2f} | {d['machine_cores_busy']:.2f} |"
            )
        lines += [
            "",
            f"Two identical runs differ by {self.identical_rate_gap:.0%} in jobs/s and "
            f"{self.identical_cpu_gap:.0%} in CPU per job; the first run of the bench differs "
            f"from them by {self.early_rate_gap:.0%} in jobs/s.",
        ]
        return lines
