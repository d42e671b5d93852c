"""The observer that writes the steps no ledger change marks into the jobs' timelines (the
ledger's ``events``): a callback received and moved onto Pulsar (by the intake), and each failed
attempt with what became of it (a retry scheduled, a pause, the dead-letter topic).

The steps are written by a thread of their own, in one ledger transaction for everything that
came in meanwhile: the intake moves hundreds of callbacks a poll and the workers settle batches,
and neither may wait on the ledger for a timeline, nor fail when it is away (the steps are then
logged as lost, and the work goes on). A pause is written once per job and reason: while a broker
or sink is away the same message comes back again and again without spending its attempts, and a
step for each would flood the timeline exactly when the workers must catch up.
"""

from __future__ import annotations

import queue
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Mapping, Sequence

import structlog

from .ledger import JobBook
from .observers import Observer
from .vocabulary import JOB_ID, Action, MessageInfo, MovedCallback, Settlement, Verdict

log = structlog.get_logger("asrd.timeline")

# The job id in a CI notification (XML ``<JobId>`` or JSON ``"JobId":``): a search, not a parse,
# so the intake's thread spends microseconds on it; a body without one is not a job's step.
# The id's own pattern is the one every other check uses (``vocabulary.JOB_ID``).
_JOB_ID = re.compile(rb"JobId[\"'>:\s]*(" + JOB_ID.pattern.encode("ascii") + rb")")
Step = tuple[str, float, str, str]  # (job id, time, stage, detail)


def job_id_in(body: bytes) -> str:
    """The CI job id a notification names, or ``""``."""
    found = _JOB_ID.search(body[:65536])
    return found.group(1).decode("ascii") if found else ""


class _Writer:
    """Steps queued by any thread, written by one (at most ``batch`` per transaction)."""

    def __init__(self, ledger: JobBook, capacity: int = 100_000, batch: int = 5_000) -> None:
        self._ledger = ledger
        self._queue: queue.Queue[Step] = queue.Queue(capacity)
        self._batch = batch
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._dropped = 0

    def put(self, steps: Sequence[Step]) -> None:
        """Never blocks: a full queue (the ledger far behind) drops the steps, counted."""
        self._start()
        for step in steps:
            try:
                self._queue.put_nowait(step)
            except queue.Full:
                self._dropped += 1

    def _start(self) -> None:
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="asrd-timeline", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        while True:
            steps = [self._queue.get()]
            while len(steps) < self._batch:
                try:
                    steps.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            self.write(steps)
            for _ in steps:
                self._queue.task_done()

    def write(self, steps: list[Step]) -> None:
        try:
            self._ledger.note_job_events(steps)
        except Exception as exc:  # noqa: BLE001 - a timeline must never stop the work
            log.warning("timeline steps not written", count=len(steps), error=str(exc))
        if self._dropped:
            dropped, self._dropped = self._dropped, 0
            log.warning("timeline steps dropped: the ledger is behind", count=dropped)

    def drain(self, timeout_s: float = 5.0) -> None:
        """Wait (at most ``timeout_s``) until what was queued is handed to the ledger."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.01)


class TimelineObserver(Observer):
    def __init__(self, ledger: JobBook, pauses_kept: int = 10_000) -> None:
        self._writer = _Writer(ledger)
        self._paused: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._pauses_kept = pauses_kept
        self._lock = threading.Lock()

    def drain(self, timeout_s: float = 5.0) -> None:
        """Wait until the steps observed so far are written (at stop; in tests)."""
        self._writer.drain(timeout_s)

    def callbacks_moved(self, topic: str, moved: Sequence[MovedCallback]) -> None:
        now = time.time()
        steps: list[Step] = []
        for callback in moved:
            job_id = job_id_in(callback.body)
            if job_id:
                steps.append((job_id, callback.received_at, "callback received", callback.via))
                steps.append((job_id, now, "moved onto Pulsar", topic))
        if steps:
            self._writer.put(steps)

    def described(
        self, job_ids: Sequence[str], found: Mapping[str, object], seconds: float
    ) -> None:
        """CI answered a describe: each job it knew was read back (its state then)."""
        now = time.time()
        steps: list[Step] = []
        for job_id in job_ids:
            detail = found.get(job_id)
            if isinstance(detail, Mapping):  # an error or None: the settled step says why
                state = detail.get("State", "")
                steps.append((job_id, now, "read back", f"CI said {state} ({seconds:.2f} s)"))
        if steps:
            self._writer.put(steps)

    def settled(self, info: MessageInfo, verdict: Verdict, settlement: Settlement) -> None:
        job_id = verdict.job_id
        if not job_id or settlement.action is Action.ACK:
            return
        attempt = f"attempt {info.attempt}"
        if settlement.action is Action.DEAD_LETTER:
            step = (job_id, time.time(), "dead-lettered", f"{attempt}: {settlement.reason}")
        elif settlement.action is Action.RETRY:
            detail = f"{attempt} failed: {settlement.reason}; retry in {settlement.delay_s:.0f} s"
            step = (job_id, time.time(), "retry scheduled", detail)
        else:  # RELEASE: an outage; the attempt is not counted
            if verdict.waiting or not self._first_pause(job_id, settlement.reason):
                return
            detail = f"{settlement.reason} (the attempt is not counted)"
            step = (job_id, time.time(), "paused", detail)
        self._writer.put([step])

    def _first_pause(self, job_id: str, reason: str) -> bool:
        """Whether this job was not yet seen paused for this reason (recently)."""
        key = (job_id, reason)
        with self._lock:
            if key in self._paused:
                return False
            self._paused[key] = None
            if len(self._paused) > self._pauses_kept:
                self._paused.popitem(last=False)
            return True
