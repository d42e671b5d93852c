"""A client-side limit on CI requests: at most ``rate`` per second, shared by threads.

Slots are handed out on a schedule (a virtual clock, as in GCRA): each ``acquire`` takes the
next slot ``1/rate`` after the previous one and sleeps until it. Over any stretch the rate is
exact and does not drift with thread timing; ``burst`` slots may be used at once after an idle
period. One instance can be shared by every caller that draws on the same CI quota.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable


class RateLimiter:
    def __init__(
        self,
        rate: float,
        burst: int = 1,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        """``rate`` <= 0 means no limit."""
        if burst < 1:
            raise ValueError("burst must be at least 1")
        self.rate = rate
        self._interval = 1.0 / rate if rate > 0 else 0.0
        self._burst_s = (burst - 1) * self._interval
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._next = clock()

    def reserve(self) -> float:
        """Take the next slot; returns how long to wait before using it (0 = now)."""
        if self._interval == 0.0:
            return 0.0
        with self._lock:
            now = self._clock()
            # An idle limiter may lend up to ``burst`` slots at once, never more.
            slot = max(self._next, now - self._burst_s)
            self._next = slot + self._interval
            return max(0.0, slot - now)

    def acquire(self, stop: threading.Event | None = None) -> bool:
        """Wait for a slot; False when ``stop`` was set meanwhile (the slot is then lost)."""
        wait = self.reserve()
        if wait <= 0:
            return True
        if stop is not None:
            return not stop.wait(wait)
        self._sleep(wait)
        return True
