"""A client-side limit on CI requests: at most ``rate`` per second, shared by threads.

Slots are handed out on a schedule (a virtual clock, as in GCRA): each ``acquire`` takes the
next slot ``1/rate`` after the previous one and sleeps until it. Over any stretch the rate is
exact and does not drift with thread timing; ``burst`` slots may be used at once after an idle
period. One instance can be shared by every caller that draws on the same CI quota.

``AdaptiveLimiter`` adds what a quota enforced by the server needs: when CI answers "slow down"
(503 SlowDown, 429), every caller pauses (exponential backoff) and the rate drops; answers that
get through raise it back towards the configured ceiling, a little at a time (about 10% a second
near 10 requests/s), so the rate settles just under a quota lower than the one configured.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from . import backoff


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
        self._burst = burst

    def set_rate(self, rate: float) -> None:
        """Space the slots not yet handed out at ``1/rate`` (> 0)."""
        with self._lock:
            self.rate = rate
            self._interval = 1.0 / rate
            self._burst_s = (self._burst - 1) * self._interval

    def pause(self, seconds: float) -> None:
        """No slot before ``seconds`` from now (slots already handed out keep their time)."""
        with self._lock:
            self._next = max(self._next, self._clock() + seconds)

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


class AdaptiveLimiter:
    """At most ``ceiling`` requests per second, less while the server says slow down.

    A throttling answer cuts the rate to what got through in the last ``settle_s`` (the quota
    as observed), or by ``decrease`` if that is higher, never below ``floor`` of the ceiling, and
    pauses every caller for an exponential backoff that grows while throttling answers keep
    coming; each answer that gets through raises the rate by ``increase`` of itself, up to the
    ceiling. Requests in flight when the rate was cut are throttled with it: throttling answers
    within ``settle_s`` of a cut are counted but do not cut again (a quota counted per second
    would otherwise drive the rate to the floor in one burst).
    """

    def __init__(
        self,
        ceiling: float,
        decrease: float = 0.7,
        increase: float = 0.01,
        floor: float = 0.1,
        pause_base_s: float = 0.05,
        pause_cap_s: float = 5.0,
        settle_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if ceiling <= 0:
            raise ValueError("ceiling must be positive")
        self.ceiling = ceiling
        self._decrease = decrease
        self._increase = increase
        self._floor = ceiling * floor
        self._pause_base_s = pause_base_s
        self._pause_cap_s = pause_cap_s
        self._settle_s = settle_s
        self._clock = clock
        self._cut_at = -float("inf")
        self._passed: deque[float] = deque()  # times of answers that got through, last settle_s
        self._limiter = RateLimiter(ceiling, clock=clock, sleep=sleep)
        self._lock = threading.Lock()
        self._streak = 0  # throttling answers since the last one that got through
        self.throttled_total = 0

    @property
    def rate(self) -> float:
        return self._limiter.rate

    def acquire(self, stop: threading.Event | None = None) -> bool:
        return self._limiter.acquire(stop)

    def throttled(self) -> float:
        """CI said slow down: lower the rate and pause everyone; returns the pause."""
        with self._lock:
            self.throttled_total += 1
            now = self._clock()
            if now - self._cut_at < self._settle_s:
                return 0.0
            self._cut_at = now
            self._streak += 1
            self._forget(now)
            observed = len(self._passed) / self._settle_s
            cut = self._limiter.rate * self._decrease
            self._limiter.set_rate(max(self._floor, min(cut, observed) if observed else cut))
            wait = backoff.delay(self._streak, self._pause_base_s, self._pause_cap_s)
            self._limiter.pause(wait)
            return wait

    def passed(self) -> None:
        """An answer got through (whatever it said): creep back towards the ceiling."""
        with self._lock:
            self._streak = 0
            now = self._clock()
            self._passed.append(now)
            self._forget(now)
            if self._limiter.rate < self.ceiling:
                raised = self._limiter.rate * (1 + self._increase)
                self._limiter.set_rate(min(self.ceiling, raised))

    def _forget(self, now: float) -> None:
        while self._passed and self._passed[0] < now - self._settle_s:
            self._passed.popleft()
