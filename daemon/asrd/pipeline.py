"""One message from body to verdict: parse → get the job from CI → normalise → route → sinks.

The verdict tells the consumer what to do with the message; this module never touches the
broker. Nothing is reported ``DONE`` before every selected sink has the record and the ledger
says so.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from enum import Enum

from . import callback
from .ci import CiClient, CiError, JobsDetail
from .ledger import Ledger
from .observability import Counters
from .result import InvalidResult, ResultRecord, normalise, stamped
from .sinks import Route, SinkError


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


class Pipeline:
    def __init__(
        self,
        ci: CiClient,
        routes: list[Route],
        ledger: Ledger,
        counters: Counters,
        max_message_bytes: int = 5 * 1024 * 1024,
    ) -> None:
        self._ci = ci
        self._routes = routes
        self._ledger = ledger
        self._counters = counters
        self._max_bytes = max_message_bytes
        self._job_locks = [threading.Lock() for _ in range(64)]
        self._all_sinks = {r.sink.name for r in routes}

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

    def deliver_job(self, job_id: str) -> Verdict:
        """Fetch the job from CI (the truth) and deliver it; also used by the reconciler."""
        if self._all_sinks <= self._ledger.delivered(job_id):
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
        return self._dispatch(stamped(record))

    def _dispatch(self, record: ResultRecord) -> Verdict:
        # Duplicate callbacks (or the reconciler) may race on one job in this process: let one
        # deliver and the other find it in the ledger. Across replicas, sinks stay idempotent.
        with self._job_locks[hash(record.job_id) % len(self._job_locks)]:
            return self._deliver(record)

    def _deliver(self, record: ResultRecord) -> Verdict:
        done = self._ledger.delivered(record.job_id)
        failures: list[str] = []
        permanent = False
        for route in self._routes:
            name = route.sink.name
            if name in done or not route.selects(record):
                continue
            try:
                route.sink.deliver(record)
            except SinkError as exc:
                failures.append(f"sink {name}: {exc}")
                permanent = permanent or exc.permanent
                self._counters.inc(f"sink_failures.{name}")
                continue
            self._ledger.mark_delivered(record.job_id, name)
            self._counters.inc(f"delivered.{name}")
        if failures:
            return Verdict(
                Outcome.DEAD if permanent else Outcome.RETRY, "; ".join(failures), record.job_id
            )
        # Every selected sink has it: a job asrd submitted is no longer owed.
        self._ledger.settle(record.job_id, record.state)
        return Verdict(Outcome.DONE, "", record.job_id)
