"""Jobs, queues and templates survive a restart: an append-only JSON-lines journal in the data dir.

The last record for an id wins. ``<data-dir>/.asrd-emulator/`` can never be a bucket
(bucket names start with a letter or digit), so it does not collide with objects.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

log = logging.getLogger("asrd.emulator.journal")

JOURNAL_DIR = ".asrd-emulator"


class Journal:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / JOURNAL_DIR / "journal.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[str] | None = None

    def records(self) -> Iterator[dict[str, Any]]:
        """Everything written so far; a torn last line (crash mid-write) is skipped."""
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, start=1):
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    log.warning("journal line %d unreadable, skipped", n)
                    continue
                if isinstance(record, dict):
                    yield record

    def rewrite(self, records: list[dict[str, Any]]) -> None:
        """Replace the journal by just these records (compaction at start-up)."""
        self.close()
        tmp = self.path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for record in records:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        tmp.replace(self.path)

    def write(self, record: dict[str, Any]) -> None:
        if self._file is None:
            self._file = self.path.open("a", encoding="utf-8")
        self._file.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._file.flush()  # in the OS once written: an emulator crash loses nothing

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
