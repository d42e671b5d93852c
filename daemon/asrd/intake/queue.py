"""The CMQ intake: long-poll the TDMQ-CMQ queue CI notifies, produce each message onto the Pulsar
topic, and delete from CMQ exactly those the broker persisted.

At least once, nothing lost: a crash after the receive leaves the messages invisible until the
queue's visibility timeout, then CMQ hands them out again; a crash after the produce but before
the delete puts a second copy on Pulsar, which the ledger recognises (the job is already
delivered). Every body is moved as it is, even one that is not a TaskFinish: the consumer decides,
and dead-letters it with a reason, so nothing is dropped silently at the edge.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import structlog
from pydantic import SecretStr

from .. import backoff
from ..cmq import CmqClient, CmqError, CmqMessage
from ..config import CmqIntakeSettings
from ..observability import Counters
from .forward import Forwarder, ForwardError, Outgoing

__all__ = ["IntakeHealth", "MoveReport", "QueueIntake", "cmq_client"]

log = structlog.get_logger("asrd.intake")

# Properties the intake adds, for tracing a Pulsar message back to its CMQ origin.
CMQ_QUEUE = "CMQ_QUEUE"
CMQ_MSG_ID = "CMQ_MSG_ID"
CMQ_DEQUEUE_COUNT = "CMQ_DEQUEUE_COUNT"


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


def cmq_client(settings: CmqIntakeSettings) -> CmqClient:
    return CmqClient(
        settings.endpoint,
        _secret(settings.secret_id),
        _secret(settings.secret_key),
        token=_secret(settings.token),
        signature_method=settings.signature_method,
        timeout_s=settings.timeout_s,
    )


@dataclass
class IntakeHealth:
    """Written by the intake loop, read by probes and metrics."""

    started_at: float = field(default_factory=time.monotonic)
    last_ok: float = 0.0  # monotonic time of the latest poll CMQ answered
    last_error: str = ""
    last_tick: float = field(default_factory=time.monotonic)

    def since_ok(self, now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        return now - (self.last_ok or self.started_at)

    def reachable(self, bound_s: float) -> bool:
        return self.since_ok() <= bound_s


@dataclass(frozen=True)
class MoveReport:
    received: int = 0
    moved: int = 0  # persisted on Pulsar and deleted from CMQ
    kept: int = 0  # left in CMQ (not persisted, or the delete was refused): it comes back


class QueueIntake:
    def __init__(
        self,
        settings: CmqIntakeSettings,
        client: CmqClient,
        forwarder: Forwarder,
        counters: Counters,
    ) -> None:
        self._settings = settings
        self._cmq = client
        self._forwarder = forwarder
        self._counters = counters
        self.health = IntakeHealth()

    def move_once(self, wait_s: int | None = None) -> MoveReport:
        """One receive → produce → delete round. Raises ``CmqError`` if CMQ cannot be polled."""
        s = self._settings
        wait = s.polling_wait_s if wait_s is None else wait_s
        messages = self._cmq.batch_receive(s.queue, s.batch_size, wait)
        self.health.last_ok = time.monotonic()
        if not messages:
            return MoveReport()
        failures = self._forwarder.send_all([self._outgoing(m) for m in messages])
        persisted = [m for m, failed in zip(messages, failures, strict=True) if failed is None]
        for m, failed in zip(messages, failures, strict=True):
            if failed is not None:
                # Not deleted: CMQ redelivers it after the queue's visibility timeout.
                self._counters.inc("intake.produce_errors")
                log.warning("could not put a CMQ message on Pulsar", msg_id=m.msg_id, error=failed)
        refused = self._delete(persisted)
        moved = len(persisted) - len(refused)
        self._counters.inc("intake.moved", moved)
        return MoveReport(len(messages), moved, len(messages) - moved)

    def _delete(self, persisted: list[CmqMessage]) -> dict[str, str]:
        if not persisted:
            return {}
        handles = [m.receipt_handle for m in persisted]
        try:
            refused = self._cmq.batch_delete(self._settings.queue, handles)
        except CmqError as exc:
            refused = {h: str(exc) for h in handles}
        if refused:
            # Already on Pulsar; CMQ hands them out again and the copy is a duplicate the
            # ledger absorbs.
            self._counters.inc("intake.delete_errors", len(refused))
            log.warning(
                "CMQ refused deletes; those messages will be moved again",
                count=len(refused),
                error=next(iter(refused.values())),
            )
        return refused

    def _outgoing(self, m: CmqMessage) -> Outgoing:
        props = {
            CMQ_QUEUE: self._settings.queue,
            CMQ_MSG_ID: m.msg_id,
            CMQ_DEQUEUE_COUNT: str(m.dequeue_count),
        }
        return Outgoing(m.body.encode("utf-8"), props)

    def run(self, stop: threading.Event, on_ready: Callable[[], object] | None = None) -> None:
        """Move messages until ``stop``. CMQ or broker trouble backs off with jitter, never ends
        the loop: a refused key or a missing queue can be fixed in the console without a restart.

        A receive in flight when ``stop`` is set is abandoned by the caller (the thread is a
        daemon); those messages stay in CMQ and come back after the visibility timeout.
        """
        s = self._settings
        log.info("intake started", endpoint=self._cmq.endpoint, queue=s.queue)
        if on_ready is not None:
            on_ready()
        failures = 0
        while not stop.is_set():
            self.health.last_tick = time.monotonic()
            try:
                report = self.move_once()
                trouble = "" if report.moved or not report.kept else "nothing persisted on Pulsar"
            except CmqError as exc:
                self._counters.inc("intake.receive_errors")
                trouble = str(exc)
            except ForwardError as exc:
                self._counters.inc("intake.produce_errors")
                trouble = str(exc)
            except Exception as exc:  # a bug must not stop the intake; the messages stay in CMQ
                log.exception("intake round failed")
                trouble = f"{type(exc).__name__}: {exc}"
            self.health.last_error = trouble
            if not trouble:
                failures = 0
                continue
            failures += 1
            pause = backoff.delay(failures, 1.0, 30.0)
            log.warning(
                "intake backing off", queue=s.queue, error=trouble, retry_in_s=round(pause, 2)
            )
            stop.wait(pause)
        log.info("intake stopped")
