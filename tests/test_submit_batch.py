"""``asrd submit --manifest`` / ``--prefix`` as real processes against the emulator: the rate
limit, exactly one job per row even when CI's answers are lost, re-runs that start nothing,
progress on a terminal and in a pipe."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

from asrd import config, queueid
from asrd.ci import CiClient

from .conftest import Broker
from .support import (
    ASRD,
    DaemonConfig,
    Emulator,
    asrd,
    start_emulator,
    wait_for,
    write_config,
)


def ci_jobs(cfg: DaemonConfig) -> list[dict[str, Any]]:
    """Every job the emulator has, through its list API (all pages)."""
    client = CiClient(config.load(cfg.path).ci)
    return list(client.list_jobs(queue_id=queueid.lookup(client), states="All"))


def created(emu: Emulator) -> int:
    return int(emu.stats()["stats"].get("jobs_created", 0))


def report(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def submit(cfg: DaemonConfig, *args: str, env: dict[str, str] | None = None) -> Any:
    return subprocess.run(
        [*ASRD, "submit", "--config", str(cfg.path), *args],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


def elapsed_in_summary(stdout: str) -> float:
    m = re.search(r"row\(s\) in ([\d.]+) s", stdout)
    assert m, stdout
    return float(m.group(1))


def test_500_rows_at_100_per_second_then_a_rerun_starts_none(
    tmp_path: Path, broker: Broker
) -> None:
    emu = start_emulator(tmp_path / "emulator", broker.service_url, "--job-delay", "1")
    try:
        cfg = write_config(tmp_path, emu, broker.service_url)
        manifest = tmp_path / "manifest.csv"
        manifest.write_text(
            "input,user_data,job_level\n"
            + "".join(f"media/rec-{i:03d}.mp3,order-{i},{i % 3}\n" for i in range(500))
        )
        out = submit(cfg, "--manifest", str(manifest), "--rate", "100", "--concurrency", "16",
                     "--report", str(tmp_path / "first.jsonl"))  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        rows = report(tmp_path / "first.jsonl")
        assert len(rows) == 500 and {r["status"] for r in rows} == {"submitted"}
        assert len({r["job_id"] for r in rows}) == 500
        # 500 creates at 100/s: the last is due 4.99 s after the first. Never faster (the
        # limiter), and within 10 % of that.
        sent = sorted(datetime.fromisoformat(r["submitted_at"]).timestamp() for r in rows)
        assert 4.99 * 0.99 <= sent[-1] - sent[0] <= 4.99 * 1.1
        assert 4.99 * 0.99 <= elapsed_in_summary(out.stdout) <= 5.0 * 1.1
        assert "500 submitted" in out.stdout and "0 failed" in out.stdout
        jobs = ci_jobs(cfg)
        assert created(emu) == 500 and len(jobs) == 500
        assert Counter(j["Input"]["Object"] for j in jobs) == Counter(
            f"media/rec-{i:03d}.mp3" for i in range(500)
        )
        user_data = {j["Operation"]["UserData"] for j in jobs}
        assert all(re.fullmatch(r"asrd:[0-9a-f]{32} order-\d+", u) for u in user_data)

        again = submit(cfg, "--manifest", str(manifest), "--rate", "100",
                       "--report", str(tmp_path / "second.jsonl"))  # fmt: skip
        assert again.returncode == 0, again.stderr[-3000:]
        second = report(tmp_path / "second.jsonl")
        assert {r["status"] for r in second} == {"skipped"}
        assert {r["job_id"] for r in second} == {r["job_id"] for r in rows}
        assert "0 submitted" in again.stdout and "500 skipped" in again.stdout
        assert created(emu) == 500

        # --force sends rows the ledger has (a new token each); exit status still 0.
        small = tmp_path / "small.csv"
        small.write_text("input\nmedia/rec-000.mp3\nmedia/rec-001.mp3\n")
        forced = submit(cfg, "--manifest", str(small), "--force", "--rate", "50")
        assert forced.returncode == 0 and "2 submitted" in forced.stdout
        assert created(emu) == 502
    finally:
        emu.stop()


def test_lost_create_answers_still_make_exactly_one_job_per_row(
    tmp_path: Path, broker: Broker
) -> None:
    emu = start_emulator(
        tmp_path / "emulator", broker.service_url, "--job-delay", "1",
        "--fault-create-response-drop-rate", "0.2", "--fault-seed", "11",
    )  # fmt: skip
    try:
        cfg = write_config(tmp_path, emu, broker.service_url)
        manifest = tmp_path / "manifest.jsonl"
        manifest.write_text(
            "".join(
                json.dumps({"url": f"https://media.example/r{i}.wav"}) + "\n" for i in range(500)
            )
        )
        out = submit(cfg, "--manifest", str(manifest), "--rate", "200", "--concurrency", "16",
                     "--report", str(tmp_path / "report.jsonl"))  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        rows = report(tmp_path / "report.jsonl")
        assert len(rows) == 500
        statuses = Counter(r["status"] for r in rows)
        assert set(statuses) <= {"submitted", "adopted"} and statuses["adopted"] > 0
        dropped = emu.stats()["counts"]["create_response_dropped"]
        assert statuses["adopted"] == dropped > 50  # about 20 % of 500
        jobs = ci_jobs(cfg)
        assert created(emu) == 500 and len(jobs) == 500
        assert {j["JobId"] for j in jobs} == {r["job_id"] for r in rows}
        assert Counter(j["Input"]["Url"] for j in jobs) == Counter(
            f"https://media.example/r{i}.wav" for i in range(500)
        )

        again = submit(cfg, "--manifest", str(manifest))
        assert again.returncode == 0 and "500 skipped" in again.stdout
        assert created(emu) == 500
    finally:
        emu.stop()


def test_prefix_over_1200_objects_submits_each_once(tmp_path: Path, broker: Broker) -> None:
    emu = start_emulator(tmp_path / "emulator", broker.service_url, "--job-delay", "1")
    try:
        cfg = write_config(tmp_path, emu, broker.service_url)
        client = CiClient(config.load(cfg.path).ci)
        audio = [f"calls/2026/{i:04d}.{'mp3' if i % 2 else 'WAV'}" for i in range(1200)]
        others = ["calls/2026/notes.txt", "calls/readme.md", "other/x.mp3"]
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda k: client.put_object(k, b"audio"), audio + others))
        env = {"ASRD_SUBMIT__LIST_PAGE_SIZE": "500"}  # 3 list pages
        out = submit(
            cfg, "--prefix", "calls/", "--suffix", ".mp3,.wav", "--rate", "500",
            "--concurrency", "16", "--report", str(tmp_path / "r.jsonl"), env=env,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        rows = report(tmp_path / "r.jsonl")
        assert sorted(r["input"] for r in rows) == sorted(audio)
        assert emu.stats()["stats"]["object_list_pages"] == 3
        jobs = ci_jobs(cfg)
        assert created(emu) == 1200
        assert Counter(j["Input"]["Object"] for j in jobs) == Counter(audio)

        again = submit(cfg, "--prefix", "calls/", "--suffix", ".mp3,.wav", env=env)
        assert again.returncode == 0 and "1200 skipped" in again.stdout
        assert created(emu) == 1200
        none = submit(cfg, "--prefix", "nothing/")
        assert none.returncode == 2 and "no objects under prefix 'nothing/'" in none.stderr
    finally:
        emu.stop()


PLAIN_LINE = re.compile(
    r"asrd submit: \d+/40 rows \(submitted \d+, skipped \d+, failed \d+\), "
    r"[\d.]+ rows/s, \d+ s elapsed"
)


def test_progress_is_a_bar_on_a_terminal_and_lines_in_a_pipe(
    tmp_path: Path, broker: Broker
) -> None:
    emu = start_emulator(tmp_path / "emulator", broker.service_url, "--job-delay", "1")
    try:
        cfg = write_config(tmp_path, emu, broker.service_url)
        piped, tty = tmp_path / "piped.csv", tmp_path / "tty.csv"
        piped.write_text("input\n" + "".join(f"media/p{i}.mp3\n" for i in range(40)))
        tty.write_text("input\n" + "".join(f"media/t{i}.mp3\n" for i in range(40)))
        args = ["--rate", "20", "--progress-interval", "0.5"]

        out = submit(cfg, "--manifest", str(piped), *args)
        assert out.returncode == 0, out.stderr
        lines = [ln for ln in out.stderr.splitlines() if ln.startswith("asrd submit: ")]
        assert len(lines) >= 3 and all(PLAIN_LINE.fullmatch(ln) for ln in lines), lines
        assert lines[-1].startswith("asrd submit: 40/40 rows (submitted 40,")
        assert "\x1b" not in out.stderr and "\r" not in out.stderr
        assert out.stdout.startswith("asrd submit: 40 row(s) in ")

        screen = run_in_pty(
            [*ASRD, "submit", "--config", str(cfg.path), "--manifest", str(tty), *args]
        )
        assert "\x1b[" in screen  # drawn in place with terminal control sequences
        assert "━" in screen and "40/40" in screen and "submitted 40" in screen
        assert not PLAIN_LINE.search(screen)
        assert "asrd submit: 40 row(s) in " in screen
        assert created(emu) == 80
    finally:
        emu.stop()


def run_in_pty(cmd: list[str]) -> str:
    """Run ``cmd`` with stdout and stderr on a pseudo-terminal; what it drew there."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    env.pop("NO_COLOR", None)
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the child closed its side
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    assert proc.wait(timeout=60) == 0
    return b"".join(chunks).decode("utf-8", "replace")


def test_bad_manifests_stop_before_anything_is_sent(tmp_path: Path, broker: Broker) -> None:
    emu = start_emulator(tmp_path / "emulator", broker.service_url)
    try:
        cfg = write_config(tmp_path, emu, broker.service_url)
        cases = {
            "a.csv": ("input,url\nmedia/a.mp3,\nmedia/b.mp3,https://x/b.mp3\n",
                      "a.csv:3: give exactly one of input or url"),
            "b.csv": ("input,speed\nmedia/a.mp3,fast\n", "b.csv:2: unknown column(s) speed"),
            "c.jsonl": ('{"input": "media/a.mp3"}\n{"input": "m.mp3", "job_level": 7}\n',
                        "c.jsonl:2: job_level must be 0, 1 or 2, not '7'"),
            "d.jsonl": ('{"input": "media/a.mp3"}\n[1]\n', "d.jsonl:2: not a JSON object"),
            "e.csv": ("object\nmedia/a.mp3\n", "e.csv:1: the header needs an input or a url"),
            "f.csv": (f"input,user_data\nmedia/a.mp3,{'x' * 1000}\n",
                      "f.csv:2: user data must be printable ASCII of at most 986 characters"),
        }  # fmt: skip
        for name, (text, message) in cases.items():
            (tmp_path / name).write_text(text)
            out = submit(cfg, "--manifest", str(tmp_path / name))
            assert out.returncode == 2, (name, out.stderr)
            assert message in out.stderr and out.stderr.count("\n") == 1, out.stderr
        missing = submit(cfg, "--manifest", str(tmp_path / "none.csv"))
        assert missing.returncode == 2 and "none.csv: cannot read" in missing.stderr
        assert created(emu) == 0

        # The same job twice in one manifest is sent once; the repeat is reported skipped.
        (tmp_path / "dup.csv").write_text("input\nmedia/a.mp3\nmedia/a.mp3\n")
        dup = submit(cfg, "--manifest", str(tmp_path / "dup.csv"), "--report",
                     str(tmp_path / "dup.jsonl"))  # fmt: skip
        assert dup.returncode == 0, dup.stderr
        rows = report(tmp_path / "dup.jsonl")
        assert sorted(r["status"] for r in rows) == ["skipped", "submitted"]
        assert len({r["job_id"] for r in rows}) == 1 and created(emu) == 1
    finally:
        emu.stop()


def test_one_off_submit_is_recorded_and_idempotent_by_token(tmp_path: Path, broker: Broker) -> None:
    emu = start_emulator(tmp_path / "emulator", broker.service_url)
    try:
        cfg = write_config(tmp_path, emu, broker.service_url)
        first = asrd("submit", "--config", str(cfg.path), "--input", "media/a.mp3",
                     "--client-token", "order-7")  # fmt: skip
        assert first.returncode == 0, first.stderr
        job_id = first.stdout.strip()
        again = asrd("submit", "--config", str(cfg.path), "--input", "media/a.mp3",
                     "--client-token", "order-7")  # fmt: skip
        assert again.returncode == 0 and again.stdout.strip() == job_id
        assert "already submitted" in again.stderr and created(emu) == 1
        listed = asrd("jobs", "--config", str(cfg.path), "--state", "owed")
        [entry] = [json.loads(line) for line in listed.stdout.splitlines()]
        assert (entry["job_id"], entry["client_token"], entry["input"]) == (
            job_id, "order-7", "media/a.mp3",
        )  # fmt: skip
        table = run_in_pty([*ASRD, "jobs", "--config", str(cfg.path)])  # a table on a terminal
        assert "1 job(s)" in table and "media/a.mp3" in table and "owed" in table
        assert "{" not in table
        bad = asrd("submit", "--config", str(cfg.path), "--input", "a.mp3",
                   "--client-token", "no spaces")  # fmt: skip
        assert bad.returncode == 2 and "client token 'no spaces' is not" in bad.stderr
    finally:
        emu.stop()


def test_a_killed_run_rerun_adopts_what_was_in_flight(tmp_path: Path, broker: Broker) -> None:
    """SIGKILL while creates are under way (CI answers after 300 ms): the re-run looks the
    unanswered rows up by client token and adopts their jobs instead of making second ones."""
    emu = start_emulator(
        tmp_path / "emulator", broker.service_url, "--job-delay", "1", "--fault-latency-ms", "300"
    )
    try:
        cfg = write_config(tmp_path, emu, broker.service_url)
        manifest = tmp_path / "manifest.csv"
        manifest.write_text("input\n" + "".join(f"media/k{i}.mp3\n" for i in range(200)))
        proc = subprocess.Popen(
            [*ASRD, "submit", "--config", str(cfg.path), "--manifest", str(manifest),
             "--rate", "100", "--concurrency", "16"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        wait_for_created(emu, 40)
        proc.kill()
        proc.wait()
        again = submit(cfg, "--manifest", str(manifest), "--rate", "100", "--concurrency", "16",
                       "--report", str(tmp_path / "again.jsonl"))  # fmt: skip
        assert again.returncode == 0, again.stderr[-3000:]
        statuses = Counter(r["status"] for r in report(tmp_path / "again.jsonl"))
        assert statuses["adopted"] >= 1 and statuses["skipped"] >= 20
        assert sum(statuses.values()) == 200
        jobs = ci_jobs(cfg)
        assert Counter(j["Input"]["Object"] for j in jobs) == Counter(
            f"media/k{i}.mp3" for i in range(200)
        )
    finally:
        emu.stop()


def wait_for_created(emu: Emulator, count: int) -> None:
    wait_for(lambda: created(emu) >= count, 30, f"{count} jobs created")
