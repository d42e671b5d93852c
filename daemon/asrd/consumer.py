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
from datetime import timedelta
from typing import Any

import pulsar
import structlog

from . import backoff
from .config import PulsarSettings
from .ledger import Attempt, Ledger
from .observability import Counters, pulsar_logger
from .pipeline import Outcome, Verdict

log = structlog.get_logger("asrd.consumer")

# Message properties. ORIGIN_MESSAGE_ID, REAL_TOPIC, RECONSUMETIMES and DELAY_TIME mirror the Java
# client's retry-letter and dead-letter conventions, which TDMQ documents.
REASON = "ASRD_DLQ_REASON"
ATTEMPTS = "ASRD_ATTEMPTS"
ORIGIN_MESSAGE_ID = "ORIGIN_MESSAGE_ID"
REAL_TOPIC = "REAL_TOPIC"
RECONSUMETIMES = "RECONSUMETIMES"
DELAY_TIME = "DELAY_TIME"
INTERNAL_PROPERTIES = (REASON, ATTEMPTS, ORIGIN_MESSAGE_ID, REAL_TOPIC, RECONSUMETIMES, DELAY_TIME)

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
    last_tick: float = 0.0  # monotonic time of the receive loop's latest turn

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
        on_ready: Callable[[], object] | None = None,
    ) -> None:
        self._on_ready = on_ready
        self._settings = settings
        self._handle = handle
        self._ledger = ledger
        self._counters = counters
        self._client = client or make_client(settings)
        self._owns_client = client is None
        self.health = Health()
        self._consumer: Any = None
        self._dlq: Any = None
        self._retry: Any = None

    # -- connection ---------------------------------------------------------------------
    def _subscribe(self, stop: threading.Event) -> bool:
        delay = 0.5
        while not stop.is_set():
            try:
                # Retries wait on the retry-letter topic (deliver_after), owned by the broker.
                topics = [self._settings.topic, self._settings.retry_letter_topic]
                self._consumer = self._client.subscribe(
                    topics,
                    self._settings.subscription,
                    consumer_type=pulsar.ConsumerType.Shared,
                    # Only matters when this call creates the subscription: then start with the
                    # oldest message, so callbacks published before the first start are kept.
                    initial_position=pulsar.InitialPosition.Earliest,
                    receiver_queue_size=self._settings.receiver_queue_size,
                    negative_ack_redelivery_delay_ms=self._settings.nack_delay_ms,
                )
                self._dlq = self._producer(self._settings.dlq_topic)
                self._retry = self._producer(self._settings.retry_letter_topic)
            except pulsar.PulsarException as exc:
                # e.g. a TDMQ topic, retry or DLQ topic not created yet, or no permission on it
                log.warning("subscribe failed, retrying", error=str(exc), retry_in_s=delay)
                self._close_handles()  # a half-made subscription must not linger as a consumer
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            self.health.subscribed = self.health.connected = True
            if self._on_ready is not None:
                self._on_ready()
            log.info(
                "subscribed",
                topic=self._settings.topic,
                subscription=self._settings.subscription,
                dead_letter_topic=self._settings.dlq_topic,
            )
            return True
        return False

    def _producer(self, topic: str) -> Any:
        # Batching off: delayed delivery needs it, and a result of one send is one message.
        return self._client.create_producer(
            topic, batching_enabled=False, send_timeout_millis=10_000
        )

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
                now = self.health.last_tick = time.monotonic()
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

    def _close_handles(self) -> None:
        for closable in (self._consumer, self._dlq, self._retry):
            if closable is not None:
                try:
                    closable.close()  # the consumer's close flushes queued acknowledgements
                except pulsar.PulsarException as exc:
                    log.warning("close failed", error=str(exc))
        self._consumer = self._dlq = self._retry = None

    def close(self) -> None:
        self.health.subscribed = self.health.connected = False
        self._close_handles()
        if self._owns_client:
            self._client.close()

    # -- one message ----------------------------------------------------------------------
    def _process(self, msg: Any) -> None:
        origin_topic, origin_id = msg.topic_name(), str(msg.message_id())
        if self._is_retry(origin_topic):
            # Only our own retry copies say where they came from; anyone can set properties.
            props = msg.properties()
            origin_topic = props.get(REAL_TOPIC) or origin_topic
            origin_id = props.get(ORIGIN_MESSAGE_ID) or origin_id
        key = f"{origin_topic}|{origin_id}"
        attempt = self._ledger.begin_attempt(key)
        fields = {"message_id": origin_id, "attempt": attempt.count}
        if attempt.count > self._settings.max_attempts:
            # Processing started this often without settling: the process died on it each time.
            reason = attempt.last_reason or "processing never finished (the daemon died on it)"
            verdict = Verdict(Outcome.DEAD, f"gave up after {attempt.count - 1} attempts: {reason}")
        else:
            try:
                verdict = self._handle(msg.data())
            except Exception as exc:  # a bug must not kill the worker or lose the message
                log.exception("pipeline error", **fields)
                verdict = Verdict(Outcome.RETRY, f"internal error: {type(exc).__name__}: {exc}")
        self._counters.inc(f"messages.{verdict.outcome.value}")
        fields["job_id"] = verdict.job_id or None
        origin = (origin_topic, origin_id)
        if verdict.outcome is Outcome.IGNORED and self._settings.foreign_messages == "dead-letter":
            verdict = Verdict(Outcome.DEAD, verdict.reason, verdict.job_id)
        if verdict.outcome is Outcome.RETRY:
            self._retry_later(msg, key, attempt, verdict, origin, fields)
        elif verdict.outcome is Outcome.DEAD:
            self._dead_letter(msg, key, attempt.count, verdict, origin, fields)
        else:
            self._consumer.acknowledge(msg)
            self._ledger.clear_attempts(key)
            log.info(f"message {verdict.outcome.value}", reason=verdict.reason or None, **fields)

    def _is_retry(self, topic: str) -> bool:
        retry = self._settings.retry_letter_topic
        return topic == retry or topic == f"persistent://{retry}" or topic.endswith("/" + retry)

    def _retry_later(
        self,
        msg: Any,
        key: str,
        attempt: Attempt,
        verdict: Verdict,
        origin: tuple[str, str],
        fields: dict[str, Any],
    ) -> None:
        s = self._settings
        age = time.time() - attempt.first_at
        if attempt.count >= s.max_attempts or age > s.retry_window_s:
            reason = f"gave up after {attempt.count} attempts in {age:.0f}s: {verdict.reason}"
            self._dead_letter(
                msg, key, attempt.count, Verdict(Outcome.DEAD, reason), origin, fields
            )
            return
        self._ledger.note_failure(key, verdict.reason)
        wait_s = backoff.delay(attempt.count, s.retry_base_s, s.retry_max_s)
        props = self._carry(msg, origin)
        props.update({RECONSUMETIMES: str(attempt.count), DELAY_TIME: str(int(wait_s * 1000))})
        try:
            self._retry.send(msg.data(), properties=props, deliver_after=timedelta(seconds=wait_s))
        except pulsar.PulsarException as exc:
            # Fall back to the client's fixed-delay redelivery; the message stays with the broker.
            log.warning("retry publish failed; negative ack instead", error=str(exc), **fields)
            self._consumer.negative_acknowledge(msg)
            return
        self._consumer.acknowledge(msg)
        self._counters.inc("messages.retried")
        log.warning(
            "message will be retried", reason=verdict.reason, retry_in_s=round(wait_s, 2), **fields
        )

    def _dead_letter(
        self,
        msg: Any,
        key: str,
        attempts: int,
        verdict: Verdict,
        origin: tuple[str, str],
        fields: dict[str, Any],
    ) -> None:
        props = self._carry(msg, origin)
        props.update({REASON: verdict.reason[:1000], ATTEMPTS: str(attempts)})
        try:
            self._dlq.send(msg.data(), properties=props)
        except pulsar.PulsarException as exc:
            # Not parked, so not acknowledged: the broker keeps it and it comes back.
            log.error("dead-letter publish failed; message kept", error=str(exc), **fields)
            self._consumer.negative_acknowledge(msg)
            return
        self._consumer.acknowledge(msg)
        self._ledger.clear_attempts(key)
        self._counters.inc("messages.dead_lettered")
        log.error("message dead-lettered", reason=verdict.reason, **fields)

    @staticmethod
    def _carry(msg: Any, origin: tuple[str, str]) -> dict[str, str]:
        """The message's own properties plus where it first came from."""
        props = {k: v for k, v in msg.properties().items() if k not in INTERNAL_PROPERTIES}
        props.update({REAL_TOPIC: origin[0], ORIGIN_MESSAGE_ID: origin[1]})
        return props
