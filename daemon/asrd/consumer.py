"""The subscription: receive with a bounded number in flight, hand each message to the pipeline,
then acknowledge, negatively acknowledge, or dead-letter it according to the verdict.

A ``receive(timeout)`` loop on the main thread (never a message listener, whose exceptions the
client swallows) feeds a worker pool; a semaphore caps messages in flight, so a slow sink
slows consumption instead of growing memory.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import Any

import pulsar
import structlog

from .config import PulsarSettings
from .ledger import Ledger
from .observability import Counters, pulsar_logger
from .pipeline import Outcome, Verdict

log = structlog.get_logger("asrd.consumer")

# Properties on dead letters; ORIGIN_MESSAGE_ID and REAL_TOPIC mirror the Java client's DLQ.
REASON = "ASRD_DLQ_REASON"
ATTEMPTS = "ASRD_ATTEMPTS"
ORIGIN_MESSAGE_ID = "ORIGIN_MESSAGE_ID"
REAL_TOPIC = "REAL_TOPIC"

Handler = Callable[[bytes], Verdict]


def make_client(settings: PulsarSettings) -> pulsar.Client:
    auth = None
    if settings.token is not None and settings.token.get_secret_value():
        token = settings.token.get_secret_value()
        auth = pulsar.AuthenticationToken(token)
    return pulsar.Client(
        settings.service_url,
        authentication=auth,
        operation_timeout_seconds=30,
        logger=pulsar_logger(),
    )


@dataclass
class Health:
    """What the daemon reports about itself; written by the consumer, read by probes."""

    subscribed: bool = False
    connected: bool = False

    @property
    def ready(self) -> bool:
        return self.subscribed and self.connected


class Consumer:
    def __init__(
        self,
        settings: PulsarSettings,
        handle: Handler,
        ledger: Ledger,
        counters: Counters,
        client: pulsar.Client | None = None,
    ) -> None:
        self._settings = settings
        self._handle = handle
        self._ledger = ledger
        self._counters = counters
        self._client = client or make_client(settings)
        self._owns_client = client is None
        self.health = Health()
        self._consumer: Any = None
        self._dlq: Any = None

    # -- connection ---------------------------------------------------------------------
    def _subscribe(self, stop: threading.Event) -> bool:
        delay = 0.5
        while not stop.is_set():
            try:
                self._consumer = self._client.subscribe(
                    self._settings.topic,
                    self._settings.subscription,
                    consumer_type=pulsar.ConsumerType.Shared,
                    receiver_queue_size=self._settings.receiver_queue_size,
                    negative_ack_redelivery_delay_ms=self._settings.nack_delay_ms,
                )
                self._dlq = self._client.create_producer(
                    self._settings.dlq_topic,
                    batching_enabled=False,
                    send_timeout_millis=10_000,
                )
            except pulsar.PulsarException as exc:
                log.warning("subscribe failed, retrying", error=str(exc), retry_in_s=delay)
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            self.health.subscribed = self.health.connected = True
            log.info(
                "subscribed",
                topic=self._settings.topic,
                subscription=self._settings.subscription,
                dead_letter_topic=self._settings.dlq_topic,
            )
            return True
        return False

    # -- main loop ----------------------------------------------------------------------
    def run(self, stop: threading.Event) -> None:
        """Consume until ``stop`` is set, then drain within the shutdown deadline."""
        if not self._subscribe(stop):
            self.close()
            return
        slots = threading.BoundedSemaphore(self._settings.max_in_flight)
        in_flight: set[Future[None]] = set()
        lock = threading.Lock()
        pool = ThreadPoolExecutor(self._settings.concurrency, thread_name_prefix="asrd-worker")

        def done(fut: Future[None]) -> None:
            with lock:
                in_flight.discard(fut)
            slots.release()

        last_health = 0.0
        try:
            while not stop.is_set():
                now = time.monotonic()
                if now - last_health > 1.0:
                    self.health.connected = bool(self._consumer.is_connected())
                    last_health = now
                if not slots.acquire(timeout=0.2):
                    continue
                try:
                    msg = self._consumer.receive(timeout_millis=200)
                except pulsar.Timeout:
                    slots.release()
                    continue
                except pulsar.PulsarException as exc:
                    slots.release()
                    log.warning("receive failed", error=str(exc))
                    stop.wait(0.5)
                    continue
                fut = pool.submit(self._process, msg)
                with lock:
                    in_flight.add(fut)
                fut.add_done_callback(done)
        finally:
            self._drain(pool, in_flight, lock)

    def _drain(
        self, pool: ThreadPoolExecutor, in_flight: set[Future[None]], lock: threading.Lock
    ) -> None:
        with lock:
            pending = set(in_flight)
        log.info("stopping: draining in-flight messages", in_flight=len(pending))
        _, not_done = wait(pending, timeout=self._settings.shutdown_deadline_s)
        pool.shutdown(wait=False, cancel_futures=True)
        if not_done:
            # Never acknowledged, so the broker redelivers them (to us after restart or to a peer).
            log.warning(
                "shutdown deadline passed with messages unfinished", unfinished=len(not_done)
            )
        self.close()

    def close(self) -> None:
        self.health.subscribed = self.health.connected = False
        for closable in (self._consumer, self._dlq):
            if closable is not None:
                try:
                    closable.close()  # flushes queued acknowledgements
                except pulsar.PulsarException as exc:
                    log.warning("close failed", error=str(exc))
        self._consumer = self._dlq = None
        if self._owns_client:
            self._client.close()

    # -- one message ----------------------------------------------------------------------
    def _process(self, msg: Any) -> None:
        message_key = f"{self._settings.topic}|{msg.message_id()}"
        try:
            verdict = self._handle(msg.data())
        except Exception as exc:
            log.exception("pipeline error", message_id=str(msg.message_id()))
            verdict = Verdict(Outcome.RETRY, f"internal error: {type(exc).__name__}: {exc}")
        self._settle(msg, message_key, verdict)

    def _settle(self, msg: Any, message_key: str, verdict: Verdict) -> None:
        self._counters.inc(f"messages.{verdict.outcome.value}")
        fields = {"message_id": str(msg.message_id()), "job_id": verdict.job_id or None}
        if verdict.outcome in (Outcome.DONE, Outcome.IGNORED):
            self._consumer.acknowledge(msg)
            if msg.redelivery_count() > 0:
                self._ledger.clear_attempts(message_key)
            log.info("message " + verdict.outcome.value, reason=verdict.reason or None, **fields)
            return
        attempts = 1
        if verdict.outcome is Outcome.RETRY:
            attempts = self._ledger.add_attempt(message_key, verdict.reason)
            if attempts < self._settings.max_attempts:
                log.warning(
                    "message will be retried", reason=verdict.reason, attempt=attempts, **fields
                )
                self._consumer.negative_acknowledge(msg)
                return
            verdict = Verdict(
                Outcome.DEAD, f"gave up after {attempts} attempts: {verdict.reason}", verdict.job_id
            )
        self._dead_letter(msg, message_key, verdict, attempts, fields)

    def _dead_letter(
        self, msg: Any, message_key: str, verdict: Verdict, attempts: int, fields: dict[str, Any]
    ) -> None:
        props = dict(msg.properties())
        props.update(
            {
                REASON: verdict.reason[:1000],
                ATTEMPTS: str(attempts),
                ORIGIN_MESSAGE_ID: str(msg.message_id()),
                REAL_TOPIC: msg.topic_name(),
            }
        )
        try:
            self._dlq.send(msg.data(), properties=props)
        except pulsar.PulsarException as exc:
            # Not parked, so not acknowledged: the broker keeps it and we try again later.
            log.error("dead-letter publish failed; message kept", error=str(exc), **fields)
            self._consumer.negative_acknowledge(msg)
            return
        self._consumer.acknowledge(msg)
        self._ledger.clear_attempts(message_key)
        self._counters.inc("messages.dead_lettered")
        log.error("message dead-lettered", reason=verdict.reason, attempts=attempts, **fields)
