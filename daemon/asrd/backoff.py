"""Exponential backoff with jitter, shared by in-process retries and redelivery delays."""

from __future__ import annotations

import random
from collections.abc import Callable

Uniform = Callable[[float, float], float]


def delay(attempt: int, base_s: float, cap_s: float, uniform: Uniform = random.uniform) -> float:
    """Delay before retry number ``attempt`` (1-based): ``base * 2**(attempt-1)`` capped, then
    jittered into its upper half so retries of many messages spread out but never come early.
    ``uniform`` is the jitter source (tests pass a fixed one)."""
    ceiling = min(cap_s, base_s * 2 ** max(attempt - 1, 0))
    return uniform(ceiling / 2, ceiling)
