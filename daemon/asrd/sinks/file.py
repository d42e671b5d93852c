"""File sink: ``<dir>/<job_id>.<format>``, written atomically (temp file, fsync, rename)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..config import FileSinkSettings, Settings
from ..formats import render
from ..result import ResultRecord
from .base import SinkError


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Readers see the old file or the whole new one, never a part; durable on return.

    ``mode`` is set exactly (mkstemp makes 0600 and the umask does not apply to fchmod)."""
    # The writer's pid in the name lets a later start remove what a killed process left.
    prefix = f".{path.name}.{os.getpid()}."
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=_TMP_SUFFIX)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


_TMP_SUFFIX = ".tmp"


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
        # ".<job>.<fmt>.<pid>.<random>.tmp" -> pid is the third part from the end
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
        # job_id was checked against CI's id pattern, so it is a safe file name.
        try:
            # json last: its presence means every other format is already in place.
            for fmt in sorted(self.formats, key=lambda f: f == "json"):
                path = self.dir / f"{record.job_id}.{fmt}"
                write_atomic(path, render(record, fmt), self.file_mode)
        except OSError as exc:
            # A full or read-only disk may recover; keep the message and retry later.
            raise SinkError(f"cannot write to {self.dir}: {exc.strerror}") from None

    def close(self) -> None:
        return None


def build(settings: FileSinkSettings, shared: Settings) -> FileSink:
    """The ``asrd.sinks`` entry point for ``type = "file"``."""
    return FileSink(settings)
