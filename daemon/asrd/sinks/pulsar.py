"""Pulsar sink: the record as JSON on a topic, keyed by job id, sent synchronously.

A send returns only once the broker has persisted the message. Consumers downstream dedupe on
the ``job_id`` property (asrd delivers at least once).
"""

from __future__ import annotations

from typing import Any

import pulsar

from ..config import PulsarSinkSettings, Settings
from ..formats import to_json
from ..observability import pulsar_logger
from ..result import ResultRecord
from .base import SinkError


class PulsarSink:
    def __init__(self, settings: PulsarSinkSettings, default_url: str, default_token: str) -> None:
        self.name = settings.name
        self.topic = settings.topic
        token = settings.token.get_secret_value() if settings.token else default_token
        self._client = pulsar.Client(
            settings.service_url or default_url,
            authentication=pulsar.AuthenticationToken(token) if token else None,
            operation_timeout_seconds=30,
            logger=pulsar_logger(),
        )
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
        body = to_json(record)
        props = {"job_id": record.job_id, "state": record.state, "schema_version": "1"}
        try:
            self._ensure_producer().send(body, properties=props, partition_key=record.job_id)
        except pulsar.MessageTooBig:
            raise SinkError(f"{self.topic}: record of {len(body)} bytes is too big", True) from None
        except pulsar.PulsarException as exc:
            raise SinkError(f"{self.topic}: {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        if self._producer is not None:
            self._producer.close()
        self._client.close()


def build(settings: PulsarSinkSettings, shared: Settings) -> PulsarSink:
    """The ``asrd.sinks`` entry point for ``type = "pulsar"``: empty connection keys reuse
    ``[pulsar]``'s."""
    token = shared.pulsar.token.get_secret_value() if shared.pulsar.token else ""
    return PulsarSink(settings, shared.pulsar.service_url, token)
