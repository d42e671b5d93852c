"""The observer that writes the daemon's log lines about messages and keeps the counters it logs
when it stops (``messages.done``, ``delivered.<sink>``, ...).

A message delivered as expected gets a line at debug only (one per message costs as much CPU as
a tenth of the rest of its work); at info a summary line every ``summary_s`` says how many
were done since the last one. Retries, dead letters and ignored messages keep their own lines.
"""

from __future__ import annotations

import threading
import time

import structlog

from .observability import Counters
from .observers import Observer
from .vocabulary import Action, MessageInfo, Outcome, Settlement, SweepReport, Verdict


class LogObserver(Observer):
    """The daemon's log lines about messages and sinks, and the counters it logs at exit."""

    def __init__(self, summary_s: float = 30.0) -> None:
        self.counters = Counters()
        self._log = structlog.get_logger("asrd.consumer")
        self._summary_s = summary_s
        self._lock = threading.Lock()
        self._since = time.monotonic()
        self._done_since = 0

    def verdict(self, info: MessageInfo, verdict: Verdict, seconds: float) -> None:
        self.counters.inc(f"messages.{verdict.outcome.value}")

    def settled(self, info: MessageInfo, verdict: Verdict, settlement: Settlement) -> None:
        fields = {"message_id": info.message_id, "attempt": info.attempt}
        fields["job_id"] = verdict.job_id or None
        if settlement.action is Action.RETRY:
            self.counters.inc("messages.retried")
            self._log.warning(
                "message will be retried",
                reason=settlement.reason,
                retry_in_s=round(settlement.delay_s, 2),
                **fields,
            )
        elif settlement.action is Action.DEAD_LETTER:
            self.counters.inc("messages.dead_lettered")
            self._log.error("message dead-lettered", reason=settlement.reason, **fields)
        elif verdict.outcome is Outcome.DONE:
            self._log.debug("message done", **fields)
            self._count_done()
        elif settlement.action is Action.RELEASE:
            self.counters.inc("messages.paused")
            if verdict.outcome is Outcome.RETRY:
                # Held for a sink not yet known to be down: no outage line covers it, so each
                # hold is said (a few when a sink goes down: its breaker opens after a few jobs).
                self._log.warning("message put back", reason=settlement.reason, **fields)
            else:  # the outage itself is logged once when it starts; not once per message
                self._log.debug(
                    "message put back during an outage", reason=settlement.reason, **fields
                )
        else:
            reason = verdict.reason or None
            self._log.info(f"message {verdict.outcome.value}", reason=reason, **fields)

    def _count_done(self) -> None:
        now = time.monotonic()
        with self._lock:
            self._done_since += 1
            elapsed = now - self._since
            if elapsed < self._summary_s:
                return
            done, self._done_since, self._since = self._done_since, 0, now
        self._log.info(
            "messages done", count=done, seconds=round(elapsed, 1), per_s=round(done / elapsed, 1)
        )

    def publish_failed(self, info: MessageInfo, settlement: Settlement, error: str) -> None:
        # Not parked, so not acknowledged: the broker keeps the message and it comes back.
        what = "retry" if settlement.action is Action.RETRY else "dead-letter"
        self._log.error(
            f"{what} publish failed; negative ack instead",
            error=error,
            message_id=info.message_id,
            attempt=info.attempt,
        )

    def pipeline_crashed(self, info: MessageInfo, exc: BaseException) -> None:
        self._log.error(
            "pipeline error", exc_info=exc, message_id=info.message_id, attempt=info.attempt
        )

    def receive_failed(self, error: str) -> None:
        self._log.warning("receive failed", error=error)

    def sink_delivered(self, sink: str, job_id: str, seconds: float) -> None:
        self.counters.inc(f"delivered.{sink}")

    def sink_failed(self, sink: str, job_id: str, error: str, permanent: bool) -> None:
        self.counters.inc(f"sink_failures.{sink}")

    def intake_moved(self, queue: str, count: int) -> None:
        self.counters.inc("intake.moved", count)

    def intake_receive_error(self, queue: str, error: str) -> None:
        self.counters.inc("intake.receive_errors")

    def intake_produce_errors(self, queue: str, count: int) -> None:
        self.counters.inc("intake.produce_errors", count)

    def intake_delete_errors(self, queue: str, count: int) -> None:
        self.counters.inc("intake.delete_errors", count)

    def url_callback(self, accepted: bool) -> None:
        self.counters.inc("intake.url_received" if accepted else "intake.url_errors")

    def deadline_sweep(self, report: SweepReport) -> None:
        self.counters.inc("deadline_sweep.delivered", len(report.delivered))
        self.counters.inc("deadline_sweep.unfinished", len(report.still_running))
        self.counters.inc("deadline_sweep.failed", len(report.failed))
