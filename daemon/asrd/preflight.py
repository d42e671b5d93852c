"""Start-up checks of what the configuration points at on disk.

A directory the daemon cannot write (outside systemd's writable state directory, on a read-only
container root or volume) would otherwise pass start-up and ``/readyz`` and then fail every
delivery until the messages are dead-lettered; better one line and exit 78 at start.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from .config import ConfigError, FileSinkSettings, Settings


def writable_dirs(settings: Settings) -> list[tuple[str, Path]]:
    """(config key, directory) pairs the daemon must be able to create files in."""
    dirs = [("ledger.url", settings.ledger.path.parent)] if settings.ledger.is_sqlite else []
    for index, sink in enumerate(settings.sinks):
        if isinstance(sink, FileSinkSettings):
            dirs.append((f"sinks.{index}.dir", sink.dir))
    return dirs


def check_writable(settings: Settings) -> None:
    """Create each directory if missing and prove a file can be made there; else ConfigError."""
    for key, directory in writable_dirs(settings):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            # A real file, not os.access(): only creating one sees read-only mounts, ACLs and
            # seccomp/LSM refusals exactly as the sink will meet them.
            with tempfile.TemporaryFile(dir=directory, prefix=".asrd-probe-"):
                pass
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise ConfigError(
                f"config error: {key}: cannot write to {directory}: {reason}"
            ) from None
