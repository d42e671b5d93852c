"""Outage pauses: a setup fault (refused or expired keys) stops the work that depends on it
until a probe shows it works again, and never costs a message an attempt.

A source ("ci", "cmq", a sink's name...) is paused by whoever meets the fault with the reason,
and optionally a probe: a call that raises while the fault lasts. A thread then runs the probe
with backoff and resumes the source when it passes. The consumer does not receive while a
source it needs is paused, ``/readyz`` answers 503 with the reason, and one line is logged per
change of state (at error when work pauses), never one per message.

A sink is a source of its own (its name): while it is paused it is not called, the messages
that need it are put back without spending an attempt, and everything else goes on;
``stops_work`` tells the two apart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from . import backoff
from .observers import Observers

__all__ = ["Outage"]

# A pause within this long after the source resumed counts as a relapse.
_FLAP_S = 5.0

log = structlog.get_logger("asrd.outage")

Probe = Callable[[], object]


class Outage:
    def __init__(
        self,
        observers: Observers | None = None,
        probe_base_s: float = 0.5,
        probe_max_s: float = 15.0,
        stop: threading.Event | None = None,
    ) -> None:
        self._obs = observers or Observers()
        self._reasons: dict[str, str] = {}
        self._since: dict[str, float] = {}  # monotonic time each pause began
        self._probing: set[str] = set()
        # A source paused again soon after it resumed (a breaker whose probe passes while the
        # sink still fails) waits longer each time before its probe: flapping slows down.
        self._resumed_at: dict[str, float] = {}
        self._flaps: dict[str, int] = {}
        self._lock = threading.Lock()
        self._probe_delays = (probe_base_s, probe_max_s)
        self._stop = stop or threading.Event()

    def pause(self, source: str, reason: str, probe: Probe | None = None) -> None:
        """``source`` cannot work now; with ``probe``, try it with backoff until it passes."""
        with self._lock:
            new = source not in self._reasons
            self._reasons[source] = reason
            now = time.monotonic()
            if new:
                self._since[source] = now
                soon = now - self._resumed_at.get(source, -_FLAP_S) < _FLAP_S
                self._flaps[source] = min(self._flaps.get(source, 0) + 1, 20) if soon else 0
            flaps = self._flaps.get(source, 0)
            start = probe is not None and source not in self._probing
            if start:
                self._probing.add(source)
        if new:
            log.error("paused: " + reason, source=source)
            self._obs.outage_changed(source, reason)
        if start and probe is not None:
            threading.Thread(
                target=self._probe,
                args=(source, probe, flaps),
                name=f"asrd-probe-{source}",
                daemon=True,
            ).start()

    def resume(self, source: str, started: float | None = None) -> None:
        """``source`` works again. ``started``: when the call that proved it began (monotonic);
        a call begun before the pause proves nothing about the fault that caused it."""
        with self._lock:
            if started is not None and started < self._since.get(source, 0.0):
                return
            was = self._reasons.pop(source, None)
        self._resumed(source, was)

    def _resumed(self, source: str, was: str | None) -> None:
        if was is not None:
            with self._lock:
                self._resumed_at[source] = time.monotonic()
            log.info("resumed: " + source + " works again", source=source, was=was)
            self._obs.outage_changed(source, "")

    def paused(self, *sources: str, but: tuple[str, ...] = ()) -> bool:
        """Whether any of ``sources`` (without arguments: any source not in ``but``) is
        paused."""
        with self._lock:
            if sources:
                return any(s in self._reasons for s in sources)
            return any(s not in but for s in self._reasons)

    def stops_work(self, sinks: frozenset[str], but: tuple[str, ...] = ()) -> bool:
        """Whether the work as a whole is paused: a source that is not a sink (and not in
        ``but``), or every one of ``sinks`` at once. A paused sink alone does not: the other
        sinks still get their records, and those for it wait on the broker."""
        with self._lock:
            others = any(s not in sinks and s not in but for s in self._reasons)
            return others or (bool(sinks) and sinks <= self._reasons.keys())

    def reason(self) -> str:
        """Why work is paused, one line per source ("" when nothing is)."""
        with self._lock:
            return "; ".join(f"{s}: {r}" for s, r in sorted(self._reasons.items()))

    def _probe(self, source: str, probe: Probe, flaps: int = 0) -> None:
        failures = flaps  # each quick relapse starts the backoff one step further
        while True:
            failures += 1
            if self._stop.wait(backoff.delay(failures, *self._probe_delays)):
                break
            try:
                probe()
            except Exception as exc:  # noqa: BLE001 - a failed probe is the outage going on
                log.debug("probe failed", source=source, error=str(exc))
                continue
            with self._lock:  # resumed and no longer probed in one step: a new pause probes
                was = self._reasons.pop(source, None)
                self._probing.discard(source)
            self._resumed(source, was)
            return
        with self._lock:
            self._probing.discard(source)
