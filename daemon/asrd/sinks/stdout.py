"""Stdout sink: one JSON line per record, for pipes and container log collectors."""

from __future__ import annotations

import sys
import threading

from ..config import Settings, StdoutSinkSettings
from ..formats import to_json
from ..result import ResultRecord
from .base import SinkError


class StdoutSink:
    def __init__(self, settings: StdoutSinkSettings) -> None:
        self.name = settings.name
        self._lock = threading.Lock()

    def deliver(self, record: ResultRecord) -> None:
        line = to_json(record).decode()
        try:
            with self._lock:
                sys.stdout.write(line)
                sys.stdout.flush()
        except OSError as exc:
            raise SinkError(f"stdout: {exc.strerror}") from None

    def close(self) -> None:
        return None


def build(settings: StdoutSinkSettings, shared: Settings) -> StdoutSink:
    """The ``asrd.sinks`` entry point for ``type = "stdout"``."""
    return StdoutSink(settings)
