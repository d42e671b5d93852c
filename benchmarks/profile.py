"""Optional py-spy sampling of the daemon (GIL holder only), summarised by function."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
from collections import Counter
from pathlib import Path

from benchmarks.harness import BIN

# Frames that only say "a worker thread ran something"; the summary skips them.
_PLUMBING = ("threading.py", "concurrent/futures", "<frozen", "(asrd)", "asrd/cli.py")
_OURS = ("asrd/", "qcloud_cos/", "requests/", "urllib3/", "json/", "logging/", "structlog/")


def py_spy() -> str | None:
    exe = BIN / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


class Profiler:
    """``py-spy record --gil`` on one process until stopped; nothing when py-spy is absent."""

    def __init__(self, pid: int, out: Path, rate: int = 50) -> None:
        self.out = out
        exe = py_spy()
        self._proc: subprocess.Popen[bytes] | None = None
        if exe is not None:
            args = ["record", "--gil", "--nonblocking", "-r", str(rate), "-f", "raw"]
            self._proc = subprocess.Popen(
                [exe, *args, "-o", str(out), "-p", str(pid)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

    def stop(self) -> Path | None:
        """Stop sampling (py-spy writes its file on SIGINT); the file, if one was written."""
        if self._proc is None:
            return None
        if self._proc.poll() is None:
            self._proc.send_signal(signal.SIGINT)
            try:
                self._proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return self.out if self.out.exists() and self.out.stat().st_size else None


def top_functions(raw: Path, count: int = 15) -> list[tuple[str, float]]:
    """``(function (file), share of samples)`` by inclusive share, plumbing left out."""
    inclusive: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, samples = line.rpartition(" ")
        if not samples.isdigit():
            continue
        total += int(samples)
        frames = {re.sub(r":\d+\)$", ")", f) for f in stack.split(";")[1:]}
        for frame in frames:
            if any(p in frame for p in _OURS) and not any(p in frame for p in _PLUMBING):
                inclusive[frame] += int(samples)
    if not total:
        return []
    out: list[tuple[str, float]] = []
    previous = -1
    for frame, n in inclusive.most_common():
        if abs(n - previous) <= total * 0.005:
            continue  # a wrapper with its callee's share: one line is enough
        out.append((frame, n / total))
        previous = n
        if len(out) == count:
            break
    return out
