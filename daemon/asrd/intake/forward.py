"""Produce callback bodies onto the daemon's Pulsar topic and wait until the broker has them.

A send counts only when the broker acknowledged it (persisted): only then may the intake delete
the message from CMQ or answer 2xx to an HTTP callback.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pulsar

__all__ = ["ForwardError", "Forwarder", "Outgoing"]


class ForwardError(Exception):
    """The broker did not take the message (not connected, timeout, topic refused)."""


@dataclass(frozen=True)
class Outgoing:
    body: bytes
    properties: Mapping[str, str]


class Forwarder:
    """One producer on ``topic``, made on first use (and again after it failed to be made)."""

    def __init__(self, client: pulsar.Client, topic: str, send_timeout_ms: int = 30_000) -> None:
        self._client = client
        self._topic = topic
        self._send_timeout_ms = send_timeout_ms
        self._lock = threading.Lock()
        self._producer: Any = None

    @property
    def topic(self) -> str:
        return self._topic

    def _get_producer(self) -> Any:
        with self._lock:
            if self._producer is None:
                try:
                    # Batching off: a message is one callback, and retry/DLQ copies stay 1:1.
                    self._producer = self._client.create_producer(
                        self._topic,
                        batching_enabled=False,
                        send_timeout_millis=self._send_timeout_ms,
                        block_if_queue_full=True,
                    )
                except pulsar.PulsarException as exc:
                    raise ForwardError(f"cannot produce to {self._topic}: {exc}") from None
            return self._producer

    def send(self, message: Outgoing) -> None:
        """Blocking: returns once persisted, else raises ``ForwardError``."""
        failed = self.send_all([message])[0]
        if failed is not None:
            raise ForwardError(failed)

    def send_all(self, messages: Sequence[Outgoing]) -> list[str | None]:
        """Send all at once and wait for each; ``None`` where persisted, else the reason."""
        producer = self._get_producer()
        results: list[str | None] = ["not sent"] * len(messages)
        pending = threading.Semaphore(0)

        def sent(index: int) -> Any:
            def callback(res: Any, _msg_id: Any) -> None:
                results[index] = None if res == pulsar.Result.Ok else f"broker answered {res}"
                pending.release()

            return callback

        started = 0
        for i, msg in enumerate(messages):
            try:
                producer.send_async(msg.body, sent(i), properties=dict(msg.properties))
            except pulsar.PulsarException as exc:
                results[i] = f"send failed: {exc}"
                continue
            started += 1
        # Every started send calls back: with the broker's answer or at the send timeout.
        deadline = self._send_timeout_ms / 1000 + 5
        for _ in range(started):
            if not pending.acquire(timeout=deadline):
                break
        return results

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                # Closing anyway; unsent messages were not confirmed to anyone.
                with contextlib.suppress(pulsar.PulsarException):
                    self._producer.close()
                self._producer = None
