"""Background chores of the daemon (reconcile passes, ledger pruning) on a fixed interval."""

from __future__ import annotations

import threading
from collections.abc import Callable

import structlog

log = structlog.get_logger("asrd.periodic")


def every(
    interval_s: float,
    stop: threading.Event,
    chore: Callable[[], object],
    name: str,
    first_s: float | None = None,
) -> threading.Thread:
    """Run ``chore`` every ``interval_s`` (the first time after ``first_s``, by default the same)
    until ``stop``; a failure is logged, never fatal."""

    def loop() -> None:
        wait_s = interval_s if first_s is None else first_s
        while not stop.wait(wait_s):
            wait_s = interval_s
            try:
                chore()
            except Exception:  # a chore must not end the daemon; the next pass tries again
                log.exception("periodic task failed", task=name)

    thread = threading.Thread(target=loop, name=f"asrd-{name}", daemon=True)
    thread.start()
    return thread
