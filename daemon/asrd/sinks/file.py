"""File sink: ``<dir>/<job_id>.<format>``, written atomically (temp file, fsync, rename)."""

from __future__ import annotations

import contextlib
import errno
import os
import threading
from collections.abc import Sequence
from pathlib import Path

from ..config import FileSinkSettings, Settings
from ..formats import render
from ..result import ResultRecord
from .base import SinkError


def write_all(files: Sequence[tuple[Path, bytes]], mode: int = 0o644) -> dict[Path, OSError]:
    """Files written atomically and durably: each to a temp file, fsynced and renamed into
    place (readers see the old file or the whole new one, never a part), then each directory
    fsynced once for all its renames. ``mode`` is set exactly (the umask does not apply to
    fchmod). Returns the files that could not be written (the others are in place)."""
    failed: dict[Path, OSError] = {}
    placed: list[Path] = []
    for path, data in files:
        tmp = _temp_name(path)
        try:
            _write_synced(tmp, data, mode)
            os.replace(tmp, path)
        except OSError as exc:
            failed[path] = exc
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            continue
        placed.append(path)
    for directory in {p.parent for p in placed}:
        try:
            dir_fd = os.open(directory, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
        except OSError as exc:  # the renames may not survive a crash: not durable, not done
            failed.update((p, exc) for p in placed if p.parent == directory)
    return failed


def _temp_name(path: Path) -> Path:
    # Unique among live writers without a random part: the writer's pid (which also lets a
    # later start remove what a killed process left) and thread.
    return path.with_name(f".{path.name}.{os.getpid()}.{threading.get_native_id()}{_TMP_SUFFIX}")


def _write_synced(tmp: Path, data: bytes, mode: int) -> None:
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


_TMP_SUFFIX = ".tmp"
# The disk as a whole cannot take files (full, read-only, over quota): no record is at fault.
SINK_WIDE = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT})
_PROBE_NAME = ".asrd-probe"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_orphans(directory: Path) -> int:
    """Remove temp files of writers that no longer run (killed mid-write); returns how many."""
    removed = 0
    for tmp in directory.glob(f".*{_TMP_SUFFIX}"):
        parts = tmp.name.split(".")
        # ".<job>.<fmt>.<pid>.<thread>.tmp" -> pid is the third part from the end
        pid = parts[-3] if len(parts) >= 5 else ""
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


class FileSink:
    def __init__(self, settings: FileSinkSettings) -> None:
        self.name = settings.name
        self.dir = settings.dir
        self.formats = list(dict.fromkeys(settings.formats))
        self.file_mode = settings.file_mode
        self.dir.mkdir(parents=True, exist_ok=True)
        sweep_orphans(self.dir)

    def deliver(self, record: ResultRecord) -> None:
        failed = self.deliver_many([record])
        if failed:
            raise failed[record.job_id]

    def deliver_many(self, records: Sequence[ResultRecord]) -> dict[str, SinkError]:
        """Every format of every record; the directory is synced once for the batch."""
        # json last: its presence means every other format is already in place.
        formats = sorted(self.formats, key=lambda f: f == "json")
        failed: dict[str, SinkError] = {}
        for stage in (formats[:-1], formats[-1:]):
            files = {
                self.dir / f"{r.job_id}.{fmt}": (r.job_id, render(r, fmt))
                for r in records
                if r.job_id not in failed
                for fmt in stage
            }
            # job_id was checked against CI's id pattern, so it is a safe file name.
            errors = write_all([(p, data) for p, (_, data) in files.items()], self.file_mode)
            for path, exc in errors.items():
                # A full or read-only disk is an outage of the sink: the message waits without
                # spending an attempt. Anything else is retried within its budget.
                outage = self.name if exc.errno in SINK_WIDE else ""
                failed[files[path][0]] = SinkError(
                    f"cannot write to {self.dir}: {exc.strerror}", outage=outage
                )
        return failed

    def probe(self) -> None:
        """Raises while the directory cannot take a small file, written and synced as records
        are (so a disk with room for it has room for a record soon after)."""
        path = self.dir / _PROBE_NAME
        try:
            _write_synced(path, b"asrd probe\n", 0o600)
        finally:
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)

    def close(self) -> None:
        return None


def build(settings: FileSinkSettings, shared: Settings) -> FileSink:
    """The ``asrd.sinks`` entry point for ``type = "file"``."""
    return FileSink(settings)
