"""Progress of a batch: a live bar (rich) on a terminal, plain periodic lines anywhere else
(a pipe, a file, a journal), so logs stay readable and no control characters leak into them."""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import IO, Protocol

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class Tracker(Protocol):
    def advance(self, status: str) -> None: ...

    def close(self) -> None: ...


def _counts_text(counts: Counter[str]) -> str:
    made = counts["submitted"] + counts["adopted"]
    return f"submitted {made}, skipped {counts['skipped']}, failed {counts['failed']}"


class BarTracker:
    """rich's progress bar, redrawn in place on the terminal."""

    def __init__(self, total: int, stream: IO[str], label: str) -> None:
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TextColumn("{task.fields[counts]}"),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            console=Console(file=stream),
            refresh_per_second=8,
        )
        self._task = self._progress.add_task(label, total=total, counts=_counts_text(Counter()))
        self._progress.start()

    def advance(self, status: str) -> None:
        with self._lock:
            self._counts[status] += 1
            text = _counts_text(self._counts)
        self._progress.update(self._task, advance=1, counts=text)

    def close(self) -> None:
        self._progress.stop()


class LineTracker:
    """One line every ``interval_s`` while rows are being sent, and one at the end."""

    def __init__(self, total: int, stream: IO[str], label: str, interval_s: float) -> None:
        self._total = total
        self._stream = stream
        self._label = label
        self._counts: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, args=(interval_s,), name="asrd-progress", daemon=True
        )
        self._thread.start()

    def advance(self, status: str) -> None:
        with self._lock:
            self._counts[status] += 1

    def _line(self) -> str:
        with self._lock:
            done = sum(self._counts.values())
            text = _counts_text(self._counts)
        elapsed = time.monotonic() - self._started
        rate = done / elapsed if elapsed > 0 else 0.0
        return (
            f"{self._label}: {done}/{self._total} rows ({text}), "
            f"{rate:.1f} rows/s, {elapsed:.0f} s elapsed\n"
        )

    def _loop(self, interval_s: float) -> None:
        while not self._stop.wait(interval_s):
            self._stream.write(self._line())
            self._stream.flush()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._stream.write(self._line())
        self._stream.flush()


def tracker(total: int, stream: IO[str], label: str, interval_s: float) -> Tracker:
    """A bar when ``stream`` is a terminal, else periodic lines."""
    if stream.isatty():
        return BarTracker(total, stream, label)
    return LineTracker(total, stream, label, interval_s)
