"""A clock minutes off: CI and CMQ refuse the signatures, which reads like refused keys. asrd must
pause (nothing dead-lettered, no attempt spent) and its line must name the clock, not send the
operator to renew keys that are fine; with the clock right again everything is delivered.

The skewed daemon runs under libfaketime (Debian's), as a host with a wrong clock would."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from asrd import clock

from .conftest import Broker
from .support import (
    Emulator,
    create_jobs,
    dead_letters,
    result_ids,
    start_daemon,
    stop_daemon,
    wait_for,
    write_config,
)

FAKETIME = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"


def test_offset_reads_the_date_header_against_our_clock() -> None:
    date = "Sun, 06 Dec 2026 23:00:00 GMT"
    at = 1796598000.0  # that moment
    got = clock.offset("http://x", date_of=lambda url, t: date, now=lambda: at + 600)
    assert got == pytest.approx(600)
    assert clock.offset("http://x", date_of=lambda url, t: "", now=lambda: at) is None
    assert clock.offset("http://x", date_of=lambda url, t: "not a date", now=lambda: at) is None


def test_skew_note_names_the_clock_only_when_it_is_off() -> None:
    note = clock.skew_note("http://ci.example:1/a", "CI", probe=lambda url: 600.0)
    assert "600 s ahead of CI's" in note and "ci.example" in note
    behind = clock.skew_note("http://ci.example:2/", "CI", probe=lambda url: -120.0)
    assert "120 s behind CI's" in behind
    assert clock.skew_note("http://ci.example:3/", "CI", probe=lambda url: 5.0) == ""
    assert clock.skew_note("http://ci.example:4/", "CI", probe=lambda url: None) == ""


def paused_lines(log: Path) -> list[str]:
    lines = []
    for raw in log.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(raw)
        except ValueError:
            continue
        if str(rec.get("event", "")).startswith("paused:"):
            lines.append(str(rec["event"]))
    return lines


@pytest.mark.slow
def test_a_clock_ten_minutes_ahead_pauses_and_says_so(
    tmp_path: Path, emulator: Emulator, broker: Broker
) -> None:
    assert os.path.exists(FAKETIME), "libfaketime: scripts/deploy-deps installs it"
    pulsar_url = broker.service_url
    cfg = write_config(tmp_path, emulator, pulsar_url)
    jobs = set(create_jobs(cfg, 4))
    cfg.env |= {"LD_PRELOAD": FAKETIME, "FAKETIME": "+10m", "DONT_FAKE_MONOTONIC": "1"}
    daemon = start_daemon(cfg, cfg.log)
    try:
        lines = wait_for(
            lambda: [ln for ln in paused_lines(cfg.log) if "clock" in ln],
            60,
            "a paused line naming the clock",
            0.5,
        )
        assert "s ahead of" in lines[0] and "renew the key" not in lines[0], lines[0]
    finally:
        stop_daemon(daemon)
    assert result_ids(cfg) == set()
    assert dead_letters(pulsar_url, cfg) == []
    for key in ("LD_PRELOAD", "FAKETIME", "DONT_FAKE_MONOTONIC"):
        cfg.env.pop(key)
    daemon = start_daemon(cfg, cfg.log)
    try:
        wait_for(lambda: jobs <= result_ids(cfg), 90, "every job delivered", 0.5)
    finally:
        stop_daemon(daemon)
    assert dead_letters(pulsar_url, cfg) == []
