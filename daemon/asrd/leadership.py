"""Which process of the fleet runs the singleton chores (reconcile, deadline sweep, pruning).

Every replica, host and worker of a deployment shares one ledger; a chore such as the
reconciler costs CI quota per process that runs it, and one process is enough. With a ledger
that offers fleet-wide locks (PostgreSQL's session-level advisory locks, ``Ledger.lock_session``)
each candidate process keeps one connection of its own and tries, every ``poll_s``, to take a
lock per chore it does not hold yet; the holder checks that connection on the same beat.

- A holder that dies, or whose connection ends, loses its locks on the server at once (a killed
  process's socket closes; a silent network is cut by keep-alives within seconds), and another
  candidate takes them at its next try: the takeover is bounded by ``poll_s`` plus that.
- A holder that cannot confirm its connection stops leading at once, and in any case once
  ``lease_s`` has passed since its last confirmation (a check stuck on a dead network must not
  let it lead on while another process already does).

Without such locks (SQLite: one host), the supervisor's first worker (or the only process)
leads, as the candidate flag says. Leadership never touches readiness: a follower serves and
consumes like the leader.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import structlog

from .ledger import LedgerError, LockSession

log = structlog.get_logger("asrd.leadership")

CHORES = ("reconcile", "deadline_sweep", "prune_ledger")


class Leadership:
    """Start with ``start(stop)``; ``leads(chore)`` is what a chore asks before each pass.

    ``sessions``: opens a lock session (None: no fleet-wide locks, ``candidate`` decides).
    ``candidate``: whether this process may lead at all (one per host: the first worker).
    """

    def __init__(
        self,
        chores: Sequence[str],
        sessions: Callable[[], LockSession] | None,
        candidate: bool,
        poll_s: float = 5.0,
        lease_s: float = 15.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.chores = tuple(chores)
        self._sessions = sessions
        self._candidate = candidate
        self.poll_s, self.lease_s = poll_s, lease_s
        self._clock = clock
        self._session: LockSession | None = None
        self._held: set[str] = set()
        self._confirmed_at = 0.0
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._unreachable_logged = False

    @property
    def elected(self) -> bool:
        """Whether leadership is decided by fleet-wide locks (else fixed per host)."""
        return self._sessions is not None

    def start(self, stop: threading.Event) -> None:
        if not self._candidate:
            return
        if not self.elected:
            log.info("leading the chores (one host: this process)", chores=list(self.chores))
            return
        self._stop = stop
        self._thread = threading.Thread(target=self._loop, name="asrd-leadership", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        """Leave: the locks go with the session, so another process leads at its next try."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self._drop("stopping", quiet=True)

    def leads(self, chore: str) -> bool:
        if not self._candidate:
            return False
        if not self.elected:
            return True
        with self._lock:
            fresh = self._clock() - self._confirmed_at < self.lease_s
            return chore in self._held and fresh

    def only_leader(self, chore: str, run: Callable[[], object]) -> Callable[[], object]:
        """``run`` as a chore that does nothing in a process not leading ``chore``."""

        def guarded() -> object:
            return run() if self.leads(chore) else None

        return guarded

    def gauges(self) -> dict[str, bool]:
        """``asrd_leader{chore}``: this process's view, chore by chore."""
        return {chore: self.leads(chore) for chore in self.chores}

    # -- the election ----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            try:
                self.step()
            except Exception:  # a bug here must not end the daemon; leadership is given up
                log.exception("leadership check failed")
                self._drop("check failed")
            if self._stop.wait(self.poll_s):
                return

    def step(self) -> None:
        """One beat: confirm the session (or open one), then try every chore not held.

        Only this thread touches the session; ``_lock`` guards what ``leads`` reads, and is
        never held across a round trip (a stuck one must not block the chores' question)."""
        began = self._clock()
        session = self._session
        if session is not None and not session.alive():
            self._drop("lost the connection to the ledger")
            session = None
        if session is None:
            session = self._open()
            if session is None:
                return
        with self._lock:
            self._confirmed_at = began
            wanted = [chore for chore in self.chores if chore not in self._held]
        try:
            for chore in wanted:
                if session.try_lock(chore):
                    with self._lock:
                        self._held.add(chore)
                    log.info("gained leadership", chore=chore)
        except LedgerError as exc:
            self._drop(str(exc))

    def _open(self) -> LockSession | None:
        assert self._sessions is not None
        try:
            self._session = self._sessions()
        except LedgerError as exc:
            if not self._unreachable_logged:  # once per outage: it is retried every beat
                log.warning("cannot reach the ledger to elect a leader", error=str(exc))
                self._unreachable_logged = True
            return None
        self._unreachable_logged = False
        return self._session

    def _drop(self, reason: str, quiet: bool = False) -> None:
        """Forget every lock and close the session (the server frees whatever it still holds)."""
        with self._lock:
            held, self._held = sorted(self._held), set()
            session, self._session = self._session, None
        for chore in held:
            (log.info if quiet else log.warning)("lost leadership", chore=chore, reason=reason)
        if session is not None:
            try:
                session.close()
            except Exception:  # a broken connection may fail to close; it is gone anyway
                log.debug("closing the lock session failed", exc_info=True)
