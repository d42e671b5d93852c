"""The CI request limiter as pure logic on a fake clock, then with real threads and time."""

from __future__ import annotations

import threading
import time

import pytest

from asrd.limiter import RateLimiter

from .support import Clock


def test_slots_are_spaced_exactly_and_never_drift() -> None:
    clock = Clock()
    limiter = RateLimiter(100, clock=clock, sleep=clock.sleep)
    waits = [limiter.reserve() for _ in range(5)]
    assert waits == pytest.approx([0.0, 0.01, 0.02, 0.03, 0.04])
    clock.now += 10  # idle: no credit beyond the burst (1) builds up
    assert limiter.reserve() == 0.0
    assert abs(limiter.reserve() - 0.01) < 1e-9


def test_burst_lends_slots_after_idling_only() -> None:
    clock = Clock()
    limiter = RateLimiter(10, burst=3, clock=clock, sleep=clock.sleep)
    clock.now += 5
    assert [round(limiter.reserve(), 6) for _ in range(4)] == [0.0, 0.0, 0.0, 0.1]


def test_unlimited_and_stop() -> None:
    assert RateLimiter(0).reserve() == 0.0
    limiter = RateLimiter(1)
    assert limiter.acquire()
    stop = threading.Event()
    stop.set()
    assert not limiter.acquire(stop)  # the next slot is a second away: stop wins


def test_threads_share_one_rate() -> None:
    limiter = RateLimiter(200)
    times: list[float] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(25):
            limiter.acquire()
            with lock:
                times.append(time.monotonic())

    threads = [threading.Thread(target=take) for _ in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # 200 slots at 200/s: the last one is due 199/200 s after the first, never earlier.
    assert len(times) == 200
    assert max(times) - started >= 0.99 * 199 / 200
