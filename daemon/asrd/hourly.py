"""This process's intake and CI figures per minute over the last 24 hours, for the console's
overview: CI requests and those CI turned away for now (throttled or busy), callbacks moved, and
the intake's lag (how long the oldest notification of a poll had waited in the queue).

Kept in memory (a restart starts them again): they are counts of requests and polls, which the
ledger does not hold, and writing each to the ledger would cost more than the figures are worth.
Prometheus (``asrd_ci_requests_total``, ``asrd_intake_lag_seconds``) keeps their history.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .observers import MovedCallback, Observer

KEPT_S = 24 * 3600
# A CI answer that says "later" (throttled, busy): ``ErrorKind.TRANSIENT``'s value.
_LATER = "transient"


@dataclass
class _Minute:
    requests: int = 0
    later: int = 0  # answered "throttled" or "busy"
    moved: int = 0
    lag_s: float = 0.0  # the largest lag seen in the minute
    lag_seen: bool = False


@dataclass(frozen=True)
class Now:
    """The figures at a glance: rates over the last ``window_s``, the latest lag."""

    started_at: float
    ci_per_s: float
    ci_later_per_s: float
    moved_per_s: float
    lag_s: float | None  # None: the intake has not polled in this process


class HourlyFigures(Observer):
    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self.started_at = clock()
        self._minutes: dict[int, _Minute] = {}
        self._lag_s: float | None = None
        self._lock = threading.Lock()

    def _minute(self) -> _Minute:
        """The current minute's counts (the caller holds the lock); drops those past 24 h."""
        now = int(self._clock() // 60)
        minute = self._minutes.get(now)
        if minute is None:
            minute = self._minutes[now] = _Minute()
            oldest = now - KEPT_S // 60
            for key in [k for k in self._minutes if k <= oldest]:
                del self._minutes[key]
        return minute

    def ci_call(self, operation: str, status: str, seconds: float) -> None:
        with self._lock:
            minute = self._minute()
            minute.requests += 1
            minute.later += status == _LATER

    def callbacks_moved(self, topic: str, moved: Sequence[MovedCallback]) -> None:
        with self._lock:
            self._minute().moved += len(moved)

    def intake_lag(self, queue: str, seconds: float) -> None:
        with self._lock:
            minute = self._minute()
            minute.lag_s = max(minute.lag_s, seconds) if minute.lag_seen else seconds
            minute.lag_seen = True
            self._lag_s = seconds

    def per_hour(self, name: str, start: float, hours: int) -> list[int]:
        """``requests``, ``later``, ``moved`` (sums) or ``lag_s`` (the largest, in whole
        seconds) in each hour from ``start``."""
        first = int(start // 60)
        buckets = [0.0] * hours
        with self._lock:
            for key, minute in self._minutes.items():
                hour = (key - first) // 60
                if 0 <= hour < hours:
                    value = float(getattr(minute, name))
                    if name == "lag_s":
                        buckets[hour] = max(buckets[hour], value)
                    else:
                        buckets[hour] += value
        return [round(v) for v in buckets]

    def now(self, window_s: int = 300) -> Now:
        """Rates over the last ``window_s`` (or since the start, when shorter)."""
        current = int(self._clock() // 60)
        first = current - window_s // 60
        with self._lock:
            recent = [m for k, m in self._minutes.items() if first < k <= current]
            lag = self._lag_s
        span = max(1.0, min(float(window_s), self._clock() - self.started_at))
        return Now(
            self.started_at,
            sum(m.requests for m in recent) / span,
            sum(m.later for m in recent) / span,
            sum(m.moved for m in recent) / span,
            lag,
        )
