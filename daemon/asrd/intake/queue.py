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
from collections.abc import Sequence
from dataclasses import dataclass, field

import structlog
from pydantic import SecretStr

from .. import backoff, clock
from ..cmq import CmqClient, CmqError, CmqMessage
from ..config import CmqIntakeSettings
from ..credentials import Credentials
from ..observers import MovedCallback, Observers
from ..outage import Outage
from .forward import Forwarder, ForwardError, Outgoing

__all__ = ["IntakeHealth", "MoveReport", "QueueIntake", "cmq_clients"]

log = structlog.get_logger("asrd.intake")

# Properties the intake adds, for tracing a Pulsar message back to its CMQ origin.
CMQ_QUEUE = "CMQ_QUEUE"
CMQ_MSG_ID = "CMQ_MSG_ID"
CMQ_DEQUEUE_COUNT = "CMQ_DEQUEUE_COUNT"
VISIBILITY_WARN_EVERY_S = 600.0


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


def cmq_clients(settings: CmqIntakeSettings, keys: Credentials | None = None) -> list[CmqClient]:
    """One client (one keep-alive connection) per receive loop; every request signs with a
    snapshot of ``keys`` when given (temporary keys), else with the section's keys."""
    return [
        CmqClient(
            settings.endpoint,
            _secret(settings.secret_id),
            _secret(settings.secret_key),
            token=_secret(settings.token),
            signature_method=settings.signature_method,
            timeout_s=settings.timeout_s,
            keys=keys.snapshot if keys is not None else None,
        )
        for _ in range(settings.loops)
    ]


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
    """``len(clients)`` receive loops on the queue: while one waits for the broker to persist its
    batch, the others receive and delete (CMQ hands each message to one receiver at a time)."""

    SOURCE = "cmq"  # what the intake's outage pause is called

    def __init__(
        self,
        settings: CmqIntakeSettings,
        clients: Sequence[CmqClient],
        forwarder: Forwarder,
        observers: Observers,
        outage: Outage | None = None,
        keys: Credentials | None = None,
    ) -> None:
        """``outage``: where refused keys pause the intake (it waits, polling with backoff);
        ``keys``: the credentials the clients sign with (named in that pause)."""
        if not clients:
            raise ValueError("the intake needs at least one CMQ client")
        self._settings = settings
        self._clients = list(clients)
        self._forwarder = forwarder
        self._obs = observers
        self._outage = outage or Outage(observers)
        self._keys = keys
        self.health = IntakeHealth()
        self._visibility_warned = 0.0  # wall time of the last visibility warning

    def move_once(self, wait_s: int | None = None, client: CmqClient | None = None) -> MoveReport:
        """One receive → produce → delete round. Raises ``CmqError`` if CMQ cannot be polled."""
        s = self._settings
        cmq = client or self._clients[0]
        wait = s.polling_wait_s if wait_s is None else wait_s
        started = time.monotonic()
        messages = cmq.batch_receive(s.queue, s.batch_size, wait)
        polled_at = time.time()
        self.health.last_ok = received = time.monotonic()
        self._outage.resume(self.SOURCE, started)
        self._obs.intake_poll_ok(s.queue)
        if not messages:
            self._obs.intake_lag(s.queue, 0.0)
            return MoveReport()
        enqueued = [m.enqueue_time for m in messages if m.enqueue_time > 0]
        if enqueued:
            self._obs.intake_lag(s.queue, max(0.0, polled_at - min(enqueued)))
        self._check_visibility(messages)
        outgoing = [self._outgoing(m) for m in messages]
        failures = self._forwarder.forward(
            outgoing, s.produce_timeout_s, self._obs, s.queue, time.monotonic() - received
        )
        persisted = [m for m, failed in zip(messages, failures, strict=True) if failed is None]
        for m, failed in zip(messages, failures, strict=True):
            if failed is not None:
                # Not deleted: CMQ redelivers it after the queue's visibility timeout.
                self._obs.intake_produce_errors(s.queue, 1)
                log.warning("could not put a CMQ message on Pulsar", msg_id=m.msg_id, error=failed)
        if persisted:
            callbacks = [self._moved(m, polled_at) for m in persisted]
            self._obs.callbacks_moved(self._forwarder.topic, callbacks)
        refused = self._delete(cmq, persisted)
        moved = len(persisted) - len(refused)
        self._obs.intake_moved(s.queue, moved)
        return MoveReport(len(messages), moved, len(messages) - moved)

    def _check_visibility(self, messages: Sequence[CmqMessage]) -> None:
        """Warn (at most every ``VISIBILITY_WARN_EVERY_S``) when CMQ hands these messages out again
        before the produce could time out: another loop then moves them too (duplicates the
        ledger absorbs, but work and broker traffic twice)."""
        shown = [m.next_visible_time for m in messages if m.next_visible_time > 0]
        if not shown:
            return
        now = time.time()
        left = min(shown) - now
        wait = self._settings.produce_timeout_s
        if left >= wait or now - self._visibility_warned < VISIBILITY_WARN_EVERY_S:
            return
        self._visibility_warned = now
        log.warning(
            "the queue's visibility timeout leaves less time than intake.cmq.produce_timeout_s: "
            "raise the queue's visibility timeout in the console or lower produce_timeout_s",
            queue=self._settings.queue,
            visible_again_in_s=round(max(left, 0.0), 1),
            produce_timeout_s=wait,
        )

    def _delete(self, cmq: CmqClient, persisted: list[CmqMessage]) -> dict[str, str]:
        if not persisted:
            return {}
        handles = [m.receipt_handle for m in persisted]
        try:
            refused = cmq.batch_delete(self._settings.queue, handles)
        except CmqError as exc:
            refused = {h: str(exc) for h in handles}
        if refused:
            # Already on Pulsar; CMQ hands them out again and the copy is a duplicate the
            # ledger absorbs.
            self._obs.intake_delete_errors(self._settings.queue, len(refused))
            log.warning(
                "CMQ refused deletes; those messages will be moved again",
                count=len(refused),
                error=next(iter(refused.values())),
            )
        return refused

    def _moved(self, m: CmqMessage, polled_at: float) -> MovedCallback:
        """CMQ gives the enqueue time in whole seconds: the end of that second (or the poll,
        if sooner) keeps the step after the job's creation and before its move."""
        via = f"CMQ queue {self._settings.queue} (message {m.msg_id})"
        received = min(float(m.enqueue_time + 1), polled_at) if m.enqueue_time else polled_at
        return MovedCallback(m.body.encode("utf-8"), received, via)

    def _outgoing(self, m: CmqMessage) -> Outgoing:
        props = {
            CMQ_QUEUE: self._settings.queue,
            CMQ_MSG_ID: m.msg_id,
            CMQ_DEQUEUE_COUNT: str(m.dequeue_count),
        }
        return Outgoing(m.body.encode("utf-8"), props)

    def run(self, stop: threading.Event) -> None:
        """Move messages until ``stop``, one loop per client, each on a daemon thread.

        A receive in flight when ``stop`` is set is abandoned (its thread is a daemon, and the
        caller does not wait for a long poll); those messages stay in CMQ and come back after the
        visibility timeout.
        """
        log.info(
            "intake started",
            endpoint=self._clients[0].endpoint,
            queue=self._settings.queue,
            loops=len(self._clients),
        )
        self._obs.intake_started(self._settings.queue)
        loops = [
            threading.Thread(
                target=self._loop, args=(c, stop), name=f"asrd-intake-{i}", daemon=True
            )
            for i, c in enumerate(self._clients)
        ]
        for t in loops:
            t.start()
        for t in loops:
            t.join()
        log.info("intake stopped")

    def _loop(self, client: CmqClient, stop: threading.Event) -> None:
        """CMQ or broker trouble backs off with jitter, never ends the loop: a refused key or a
        missing queue can be fixed in the console without a restart. After a partial batch the
        loop lingers (``linger_s``): a long poll is answered by the first message to arrive, so
        at a steady rate a loop that polled again at once would move one message per receive
        and per delete."""
        failures = 0
        while not stop.is_set():
            self.health.last_tick = time.monotonic()
            report = MoveReport()
            try:
                report = self.move_once(client=client)
                trouble = "" if report.moved or not report.kept else "nothing persisted on Pulsar"
            except CmqError as exc:
                self._obs.intake_receive_error(self._settings.queue, str(exc))
                trouble = str(exc)
                if exc.auth:
                    self._auth_failed(exc)
            except ForwardError as exc:
                self._obs.intake_produce_errors(self._settings.queue, 1)
                trouble = str(exc)
            except Exception as exc:  # a bug must not stop the intake; the messages stay in CMQ
                log.exception("intake round failed")
                trouble = f"{type(exc).__name__}: {exc}"
            self.health.last_error = trouble
            if not trouble:
                failures = 0
                if 0 < report.received < self._settings.batch_size:
                    stop.wait(self._settings.linger_s)
                continue
            failures += 1
            pause = backoff.delay(failures, 1.0, 30.0)
            if self._outage.paused(self.SOURCE):
                # Each poll is the probe: keys that work again are noticed within seconds.
                pause = min(pause, 5.0)
            else:  # an outage is logged once, when it starts
                log.warning(
                    "intake backing off",
                    queue=self._settings.queue,
                    error=trouble,
                    retry_in_s=round(pause, 2),
                )
            stop.wait(pause)

    def _auth_failed(self, exc: CmqError) -> None:
        """CMQ refused the keys (4100) or there are none: the intake waits, polling with backoff
        (each poll is the probe), and says so once."""
        self._obs.auth_failed("credentials" if exc.code == 0 else "cmq", str(exc))
        keys = self._keys
        where = f" (provider {keys.provider}: {keys.hint})" if keys is not None else ""
        # A clock off by minutes is refused like bad keys (CMQ checks the Timestamp): say so.
        note = clock.skew_note(self._settings.endpoint, "CMQ") if exc.code else ""
        where = f" ({note})" if note else where
        what = "CMQ refused asrd's keys" if exc.code else "no usable keys for CMQ"
        self._outage.pause(self.SOURCE, f"{what}: {exc}{where}")

    def close(self) -> None:
        for client in self._clients:
            client.close()
