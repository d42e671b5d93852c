"""Which process of the fleet runs the singleton chores (reconcile, deadline sweep, pruning).

Every replica, host and worker of a deployment shares one ledger; a chore such as the
reconciler costs CI quota in every process that runs it, and one process is enough. With a
ledger that offers fleet-wide locks (PostgreSQL's session-level advisory locks,
``Ledger.lock_sessions``) each candidate keeps one connection of its own and, every ``poll_s``,
checks it with a round trip and tries to take a lock per chore it does not hold yet.

The rules that keep two processes from leading at once:

- The server frees a holder's locks when its connection ends: at once when the process dies
  (its socket closes), within about 20 s when its network goes silent (keep-alives on the lock
  connection). A candidate with a working session takes them at its next beat.
- A holder leads only within ``lease_s`` of its last confirmed round trip, shorter than the
  server's silent-network cut, and it confirms its session again just before each pass of a
  chore; a failed check ends its leadership at once.
- A session just opened (at start, or after the old one was lost, e.g. to a server restart
  that ended every session at once) tries no lock for ``lease_s``: by then any process that
  held one on a lost session has stopped leading.

A pass already under way when leadership moves finishes (the ledger's claims keep its effects
single). Without fleet-wide locks (SQLite: one host), the supervisor's first worker (or the
only process) leads, as ``candidate`` says. Leadership never touches readiness: a follower
serves and consumes like the leader.
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
    """Start with ``start(stop)``, leave with ``stop()``; a chore runs through ``only_leader``.

    ``sessions``: opens a lock session (None: no fleet-wide locks, ``candidate`` decides).
    ``candidate``: whether this process may lead at all (one per host: the first worker).
    """

    def __init__(
        self,
        chores: Sequence[str],
        sessions: Callable[[], LockSession] | None,
        candidate: bool,
        poll_s: float = 3.0,
        lease_s: float = 8.0,
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
        self._try_after = 0.0  # a new session's first try at the locks
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
        """This process's view now (what ``asrd_leader`` shows): no round trip."""
        if not self._candidate:
            return False
        if not self.elected:
            return True
        with self._lock:
            fresh = self._clock() - self._confirmed_at < self.lease_s
            return chore in self._held and fresh

    def only_leader(self, chore: str, run: Callable[[], object]) -> Callable[[], object]:
        """``run`` as a chore that runs only while this process leads ``chore``, confirmed by a
        round trip on the lock session just before."""

        def guarded() -> object:
            if not self.leads(chore) or (self.elected and not self._confirm()):
                return None
            return run()

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

        Only this thread opens sessions and takes locks; ``_lock`` guards what ``leads`` reads
        and is never held across a round trip (a stuck one must not block the chores)."""
        session = self._session
        if session is not None and not self._confirm():
            session = None
        if session is None:
            session = self._open()
            if session is None:
                return
        with self._lock:
            if self._clock() < self._try_after:
                return
            wanted = [chore for chore in self.chores if chore not in self._held]
        try:
            for chore in wanted:
                if session.try_lock(chore):
                    with self._lock:
                        self._held.add(chore)
                    log.info("gained leadership", chore=chore)
        except LedgerError as exc:
            self._drop(str(exc))

    def _confirm(self) -> bool:
        """A round trip on the session; its start time renews the lease. False (and every lock
        given up) when the session is gone."""
        session = self._session
        began = self._clock()
        if session is None:
            return False
        if not session.alive():
            self._drop("lost the connection to the ledger")
            return False
        with self._lock:
            self._confirmed_at = max(self._confirmed_at, began)
        return True

    def _open(self) -> LockSession | None:
        assert self._sessions is not None
        try:
            session = self._sessions()
        except LedgerError as exc:
            if not self._unreachable_logged:  # once per outage: it is retried every beat
                log.warning("cannot reach the ledger to elect a leader", error=str(exc))
                self._unreachable_logged = True
            return None
        self._unreachable_logged = False
        with self._lock:
            self._session = session
            self._confirmed_at = self._clock()
            self._try_after = self._confirmed_at + self.lease_s
        return session

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
