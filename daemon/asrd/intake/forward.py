"""Produce callback bodies onto the daemon's Pulsar topic and wait until the broker has them.

A send counts only when the broker acknowledged it (persisted): only then may the intake delete
the message from CMQ or answer 2xx to an HTTP callback.

Every send is started from one thread of the forwarder's own, whichever thread asks: the native
Pulsar client keeps memory for each thread that calls ``send_async`` (about 2.5 MB each once it
has sent some thousands of messages, measured with pulsar-client 3.13), so the CMQ intake's
receive loops and the URL intake's request threads calling it directly made the process grow
with the number of callers (docs/soak.md).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulsar

from ..observers import Observers

__all__ = ["ForwardError", "Forwarder", "Outgoing"]


class ForwardError(Exception):
    """The broker did not take the message (not connected, timeout, topic refused)."""


@dataclass(frozen=True)
class Outgoing:
    body: bytes
    properties: dict[str, str]  # observers may add theirs (tracing's trace context)


class _Batch:
    """One ``send_all``: its messages, a result per message, and one release per message (when
    the broker answers, or at once when the send could not start)."""

    def __init__(self, producer: Any, messages: Sequence[Outgoing], unconfirmed: str) -> None:
        self.producer = producer
        self.messages = messages
        self.results: list[str | None] = [unconfirmed] * len(messages)
        self.pending = threading.Semaphore(0)

    def _callback(self, index: int) -> Any:
        def callback(res: Any, _msg_id: Any) -> None:
            self.results[index] = None if res == pulsar.Result.Ok else f"broker answered {res}"
            self.pending.release()

        return callback

    def fail(self, reason: str) -> None:
        for i in range(len(self.messages)):
            self.results[i] = reason
            self.pending.release()

    def start(self) -> None:
        for i, msg in enumerate(self.messages):
            try:
                self.producer.send_async(
                    msg.body, self._callback(i), properties=dict(msg.properties)
                )
            except Exception as exc:  # noqa: BLE001 - the sending thread must outlive any message
                self.results[i] = f"send failed: {exc}"
                self.pending.release()


class Forwarder:
    """One producer on ``topic``, made on first use (and again after it failed to be made).

    Every wait on the broker is bounded by the caller (``wait_s``): the producer is opened on a
    thread of its own, so a broker that accepts the connection but never answers costs the
    caller ``wait_s``, not the client's operation timeout. A send given up on may still be
    persisted later; the sender then sends again and the ledger absorbs the duplicate.
    """

    def __init__(self, client: pulsar.Client, topic: str, send_timeout_ms: int = 30_000) -> None:
        self._client = client
        self._topic = topic
        self._send_timeout_ms = send_timeout_ms
        self._lock = threading.Lock()
        self._producer: Any = None
        self._opening: threading.Thread | None = None
        self._open_error = ""
        self._closed = False
        # Batches for the sending thread; None tells it to end (close()).
        self._batches: queue.SimpleQueue[_Batch | None] = queue.SimpleQueue()
        self._sender: threading.Thread | None = None

    @property
    def topic(self) -> str:
        return self._topic

    @property
    def default_wait_s(self) -> float:
        # Every started send calls back by then: with the broker's answer or its send timeout.
        return self._send_timeout_ms / 1000 + 5

    def _open(self) -> None:
        try:
            # Batching off: a message is one callback, and retry/DLQ copies stay 1:1.
            producer = self._client.create_producer(
                self._topic,
                batching_enabled=False,
                send_timeout_millis=self._send_timeout_ms,
                block_if_queue_full=True,
            )
        except pulsar.PulsarException as exc:
            with self._lock:
                self._open_error = f"cannot produce to {self._topic}: {exc}"
            return
        with self._lock:
            if not self._closed:
                self._producer = producer
                return
        with contextlib.suppress(pulsar.PulsarException):
            producer.close()  # closed while it was being opened

    def _get_producer(self, wait_s: float) -> Any:
        with self._lock:
            if self._producer is not None:
                return self._producer
            if self._opening is None or not self._opening.is_alive():
                self._open_error = ""
                self._opening = threading.Thread(
                    target=self._open, name="asrd-open-producer", daemon=True
                )
                self._opening.start()
            opening = self._opening
        opening.join(max(0.0, wait_s))
        with self._lock:
            if self._producer is not None:
                return self._producer
            error = self._open_error
        raise ForwardError(
            error or f"the broker did not open a producer on {self._topic} within {wait_s:g}s"
        )

    def send(self, message: Outgoing, wait_s: float | None = None) -> None:
        """Blocking: returns once persisted, else raises ``ForwardError`` (at most ``wait_s``)."""
        failed = self.send_all([message], wait_s)[0]
        if failed is not None:
            raise ForwardError(failed)

    def forward(
        self,
        messages: Sequence[Outgoing],
        wait_s: float,
        observers: Observers,
        queue: str = "",
        received_s: float = 0.0,
    ) -> list[str | None]:
        """``send_all`` as both intakes put CI's notifications on the topic: ``observers`` hear
        of the messages first (tracing writes each job's trace context into their properties)
        and of the outcome after. ``queue``: the CMQ queue they come from ("" for the URL
        intake); ``received_s``: how long ago they were received. Raises ``ForwardError`` as
        ``send_all`` does."""
        observers.intake_forwarding(queue, self._topic, messages, received_s)
        failures: list[str | None] = ["not sent"] * len(messages)
        try:
            failures = self.send_all(messages, wait_s)
        except ForwardError as exc:
            failures = [str(exc)] * len(messages)
            raise
        finally:
            observers.intake_forwarded(queue, failures)
        return failures

    def send_all(
        self, messages: Sequence[Outgoing], wait_s: float | None = None
    ) -> list[str | None]:
        """Send all at once and wait for each, ``wait_s`` in all (default: until the send
        timeout); ``None`` where persisted, else the reason."""
        budget = self.default_wait_s if wait_s is None else wait_s
        deadline = time.monotonic() + budget
        producer = self._get_producer(budget)
        batch = _Batch(producer, messages, f"the broker did not confirm within {budget:g}s")
        self._submit(batch)
        for _ in messages:
            if not batch.pending.acquire(timeout=max(0.0, deadline - time.monotonic())):
                break
        # A callback may still come after we stop waiting; what we return is a snapshot.
        return list(batch.results)

    def _submit(self, batch: _Batch) -> None:
        with self._lock:
            if not self._closed:
                if self._sender is None or not self._sender.is_alive():
                    self._sender = threading.Thread(
                        target=self._send_batches, name="asrd-forward", daemon=True
                    )
                    self._sender.start()
                self._batches.put(batch)
                return
        batch.fail(f"the producer on {self._topic} is closed")

    def _send_batches(self) -> None:
        # send_async does not wait for the broker, so one thread starts every caller's sends
        # promptly (it blocks only while the producer's queue is full, as the callers would).
        while (batch := self._batches.get()) is not None:
            batch.start()

    def close(self) -> None:
        with self._lock:
            self._closed = True
            producer, self._producer = self._producer, None
            self._batches.put(None)
        if producer is not None:
            # Closing anyway; unsent messages were not confirmed to anyone.
            with contextlib.suppress(pulsar.PulsarException):
                producer.close()
