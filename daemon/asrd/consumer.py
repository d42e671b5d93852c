"""The Pulsar transport: subscribe, receive with a bounded number in flight, acknowledge, and
publish retry-letter and dead-letter copies; ``settle`` and ``worker`` decide which.

A ``receive(timeout)`` loop on the main thread (never a message listener, whose exceptions the
client swallows) feeds a worker pool; a semaphore caps messages in flight, so a slow sink
slows consumption instead of growing memory.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from typing import Any

import pulsar
import structlog

from . import broker, pulsar_check
from .broker import ATTEMPTS, ORIGIN_MESSAGE_ID, REAL_TOPIC, REASON, Inbound
from .config import PulsarSettings

log = structlog.get_logger("asrd.consumer")

# The property names tools read from dead letters are re-exported.
__all__ = ["ATTEMPTS", "ORIGIN_MESSAGE_ID", "REAL_TOPIC", "REASON", "Consumer", "Health", "Inbound"]


@dataclass
class Health:
    """What the daemon reports about itself; written by the consumer, read by probes."""

    subscribed: bool = False
    connected: bool = False
    last_tick: float = 0.0  # monotonic time of the receive loop's latest turn

    @property
    def ready(self) -> bool:
        return self.subscribed and self.connected


def consumer_name() -> str:
    """How the broker's statistics name this process's consumer (host and pid), so that a
    consumer that receives nothing can be traced to its process and worker."""
    return f"asrd-{socket.gethostname()}-{os.getpid()}"


def _release(slots: threading.Semaphore, n: int, _: object = None) -> None:
    for _i in range(n):
        slots.release()


class Consumer:
    def __init__(
        self,
        settings: PulsarSettings,
        client: pulsar.Client | None = None,
        on_ready: Callable[[], object] | None = None,
        on_receive_error: Callable[[str], object] = lambda error: None,
        paused: Callable[[], bool] = lambda: False,
    ) -> None:
        self._settings = settings
        self._client = client or broker.make_client(settings)
        self._owns_client = client is None
        self._on_ready = on_ready
        self._on_receive_error = on_receive_error
        self._paused = paused  # an outage: receive nothing until it is over
        self.health = Health()
        self._consumer: Any = None
        self._dlq: Any = None
        self._retry: Any = None

    # -- connection ---------------------------------------------------------------------
    def _subscribe(self, stop: threading.Event) -> bool:
        delay = 0.5
        s = self._settings
        while not stop.is_set():
            try:
                # Retries wait on the retry-letter topic (deliver_after), owned by the broker.
                self._consumer = self._client.subscribe(
                    [s.topic, s.retry_letter_topic],
                    s.subscription,
                    consumer_type=pulsar.ConsumerType.Shared,
                    # Only matters when this call creates the subscription: then start with the
                    # oldest message, so callbacks published before the first start are kept.
                    initial_position=pulsar.InitialPosition.Earliest,
                    receiver_queue_size=s.receiver_queue_size,
                    negative_ack_redelivery_delay_ms=s.nack_delay_ms,
                    consumer_name=consumer_name(),
                )
                # Batching off: delayed delivery needs it, and one send is one message.
                self._dlq, self._retry = (
                    self._client.create_producer(
                        topic, batching_enabled=False, send_timeout_millis=10_000
                    )
                    for topic in (s.dlq_topic, s.retry_letter_topic)
                )
                self._keep_dead_letters()
            except pulsar.PulsarException as exc:
                # e.g. a TDMQ topic, retry or DLQ topic not created yet, or no permission on it;
                # a refused token or certificate only shows as a timeout, so it is asked again.
                cause = pulsar_check.connection_problem(s, broker.current_token(s))
                if not cause and isinstance(exc, pulsar.Timeout):
                    # What a subscription missing on a partitioned topic looks like.
                    cause = "no answer: asrd check --connect names a missing subscription"
                log.warning(
                    "subscribe failed, retrying",
                    error=str(exc),
                    **({"cause": cause} if cause else {}),
                    retry_in_s=delay,
                )
                self._close_handles()  # a half-made subscription must not linger as a consumer
                stop.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            self.health.subscribed = self.health.connected = True
            if self._on_ready is not None:
                self._on_ready()
            log.info(
                "subscribed",
                topic=s.topic,
                subscription=s.subscription,
                dead_letter_topic=s.dlq_topic,
            )
            return True
        return False

    def _keep_dead_letters(self) -> None:
        """Make sure the dead-letter topic has a durable subscription (the one ``asrd dlq``
        reads) before anything is parked there. Pulsar keeps a topic's messages only for its
        subscriptions unless the namespace sets retention: without one, dead letters go at the
        broker's next ledger roll-over (a restart is enough)."""
        s = self._settings
        try:
            # Shared, so workers starting together do not refuse each other (ConsumerBusy, which
            # the client would log); ``asrd dlq`` reads it exclusively once they are gone.
            self._client.subscribe(
                s.dlq_topic,
                f"{s.subscription}-dlq",
                consumer_type=pulsar.ConsumerType.Shared,
                initial_position=pulsar.InitialPosition.Earliest,
            ).close()
        except pulsar.ConsumerBusy:
            pass  # ``asrd dlq`` or another worker holds it: it exists
        except pulsar.PulsarException as exc:
            # Not allowed to consume there (TDMQ roles): it must be created by hand.
            log.warning(
                "cannot create the dead-letter topic's subscription; create it, or dead letters "
                "may be dropped by the broker",
                topic=s.dlq_topic,
                subscription=f"{s.subscription}-dlq",
                error=str(exc),
            )

    # -- main loop ----------------------------------------------------------------------
    def run(
        self,
        stop: threading.Event,
        process: Callable[[list[Inbound]], None],
    ) -> None:
        """Hand every message to ``process`` on a worker thread until ``stop`` is set, then
        drain within the shutdown deadline. ``process`` settles each message through ``ack``,
        ``retry`` or ``dead_letter``. Messages already waiting in the client's queue go with
        the one received, up to ``[pulsar] batch_size`` per call (never waiting for more: a
        lone message is a batch of one, not delayed)."""
        if not self._subscribe(stop):
            self.close()
            return
        slots = threading.Semaphore(self._settings.max_in_flight)
        pool = ThreadPoolExecutor(self._settings.concurrency, thread_name_prefix="asrd-worker")
        retry_topic = self._settings.retry_letter_topic
        batch_size = self._settings.batch_size
        last_health = 0.0
        try:
            while not stop.is_set():
                now = self.health.last_tick = time.monotonic()
                if now - last_health > 1.0:
                    self.health.connected = bool(self._consumer.is_connected())
                    last_health = now
                if self._paused():
                    stop.wait(0.2)
                    continue
                if not slots.acquire(timeout=0.2):
                    continue
                try:
                    msg = self._consumer.receive(timeout_millis=200)
                except pulsar.PulsarException as exc:
                    slots.release()
                    if not isinstance(exc, pulsar.Timeout):
                        self._on_receive_error(str(exc))
                        stop.wait(0.5)
                    continue
                batch = [broker.inbound(msg, retry_topic), *self._more(slots, batch_size - 1)]
                fut = pool.submit(process, batch)
                fut.add_done_callback(partial(_release, slots, len(batch)))
        finally:
            self._drain(pool, slots)

    def _more(self, slots: threading.Semaphore, up_to: int) -> list[Inbound]:
        """Messages the client has already prefetched, up to ``up_to`` and the free slots."""
        more: list[Inbound] = []
        while len(more) < up_to and slots.acquire(blocking=False):
            try:
                msg = self._consumer.receive(timeout_millis=0)
            except pulsar.PulsarException:  # nothing waiting (Timeout), or a broken receive
                slots.release()
                break
            more.append(broker.inbound(msg, self._settings.retry_letter_topic))
        return more

    def _drain(self, pool: ThreadPoolExecutor, slots: threading.Semaphore) -> None:
        """Wait for in-flight messages: they are done when every slot is free again."""
        deadline = time.monotonic() + self._settings.shutdown_deadline_s
        unfinished = self._settings.max_in_flight
        log.info("stopping: draining in-flight messages")
        while unfinished and slots.acquire(timeout=max(deadline - time.monotonic(), 0.001)):
            unfinished -= 1
        pool.shutdown(wait=False, cancel_futures=True)
        if unfinished:
            # Never acknowledged, so the broker redelivers them (to us after a restart or to a
            # peer).
            log.warning("shutdown deadline passed with messages unfinished", unfinished=unfinished)
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

    # -- settling one message -------------------------------------------------------------
    def ack(self, m: Inbound) -> None:
        self._consumer.acknowledge(m.handle)

    def retry(self, m: Inbound, attempt: int, delay_s: float) -> str:
        """Park a copy on the retry-letter topic for ``delay_s`` and acknowledge the original.
        Returns ``""``, or why the copy could not be published (then the message is negatively
        acknowledged: the client's fixed-delay redelivery, and the broker keeps it)."""
        props = {broker.RECONSUMETIMES: str(attempt), broker.DELAY_TIME: str(int(delay_s * 1000))}
        return self._publish(self._retry, m, props, timedelta(seconds=delay_s))

    def release(self, m: Inbound) -> None:
        """Put the message back unacknowledged: the broker redelivers it after the negative
        acknowledgement delay (an outage: nothing is published, nothing counted)."""
        self._consumer.negative_acknowledge(m.handle)

    def dead_letter(self, m: Inbound, reason: str, attempts: int) -> str:
        """Publish to the dead-letter topic with the reason, then acknowledge; as ``retry``."""
        return self._publish(self._dlq, m, {REASON: reason[:1000], ATTEMPTS: str(attempts)}, None)

    def _publish(
        self, producer: Any, m: Inbound, extra: dict[str, str], after: timedelta | None
    ) -> str:
        props = broker.letter_properties(m, extra)
        try:
            producer.send(m.data, properties=props, **({"deliver_after": after} if after else {}))
        except pulsar.PulsarException as exc:
            self._consumer.negative_acknowledge(m.handle)
            return str(exc)
        self._consumer.acknowledge(m.handle)
        return ""
