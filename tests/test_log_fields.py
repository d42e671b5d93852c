"""Every log line a worker writes names the worker, from whichever thread writes it."""

from __future__ import annotations

import json
import subprocess
import sys

SCRIPT = """
import threading, structlog
from asrd import observability
observability.configure("info", "json")
observability.bind_process(worker=1)
log = structlog.get_logger("asrd.test")
log.info("from the main thread")
t = threading.Thread(target=lambda: log.info("from another thread"))
t.start(); t.join()
t = threading.Thread(target=lambda: log.info("bound here", worker=3))
t.start(); t.join()
observability.unbind_process("worker")
log.info("after unbind")
"""


def test_a_process_field_reaches_lines_from_every_thread() -> None:
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60, check=True
    )
    lines = {e["event"]: e for e in map(json.loads, run.stderr.splitlines())}
    assert lines["from the main thread"]["worker"] == 1
    assert lines["from another thread"]["worker"] == 1
    assert lines["bound here"]["worker"] == 3  # a field the line gives itself wins
    assert "worker" not in lines["after unbind"]
