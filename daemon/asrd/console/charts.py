"""Bar charts drawn on the server: the template turns these rectangles into inline SVG
(presentation attributes only, so the Content-Security-Policy needs no inline styles)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

WIDTH, HEIGHT, GAP = 480, 80, 2


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    value: int
    label: str  # the hour it counts, for the bar's <title>


def hourly_bars(values: list[int], start: float) -> list[Bar]:
    """One bar per hour from ``start``, scaled to the tallest (an empty chart stays flat)."""
    if not values:
        return []
    top = max(values) or 1
    step = WIDTH / len(values)
    bars = []
    for i, value in enumerate(values):
        height = HEIGHT * value / top
        hour = datetime.fromtimestamp(start + i * 3600, UTC).strftime("%m-%d %H:00")
        bars.append(Bar(i * step, HEIGHT - height, step - GAP, height, value, hour))
    return bars
