"""`asrd submit` with its ledger's disk full: an outage, not the rows' fault. It must wait for the
ledger and then submit every row once, not fail the rest of the manifest in a few milliseconds
(the soak's SQLite run saw 344 rows failed by a ledger full for 10 s).

The SQLite ledger lives on a small tmpfs of its own (root mounts it), which the test fills and
then frees, as a disk fills up in production."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Broker
from .support import ASRD, start_emulator, wait_for, write_config
from .test_submit_batch import created, report


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    assert os.geteuid() == 0, "mounting a tmpfs needs root"
    where = tmp_path / "ledger-disk"
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def fill(where: Path) -> Path:
    filler = where / "filler"
    with filler.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0" * 4096)
    with filler.open("ab", buffering=0) as fh, contextlib.suppress(OSError):
        while True:
            fh.write(b"\0")
    return filler


@pytest.mark.slow
def test_submit_waits_for_a_full_ledger_and_fails_no_row(
    tmp_path: Path, broker: Broker, small_disk: Path
) -> None:
    emu = start_emulator(tmp_path / "emulator", broker.service_url, "--job-delay", "1")
    try:
        ledger = f"sqlite:///{small_disk / 'ledger.db'}"
        cfg = write_config(tmp_path, emu, broker.service_url, intake=False, ledger_url=ledger)
        # A full disk meets a ledger already open (one that cannot be opened stops submit at
        # once with a line saying so): fill it once the first rows are in.
        manifest = tmp_path / "manifest.csv"
        manifest.write_text("input\n" + "".join(f"media/r-{i:02d}.mp3\n" for i in range(40)))
        log = tmp_path / "submit.log"
        rows_file = tmp_path / "report.jsonl"
        proc = subprocess.Popen(
            [*ASRD, "submit", "--config", str(cfg.path), "--manifest", str(manifest),
             "--rate", "4", "--concurrency", "2", "--report", str(rows_file)],
            stdout=subprocess.PIPE, stderr=log.open("wb"), text=True,
        )  # fmt: skip
        filler: Path | None = None
        try:
            wait_for(
                lambda: rows_file.exists() and len(rows_file.read_text().splitlines()) >= 3,
                90,
                "the first rows",
                0.1,
            )
            filler = fill(small_disk)
            wait_for(
                lambda: b"paused: the ledger cannot be written" in log.read_bytes(),
                60,
                "asrd submit to say it waits for the ledger",
                0.2,
            )
            assert proc.poll() is None, "submit gave up instead of waiting"
            filler.unlink()
            filler = None
            out, _ = proc.communicate(timeout=120)
        finally:
            if filler is not None:
                filler.unlink()
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, log.read_text()[-3000:]
        rows = report(tmp_path / "report.jsonl")
        assert len(rows) == 40 and {r["status"] for r in rows} <= {"submitted", "adopted"}
        assert len({r["job_id"] for r in rows}) == 40
        assert "0 failed" in out
        assert created(emu) == 40  # one create per row: the waits sent nothing twice
        assert b"resumed: the ledger works again" in log.read_bytes()
    finally:
        emu.stop()
