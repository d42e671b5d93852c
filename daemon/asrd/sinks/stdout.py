"""Stdout sink: one JSON line per record, for pipes and container log collectors."""

from __future__ import annotations

import json
import sys
import threading

from ..config import StdoutSinkSettings
from ..result import ResultRecord
from .base import SinkError


class StdoutSink:
    def __init__(self, settings: StdoutSinkSettings) -> None:
        self.name = settings.name
        self._lock = threading.Lock()

    def deliver(self, record: ResultRecord) -> None:
        line = json.dumps(record.to_dict(), ensure_ascii=False, separators=(",", ":")) + "\n"
        try:
            with self._lock:
                sys.stdout.write(line)
                sys.stdout.flush()
        except OSError as exc:
            raise SinkError(f"stdout: {exc.strerror}") from None

    def close(self) -> None:
        return None
