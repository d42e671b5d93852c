"""Telling a sink that is down from a record it refuses.

A sink whose transient failures (HTTP 5xx, timeouts, resets) hit ``threshold`` different jobs in
a row, with no delivery succeeding in between, is failing as a whole: the breaker opens and those
failures become an outage of the sink (no message spends an attempt on it; deliveries to it
pause and are probed with backoff). It closes at the next success. One job failing again and
again while others get through never opens it, so a record the sink refuses keeps its attempt
budget and is dead-lettered when that runs out. It also remembers when each sink last
delivered something, so that a message is not blamed for a sink that has taken nothing since
the message's first try (``settle``). Pure logic; the pipeline feeds it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable

__all__ = ["DEFAULT_THRESHOLD", "Breaker"]

# Five different jobs failing in a row is not chance at any rate asrd runs at, and is few
# enough that an outage costs at most a handful of messages one attempt each.
DEFAULT_THRESHOLD = 5


class Breaker:
    def __init__(self, threshold: int = DEFAULT_THRESHOLD) -> None:
        """``threshold``: how many different jobs in a row open it (0: it never opens)."""
        self._threshold = threshold
        self._streak: dict[str, set[str]] = {}  # sink -> jobs failed since its last success
        self._worked_at: dict[str, float] = {}  # sink -> when its latest successful call began
        self._lock = threading.Lock()

    def record(self, sink: str, succeeded: int, failed: Iterable[str], began: float = 0.0) -> bool:
        """One batch's outcome at ``sink`` (how many records it took, the jobs it failed
        transiently, when the call began: wall clock); whether the sink now counts as down."""
        with self._lock:
            streak = self._streak.setdefault(sink, set())
            if succeeded:
                streak.clear()  # it works; only what failed after that counts
                self._worked_at[sink] = max(self._worked_at.get(sink, 0.0), began)
            streak.update(failed)
            return 0 < self._threshold <= len(streak)

    def worked_at(self, sink: str) -> float:
        """When the latest call that delivered a record to ``sink`` began (0.0: none yet). A
        call that began before a message's first try proves nothing about the sink since.
        Infinite when the breaker is off: every transient failure is then the record's own."""
        if self._threshold <= 0:
            return math.inf
        with self._lock:
            return self._worked_at.get(sink, 0.0)
