"""One message from body to verdict: parse → get the job from CI → normalise → route → sinks.

The verdict tells the consumer what to do with the message; this module never touches the
broker. Nothing is reported ``DONE`` before every selected sink has the record and the ledger
says so.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from typing import Protocol

from . import callback
from .ci import CiError, JobsDetail
from .ledger import Deliveries, LedgerWrites, Usage
from .observers import Observers
from .result import InvalidResult, ResultRecord, engine_of, normalise, stamped
from .sinks.base import SinkError, deliver_all
from .sinks.breaker import Breaker
from .sinks.routing import Router
from .vocabulary import BadMessage
from .vocabulary import Outcome as Outcome
from .vocabulary import Verdict as Verdict

# The outage source of refused or missing keys (CI, COS): work waits while it lasts.
KEYS = "credentials"

# How long a worker may take to deliver a job before another may deliver it too (a worker
# that died holding a claim blocks its jobs this long; shorter than the drain deadline).
CLAIM_LEASE_S = 10.0


REFUSED = "CI refused asrd's keys"  # how a verdict's reason begins when CI answered no


def _ci_failed(exc: CiError, job_id: str) -> Verdict:
    if exc.auth:
        what = "no usable keys for CI" if exc.status is None else REFUSED
        return Verdict(Outcome.PAUSED, f"{what}: {exc}", job_id, pause=KEYS)
    outcome = Outcome.RETRY if exc.transient else Outcome.DEAD
    return Verdict(outcome, f"CI get job failed: {exc}", job_id)


class JobLookup(Protocol):
    """What the pipeline asks of CI (``CiClient``; a stub in fast tests)."""

    def get_jobs(self, job_ids: list[str]) -> dict[str, JobsDetail | CiError | None]:
        """Each job as CI describes it, ``None`` when CI does not know it, or why the look-up
        failed."""
        ...


class Pipeline:
    def __init__(
        self,
        ci: JobLookup,
        router: Router,
        ledger: Deliveries,
        observers: Observers,
        max_message_bytes: int = 5 * 1024 * 1024,
        breaker: Breaker | None = None,
    ) -> None:
        self._ci = ci
        self._router = router
        self._ledger = ledger
        self._obs = observers
        self._max_bytes = max_message_bytes
        # Striped by job id; many stripes, since a batch holds one per job it delivers.
        self._job_locks = [threading.Lock() for _ in range(4096)]
        self._owner = f"{socket.gethostname()}:{os.getpid()}"
        self._breaker = breaker or Breaker()
        # Whether a sink is paused by an outage (set by the daemon): it is not called then.
        self.sink_paused: Callable[[str], bool] = lambda name: False

    def handle_batch(self, bodies: list[bytes]) -> list[Verdict]:
        """A verdict per message body, in order (a single message is a batch of one): one
        ledger query for what is already done, the rest looked up together (multi-id
        describes), one ledger transaction for the jobs settled. One bad job never fails its
        neighbours."""
        verdicts: list[Verdict | None] = []
        wanted: dict[str, list[int]] = {}  # job id -> positions of its messages
        for i, body in enumerate(bodies):
            try:
                event = callback.parse(body, self._max_bytes)
            except BadMessage as exc:
                verdicts.append(Verdict(Outcome.DEAD, f"bad message: {exc}"))
                continue
            if not event.is_asr_task_finish:
                verdicts.append(
                    Verdict(
                        Outcome.IGNORED,
                        f"not an ASR TaskFinish (event {event.event_name!r}, tag {event.tag!r})",
                    )
                )
                continue
            verdicts.append(None)
            wanted.setdefault(event.job_id, []).append(i)
        self._obs.batch_jobs(wanted)
        for job_id, verdict in self.deliver_jobs(list(wanted)).items():
            for i in wanted[job_id]:
                verdicts[i] = verdict
        return [
            v if v is not None else Verdict(Outcome.RETRY, "internal: no verdict") for v in verdicts
        ]

    def deliver_jobs(self, job_ids: list[str]) -> dict[str, Verdict]:
        """Fetch the jobs from CI (the truth) and deliver them; a verdict per job id. Used for
        callbacks, by the reconciler and for redeliveries people ask for."""
        out: dict[str, Verdict] = {}
        names = self._router.names
        finished = self._ledger.finished_many(job_ids)
        done = [j for j in job_ids if names <= finished[j]]
        if done:
            # Duplicate callbacks or redeliveries after a crash: no need to ask CI again.
            self._ledger.commit(LedgerWrites(settled=[(j, None) for j in done]))
            for j in done:
                out[j] = Verdict(Outcome.DONE, "already delivered to every sink", j)
        lookup = [j for j in job_ids if j not in out]
        details: dict[str, JobsDetail] = {}
        described: dict[str, JobsDetail | CiError | None] = {}
        if lookup:
            started = time.monotonic()
            described = self._ci.get_jobs(lookup)
            self._obs.described(lookup, described, time.monotonic() - started)
        for job_id, detail in described.items():
            if isinstance(detail, CiError):
                out[job_id] = _ci_failed(detail, job_id)
            elif detail is None:
                # Read-after-notify lag is possible: "not found" is retried until the budget ends.
                out[job_id] = Verdict(
                    Outcome.RETRY, "CI does not know this job (NonExistJobIds)", job_id
                )
            else:
                details[job_id] = detail
        out.update(self.deliver_details(details))
        return out

    def deliver_details(self, details: dict[str, JobsDetail]) -> dict[str, Verdict]:
        """Deliver jobs CI has just described (the deadline sweep describes many at once); a
        verdict per job id."""
        out: dict[str, Verdict] = {}
        records: list[ResultRecord] = []
        for job_id, detail in details.items():
            try:
                record = normalise(detail)
            except InvalidResult as exc:
                out[job_id] = Verdict(Outcome.DEAD, f"invalid result from CI: {exc}", job_id)
                continue
            if not record.terminal:
                out[job_id] = Verdict(
                    Outcome.RETRY, f"job still {record.state} after its callback", job_id
                )
                continue
            records.append(stamped(record))
        if records:
            out.update(self._deliver_records(records))
        return out

    def _deliver_records(self, records: list[ResultRecord]) -> dict[str, Verdict]:
        """Deliver several records under their job locks (this process) and claims (every
        worker and replica on the ledger); what the deliveries leave to record (sinks that
        have a job or do not want it, settled jobs, the claims given up) goes in one
        transaction."""
        stripes = sorted({hash(r.job_id) % len(self._job_locks) for r in records})
        for stripe in stripes:  # in order: two batches never wait for each other in a cycle
            self._job_locks[stripe].acquire()
        claimed: list[str] = []
        try:
            got = self._claim([r.job_id for r in records])
            claimed = sorted(got)
            out = {
                r.job_id: Verdict(
                    Outcome.RETRY, "another worker was still delivering this job", r.job_id
                )
                for r in records
                if r.job_id not in got
            }
            mine = [r for r in records if r.job_id in got]
            # Read after claiming: a worker that delivered and let go is seen here.
            finished = self._ledger.finished_many([r.job_id for r in mine])
            writes = LedgerWrites(release=list(claimed), owner=self._owner)
            out.update(self._deliver_claimed(mine, finished, writes))
            # Until this commits, the claims keep other workers from delivering these jobs
            # again; a crash before it means one more (idempotent) delivery, never none.
            committing = time.monotonic()
            self._ledger.commit(writes)
            claimed = []
            self._obs.ledger_committed(mine, time.monotonic() - committing)
            for used in writes.usage:
                self._obs.audio_delivered(used.queue_id, used.engine, used.audio_seconds)
            return out
        finally:
            if claimed:  # the batch failed before its transaction: let the jobs go
                self._ledger.release_jobs(claimed, self._owner)
            for stripe in stripes:
                self._job_locks[stripe].release()

    def _claim(self, job_ids: list[str]) -> set[str]:
        """Claim the jobs, waiting while another worker holds some (it is delivering them now:
        milliseconds; one that died frees them when its lease ends)."""
        claimed = self._ledger.claim_jobs(job_ids, self._owner, CLAIM_LEASE_S)
        deadline = time.monotonic() + CLAIM_LEASE_S + 1.0
        wait = 0.02
        while len(claimed) < len(job_ids) and time.monotonic() < deadline:
            time.sleep(wait)
            wait = min(wait * 2, 0.5)
            rest = [j for j in job_ids if j not in claimed]
            claimed |= self._ledger.claim_jobs(rest, self._owner, CLAIM_LEASE_S)
        return claimed

    def _deliver_claimed(
        self, records: list[ResultRecord], done: dict[str, set[str]], writes: LedgerWrites
    ) -> dict[str, Verdict]:
        """Each sink gets the records it wants and lacks in one batch; one record's failure
        never fails its neighbours."""
        wanted = {r.job_id: {route.sink.name for route in self._router.wanted(r)} for r in records}
        failures: dict[str, list[str]] = {r.job_id: [] for r in records}
        permanent: set[str] = set()
        outage: dict[str, str] = {}  # job id -> what is out
        waiting: dict[str, str] = {}  # job id -> a paused sink it waits for
        delivered: dict[str, list[str]] = {r.job_id: [] for r in records}
        failed_at: dict[str, list[str]] = {r.job_id: [] for r in records}  # sinks, transiently
        for r in records:
            unwanted = self._router.names - wanted[r.job_id] - done[r.job_id]
            writes.not_wanted += [(r.job_id, name) for name in unwanted]
        for route in self._router.routes:
            name = route.sink.name
            batch = [r for r in records if name in wanted[r.job_id] and name not in done[r.job_id]]
            if not batch:
                continue
            if self.sink_paused(name):
                # Down as a whole: the records wait for it (no attempt spent); the other sinks
                # still get theirs now.
                for r in batch:
                    failures[r.job_id].append(f"sink {name}: paused by an outage")
                    waiting[r.job_id] = name
                continue
            started, began = time.monotonic(), time.time()
            errors = self._sink_wide(name, len(batch), deliver_all(route.sink, batch), began)
            seconds = time.monotonic() - started
            self._obs.sink_called(name, batch, errors, seconds)
            for job_id, exc in errors.items():
                failures[job_id].append(f"sink {name}: {exc}")
                if exc.outage:
                    outage[job_id] = exc.outage
                elif exc.permanent:
                    permanent.add(job_id)
                else:
                    failed_at[job_id].append(name)
                self._obs.sink_failed(name, job_id, str(exc), exc.permanent)
            for job_id in (r.job_id for r in batch if r.job_id not in errors):
                delivered[job_id].append(name)
                writes.delivered.append((job_id, name))
                self._obs.sink_delivered(name, job_id, seconds)
        out: dict[str, Verdict] = {}
        for r in records:
            got = tuple(delivered[r.job_id])
            if failures[r.job_id]:
                outcome = Outcome.DEAD if r.job_id in permanent else Outcome.RETRY
                pause = outage.get(r.job_id, "") or waiting.get(r.job_id, "")
                if pause:
                    outcome = Outcome.PAUSED
                reason = "; ".join(failures[r.job_id])
                worked = [self._breaker.worked_at(name) for name in failed_at[r.job_id]]
                out[r.job_id] = Verdict(
                    outcome,
                    reason,
                    r.job_id,
                    got,
                    pause=pause,
                    waiting=r.job_id not in outage,
                    sinks_worked_at=max(worked, default=None),
                )
            else:
                writes.settled.append((r.job_id, r.state))
                if token := r.client_token:
                    writes.tokens[r.job_id] = token
                if r.audio_time is not None:
                    writes.usage.append(Usage(r.job_id, r.queue_id, engine_of(r), r.audio_time))
                out[r.job_id] = Verdict(Outcome.DONE, "", r.job_id, got)
        return out

    def _sink_wide(
        self, name: str, sent: int, errors: dict[str, SinkError], began: float
    ) -> dict[str, SinkError]:
        """``errors`` with the transient ones made an outage of the sink when the breaker finds
        it failing across different jobs (the sink is down, not these records)."""
        transient = [j for j, e in errors.items() if not e.permanent and not e.outage]
        if not self._breaker.record(name, sent - len(errors), transient, began):
            return errors
        why = "transient failures across different jobs in a row, the last: "
        return {
            j: SinkError(why + str(e), outage=name) if j in transient else e
            for j, e in errors.items()
        }

    def complete(self, job_id: str) -> bool:
        """Every configured sink has this job or does not want it (so CI need not be asked)."""
        return not self.incomplete([job_id])

    def incomplete(self, job_ids: list[str]) -> list[str]:
        """Those of ``job_ids`` some configured sink still lacks (one ledger read)."""
        names = self._router.names
        finished = self._ledger.finished_many(job_ids)
        return [j for j in job_ids if not names <= finished[j]]
