"""The soak report's catch-up counted from the end of the last overlapping fault."""

from __future__ import annotations

from soak.report import after_overlaps


def test_a_short_fault_inside_a_long_one_is_counted_from_the_long_ones_end() -> None:
    faults = [
        {"kind": "webhook-timeout", "started": 100.0, "ended": 160.0, "caught_up_s": 20.0},
        {"kind": "kill-worker", "started": 115.0, "ended": 115.0, "caught_up_s": 60.0},
        {"kind": "kill-worker", "started": 400.0, "ended": 400.0, "caught_up_s": 5.0},
        {"kind": "broker-restart", "started": 500.0, "ended": 510.0, "caught_up_s": None},
    ]
    got = after_overlaps(faults)
    # 115 + 60 = 175, 15 s after the timeouts ended; the lone kill counts from its own end.
    assert got["kill-worker"] == {"min": 5.0, "median": 10.0, "max": 15.0}
    # The long fault overlapped the kill, which ended before it: its own end counts.
    assert got["webhook-timeout"] == {"min": 20.0, "median": 20.0, "max": 20.0}
    assert "broker-restart" not in got
