"""Figures from raw observations: percentiles, rates, memory growth, per-second series."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from benchmarks.harness import ProcSample


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile of ``values`` (``q`` in 0..100); NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def latencies(published: dict[str, float], delivered: dict[str, float]) -> dict[str, float]:
    """``job_id -> seconds`` from callback publish to result file, for jobs seen on both sides."""
    return {j: delivered[j] - published[j] for j in delivered if j in published}


def peak_rss_mb(samples: Sequence[ProcSample]) -> float:
    return max((s.hwm_kb for s in samples), default=0) / 1024


def cpu_between(samples: Sequence[ProcSample], start: float, end: float) -> float:
    """CPU seconds the process used between two wall times (nearest samples)."""
    inside = [s for s in samples if start <= s.t <= end]
    if len(inside) < 2:
        return math.nan
    return inside[-1].cpu_s - inside[0].cpu_s


def rss_growth(samples: Sequence[ProcSample], start: float, end: float) -> float:
    """Mean RSS of the last quarter of [start, end] over that of the first quarter, minus 1."""
    quarter = (end - start) / 4
    first = [s.rss_kb for s in samples if start <= s.t <= start + quarter]
    last = [s.rss_kb for s in samples if end - quarter <= s.t <= end]
    if not first or not last:
        return math.nan
    return (sum(last) / len(last)) / (sum(first) / len(first)) - 1


@dataclass(frozen=True)
class SecondBin:
    t: float  # seconds since the first delivery
    jobs: int
    p50_ms: float
    p99_ms: float
    rss_mb: float


def per_second(
    delivered: dict[str, float], lat: dict[str, float], samples: Sequence[ProcSample]
) -> list[SecondBin]:
    """Deliveries, latency and RSS per one-second bin from the first delivery on."""
    if not delivered:
        return []
    t0 = min(delivered.values())
    buckets: dict[int, list[float]] = {}
    for job_id, t in delivered.items():
        buckets.setdefault(int(t - t0), []).append(lat.get(job_id, math.nan))
    out = []
    for second in range(max(buckets) + 1):
        values = [v for v in buckets.get(second, []) if not math.isnan(v)]
        rss = [s.rss_kb for s in samples if t0 + second <= s.t < t0 + second + 1]
        out.append(
            SecondBin(
                second,
                len(buckets.get(second, [])),
                percentile(values, 50) * 1000,
                percentile(values, 99) * 1000,
                (max(rss) / 1024) if rss else math.nan,
            )
        )
    return out
