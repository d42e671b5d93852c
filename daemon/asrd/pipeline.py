"""One message from body to verdict: parse → get the job from CI → normalise → route → sinks.

The verdict tells the consumer what to do with the message; this module never touches the
broker. Nothing is reported ``DONE`` before every selected sink has the record and the ledger
says so.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from enum import Enum

from . import callback
from .ci import CiClient, CiError, JobsDetail
from .ledger import Ledger
from .observers import Observers
from .result import InvalidResult, ResultRecord, normalise, stamped
from .sinks import SinkError
from .sinks.routing import Router


class Outcome(Enum):
    DONE = "done"  # delivered (or already delivered): acknowledge
    IGNORED = "ignored"  # not ours (another job type or event): acknowledge
    RETRY = "retry"  # transient: redeliver later
    DEAD = "dead"  # can never succeed: dead-letter with the reason


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    reason: str = ""
    job_id: str = ""
    delivered: tuple[str, ...] = ()  # sinks that got the record on this attempt


class Pipeline:
    def __init__(
        self,
        ci: CiClient,
        router: Router,
        ledger: Ledger,
        observers: Observers,
        max_message_bytes: int = 5 * 1024 * 1024,
    ) -> None:
        self._ci = ci
        self._router = router
        self._ledger = ledger
        self._obs = observers
        self._max_bytes = max_message_bytes
        self._job_locks = [threading.Lock() for _ in range(64)]

    def handle(self, body: bytes) -> Verdict:
        try:
            event = callback.parse(body, self._max_bytes)
        except callback.BadMessage as exc:
            return Verdict(Outcome.DEAD, f"bad message: {exc}")
        if not event.is_asr_task_finish:
            return Verdict(
                Outcome.IGNORED,
                f"not an ASR TaskFinish (event {event.event_name!r}, tag {event.tag!r})",
            )
        return self.deliver_job(event.job_id)

    def complete(self, job_id: str) -> bool:
        """Every configured sink has this job or does not want it (so CI need not be asked)."""
        return self._router.names <= self._ledger.finished_sinks(job_id)

    def deliver_job(self, job_id: str) -> Verdict:
        """Fetch the job from CI (the truth) and deliver it; also used by the reconciler."""
        if self.complete(job_id):
            # A duplicate callback or a redelivery after a crash: no need to ask CI again.
            self._ledger.settle(job_id, None)
            return Verdict(Outcome.DONE, "already delivered to every sink", job_id)
        try:
            detail = self._ci.get_job(job_id)
        except CiError as exc:
            outcome = Outcome.RETRY if exc.transient else Outcome.DEAD
            return Verdict(outcome, f"CI get job failed: {exc}", job_id)
        if detail is None:
            # Read-after-notify lag is possible, so "not found" is retried until the budget ends.
            return Verdict(Outcome.RETRY, "CI does not know this job (NonExistJobIds)", job_id)
        return self.deliver_detail(job_id, detail)

    def deliver_detail(self, job_id: str, detail: JobsDetail) -> Verdict:
        """Deliver a job CI has just described (the deadline sweep describes many at once)."""
        try:
            record = normalise(detail)
        except InvalidResult as exc:
            return Verdict(Outcome.DEAD, f"invalid result from CI: {exc}", job_id)
        if not record.terminal:
            return Verdict(Outcome.RETRY, f"job still {record.state} after its callback", job_id)
        return self.deliver(stamped(record))

    def deliver(self, record: ResultRecord) -> Verdict:
        """Deliver a record to the sinks that want it and do not have it yet."""
        # Duplicate callbacks (or the reconciler) may race on one job in this process: let one
        # deliver and the other find it in the ledger. Across replicas, sinks stay idempotent.
        with self._job_locks[hash(record.job_id) % len(self._job_locks)]:
            return self._deliver(record)

    def _deliver(self, record: ResultRecord) -> Verdict:
        done = self._ledger.finished_sinks(record.job_id)
        wanted = self._router.wanted(record)
        unwanted = self._router.names - {r.sink.name for r in wanted} - done
        if unwanted:
            # Remembered, so a duplicate callback is settled without asking CI again.
            self._ledger.mark_not_wanted(record.job_id, unwanted)
        failures: list[str] = []
        delivered: list[str] = []
        permanent = False
        for route in wanted:
            name = route.sink.name
            if name in done:
                continue
            started = time.monotonic()
            try:
                route.sink.deliver(record)
            except SinkError as exc:
                failures.append(f"sink {name}: {exc}")
                permanent = permanent or exc.permanent
                self._obs.sink_failed(name, record.job_id, str(exc), exc.permanent)
                continue
            self._ledger.mark_delivered(record.job_id, name)
            delivered.append(name)
            self._obs.sink_delivered(name, record.job_id, time.monotonic() - started)
        if failures:
            outcome = Outcome.DEAD if permanent else Outcome.RETRY
            return Verdict(outcome, "; ".join(failures), record.job_id, tuple(delivered))
        # Every selected sink has it: a job asrd submitted is no longer owed.
        self._ledger.settle(record.job_id, record.state)
        return Verdict(Outcome.DONE, "", record.job_id, tuple(delivered))
