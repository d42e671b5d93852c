"""SIGTERM / SIGINT for the daemon, honoured whatever the main thread is blocked on.

A Python signal handler runs only when the main thread is back in the interpreter; a call into
pulsar-client's C++ side (subscribing to an unreachable broker) can keep it away for the whole
operation timeout, longer than Docker's or Kubernetes' stop grace. So the signals are blocked in
every thread and one thread takes them with ``sigwait``: it sets ``stop``, waits for the daemon
to wind down, and ends the process itself if the daemon cannot.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog

log = structlog.get_logger("asrd")

SIGNALS = {signal.SIGTERM, signal.SIGINT}


@dataclass
class Shutdown:
    """``stop`` is set on the first signal; ``finished()`` tells the waiter the daemon is done.

    ``busy()`` says whether unacknowledged work may be in flight: then the daemon gets
    ``deadline_s`` to drain, else ``idle_grace_s`` (nothing would be lost by leaving at once).
    """

    deadline_s: float
    busy: Callable[[], bool] = lambda: False
    idle_grace_s: float = 1.0
    stop: threading.Event = field(default_factory=threading.Event)
    _done: threading.Event = field(default_factory=threading.Event)

    def install(self) -> None:
        """Call before any other thread starts: threads inherit the blocked signal mask."""
        signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
        threading.Thread(target=self._wait, name="asrd-signals", daemon=True).start()

    def finished(self) -> None:
        self._done.set()

    def _wait(self) -> None:
        signum = signal.sigwait(SIGNALS)
        log.info("signal received, stopping", signal=signal.Signals(signum).name)
        busy = self.busy()
        self.stop.set()
        second = threading.Thread(target=self._second, name="asrd-signals-2", daemon=True)
        second.start()
        # A little beyond the drain deadline: the drain itself gives up on time.
        grace = self.deadline_s + 5.0 if busy else self.idle_grace_s
        if self._done.wait(grace):
            return
        log.warning("still blocked after the stop signal; leaving now", waited_s=grace)
        self._exit(0 if not busy else 1)

    def _second(self) -> None:
        # Second signal: leave now; nothing unfinished was acknowledged, so nothing is lost.
        signal.sigwait(SIGNALS)
        self._exit(1)

    @staticmethod
    def _exit(code: int) -> None:
        from . import systemd

        systemd.notify("STOPPING=1")
        sys.stderr.flush()
        os._exit(code)
