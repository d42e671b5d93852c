"""Pulsar sink: the record as JSON on a topic, keyed by job id.

A delivery returns only once the broker has persisted the message; a batch is sent
asynchronously and flushed once. Consumers downstream dedupe on the ``job_id`` property (asrd
delivers at least once).
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Sequence
from functools import partial
from typing import Any

import pulsar

from ..broker import make_client
from ..config import PulsarSettings, PulsarSinkSettings, Settings
from ..formats import to_json
from ..result import ResultRecord
from .base import SinkError


class PulsarSink:
    def __init__(self, settings: PulsarSinkSettings, shared: PulsarSettings) -> None:
        self.name = settings.name
        self.topic = settings.topic
        own = settings.token is not None or settings.token_file is not None
        self._client = make_client(shared, settings.service_url, settings if own else None)
        self._timeout_ms = settings.send_timeout_ms
        self._producer: Any = None

    def _ensure_producer(self) -> Any:
        # Created on first use, so a sink whose topic is briefly unavailable does not stop start-up.
        if self._producer is None:
            self._producer = self._client.create_producer(
                self.topic, batching_enabled=False, send_timeout_millis=self._timeout_ms
            )
        return self._producer

    def deliver(self, record: ResultRecord) -> None:
        failed = self.deliver_many([record])
        if failed:
            raise failed[record.job_id]

    def deliver_many(self, records: Sequence[ResultRecord]) -> dict[str, SinkError]:
        """Send every record without waiting, flush once, then wait for each send's answer."""
        done = threading.Semaphore(0)
        results: dict[str, Any] = {}

        def sent(job_id: str, result: Any, _msg_id: Any) -> None:
            results[job_id] = result
            done.release()

        failed: dict[str, SinkError] = {}
        sizes: dict[str, int] = {}
        try:
            producer = self._ensure_producer()
        except pulsar.PulsarException as exc:
            error = SinkError(f"{self.topic}: {type(exc).__name__}: {exc}")
            return {r.job_id: error for r in records}
        waiting = 0
        for record in records:
            body = to_json(record)
            sizes[record.job_id] = len(body)
            props = {"job_id": record.job_id, "state": record.state, "schema_version": "1"}
            try:
                producer.send_async(
                    body,
                    partial(sent, record.job_id),
                    properties=props,
                    partition_key=record.job_id,
                )
            except pulsar.PulsarException as exc:
                failed[record.job_id] = self._error(record.job_id, exc, len(body))
                continue
            waiting += 1
        with contextlib.suppress(pulsar.PulsarException):  # each send's own answer says
            producer.flush()
        for _ in range(waiting):
            # The send timeout bounds every answer; the margin covers the callback thread.
            if not done.acquire(timeout=self._timeout_ms / 1000 + 30):
                break
        for record in records:
            if record.job_id in failed:
                continue
            result = results.get(record.job_id)
            if result is None:
                failed[record.job_id] = SinkError(f"{self.topic}: no answer to the send")
            elif result != pulsar.Result.Ok:
                failed[record.job_id] = self._error(record.job_id, result, sizes[record.job_id])
        return failed

    def _error(self, job_id: str, problem: object, size: int) -> SinkError:
        if isinstance(problem, pulsar.MessageTooBig) or problem == pulsar.Result.MessageTooBig:
            return SinkError(f"{self.topic}: record of {size} bytes is too big", True)
        name = type(problem).__name__ if isinstance(problem, Exception) else str(problem)
        return SinkError(f"{self.topic}: {name}: {problem}")

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
        self._client.close()


def build(settings: PulsarSinkSettings, shared: Settings) -> PulsarSink:
    """The ``asrd.sinks`` entry point for ``type = "pulsar"``: empty connection keys reuse
    ``[pulsar]``'s; the TLS settings are always ``[pulsar]``'s."""
    return PulsarSink(settings, shared.pulsar)
