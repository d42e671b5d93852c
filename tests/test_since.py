"""``since`` (``asrd jobs --since``, ``GET /v1/jobs?since=``): a duration ago or an RFC 3339
time, and nothing else — the API's OpenAPI document promises exactly these."""

from __future__ import annotations

import pytest

from asrd.jobs import parse_since

NOW = 1_767_225_600.0  # 2026-01-01T00:00:00Z


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("90s", NOW - 90),
        ("1.5h", NOW - 5400),
        ("2d", NOW - 172_800),
        ("2026-01-01T00:00:00Z", NOW),
        ("2026-01-01t08:00:00.25+08:00", NOW + 0.25),
        ("2025-12-31T23:00:00-01:00", NOW),
        ("0001-01-01T00:00:00+23:59", -62_135_683_140.0),
    ],
)
def test_accepted(text: str, expected: float) -> None:
    assert parse_since(text, NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("", "neither a duration"),
        (" 1d", "neither a duration"),
        ("1w", "neither a duration"),
        ("2026-01-01T00:00:00", "neither a duration"),  # no UTC offset
        ("2026-01-01T00:00+00:00", "neither a duration"),  # no seconds
        ("2026-01-01 00:00:00Z", "neither a duration"),
        ("2026-02-30T00:00:00Z", "day is out of range"),
        ("2026-01-01T24:00:00Z", "hour must be in"),
    ],
)
def test_refused_with_the_reason(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_since(text, NOW)
