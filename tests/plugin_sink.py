"""A plugin sink for the tests: appends ``<job_id> <state>`` lines to ``options["path"]``."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any


class LineSink:
    def __init__(self, name: str, path: Path, services: Any = None) -> None:
        self.name = name
        self.path = path
        self.services = services
        self._lock = threading.Lock()

    def deliver(self, record: Any) -> None:
        with self._lock, self.path.open("a") as fh:
            fh.write(f"{record.job_id} {record.state}\n")

    def close(self) -> None:
        return None


def make(name: str, options: dict[str, Any]) -> LineSink:
    return LineSink(name, Path(options["path"]))


def build(settings: Any, shared: Any) -> LineSink:
    """The same sink as an ``asrd.sinks`` entry point: ``(settings, shared) -> Sink``."""
    return LineSink(settings.name, Path(settings.options["path"]))


def build_with_services(settings: Any, shared: Any, *, services: Any) -> LineSink:
    """A factory that asks for the process's shared services (``asrd.sinks.Services``)."""
    return LineSink(settings.name, Path(settings.options["path"]), services)
