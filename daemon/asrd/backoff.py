"""Exponential backoff with jitter, shared by in-process retries and redelivery delays."""

from __future__ import annotations

import random


def delay(attempt: int, base_s: float, cap_s: float) -> float:
    """Delay before retry number ``attempt`` (1-based): ``base * 2**(attempt-1)`` capped, then
    jittered into its upper half so retries of many messages spread out but never come early."""
    ceiling = min(cap_s, base_s * 2 ** max(attempt - 1, 0))
    return random.uniform(ceiling / 2, ceiling)  # noqa: S311 - jitter, not security
