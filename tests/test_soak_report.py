"""The soak report: the catch-up counted from the end of the last overlapping fault, and the
workers the broker sent nothing while it sent another messages."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from soak.report import after_overlaps, longest_lives, starved_workers
from soak.run import complete_lines


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


def _sample(t: float, outs: dict[str, int], pids: dict[str, int] | None = None) -> dict[str, Any]:
    pids = pids or {"worker0": 10, "worker1": 11}
    return {
        "t": t,
        "procs": {n: {"pid": pids[n], "cpu_s": t / 10} for n in outs},
        "consumers": {
            n: {"out": o, "permits": [500, 500], "unacked": [0, 0]} for n, o in outs.items()
        },
    }


def test_a_worker_the_broker_sends_nothing_while_the_other_takes_messages_is_named() -> None:
    samples = [_sample(0, {"worker0": 0, "worker1": 0})]
    samples += [_sample(t, {"worker0": 10 * t, "worker1": 50}) for t in range(10, 100, 10)]
    samples += [_sample(t, {"worker0": 10 * t, "worker1": 50 + t}) for t in range(100, 130, 10)]
    got = starved_workers(samples)
    # worker1 took its share until t=10, then nothing from 10 to 90 s while worker0 took 800.
    assert got == [
        {
            "worker": "worker1",
            "from": 10,
            "to": 90,
            "others_took": 800,
            "permits": [500, 500],
            "unacked": [0, 0],
            "cpu_s": 8.0,
        }
    ]


def test_idle_together_restarted_or_short_is_not_starved() -> None:
    # Both idle (nothing to send); then 50 s in which worker1 took nothing; then it is
    # restarted (a new pid, its counter starts again: a new span) and takes nothing for 40 s.
    samples = [_sample(t, {"worker0": 0, "worker1": 0}) for t in range(0, 100, 10)]
    samples += [_sample(t, {"worker0": t, "worker1": 5}) for t in range(100, 160, 10)]
    restarted = {"worker0": 10, "worker1": 12}
    samples += [_sample(t, {"worker0": t, "worker1": 0}, restarted) for t in range(160, 210, 10)]
    samples += [_sample(t, {"worker0": t, "worker1": t}, restarted) for t in range(210, 260, 10)]
    assert starved_workers(samples) == []


def test_rss_growth_is_measured_within_each_process_s_longest_life() -> None:
    samples = []
    for t in range(0, 300, 10):
        # worker0 restarted at 100 s (pid 20): its second life is the longer one and grows 10 %
        # from its second quarter to its last; its first life was far larger and is left out.
        pid, rss = (10, 900) if t < 100 else (20, 100 + (10 if t >= 250 else 0))
        samples.append({"t": t, "procs": {"worker0": {"pid": pid, "rss_kib": rss}}})
    got = longest_lives(samples)["worker0"]
    assert (got["pid"], got["from"], got["to"]) == (20, 100, 290)
    assert (got["q2"], got["q4"], got["growth"]) == (100, 110, 0.1)


def test_the_submit_report_is_read_by_whole_lines(tmp_path: Path) -> None:
    """A line the submit is still writing is read whole on the next call, never half; the
    harness reads the report while ``asrd submit`` appends to it."""
    report = tmp_path / "submitted.jsonl"
    report.write_bytes(b'{"job_id": "s1"}\n{"job_id": "s')
    with report.open("rb") as fh:
        assert complete_lines(fh) == [b'{"job_id": "s1"}']
        assert complete_lines(fh) == []  # still unfinished
        with report.open("ab") as out:
            out.write(b'2"}\n')
        assert complete_lines(fh) == [b'{"job_id": "s2"}']
        assert complete_lines(fh) == []
