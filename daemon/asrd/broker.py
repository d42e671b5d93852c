"""What the consumer, the dead-letter tool and the intake share about the broker: the client
factory and the names of the properties asrd puts on the copies it publishes.

ORIGIN_MESSAGE_ID, REAL_TOPIC, RECONSUMETIMES and DELAY_TIME mirror the Java client's
retry-letter and dead-letter conventions, which TDMQ documents.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulsar

from .config import PulsarSettings
from .observability import pulsar_logger

REASON = "ASRD_DLQ_REASON"
ATTEMPTS = "ASRD_ATTEMPTS"
PUBLISHED_MS = "ASRD_PUBLISHED_MS"  # when the first copy reached the broker (latency metric)
ORIGIN_MESSAGE_ID = "ORIGIN_MESSAGE_ID"
REAL_TOPIC = "REAL_TOPIC"
RECONSUMETIMES = "RECONSUMETIMES"
DELAY_TIME = "DELAY_TIME"
INTERNAL_PROPERTIES = (
    REASON, ATTEMPTS, PUBLISHED_MS, ORIGIN_MESSAGE_ID, REAL_TOPIC, RECONSUMETIMES, DELAY_TIME
)  # fmt: skip


def make_client(settings: PulsarSettings) -> pulsar.Client:
    auth = None
    if settings.token is not None and settings.token.get_secret_value():
        auth = pulsar.AuthenticationToken(settings.token.get_secret_value())
    return pulsar.Client(
        settings.service_url,
        authentication=auth,
        operation_timeout_seconds=30,
        logger=pulsar_logger(),
    )


def own_properties(props: Mapping[str, str]) -> dict[str, str]:
    """A message's properties without the ones asrd itself manages."""
    return {k: v for k, v in props.items() if k not in INTERNAL_PROPERTIES}


@dataclass(frozen=True)
class Inbound:
    """A received message and where its first copy came from (retry copies say so)."""

    handle: Any  # the pulsar.Message, for acknowledgement
    data: bytes
    origin_topic: str
    origin_id: str
    published_ms: int

    @property
    def key(self) -> str:
        """Its identity across retry copies: the ledger counts attempts under this key."""
        return f"{self.origin_topic}|{self.origin_id}"


def inbound(msg: Any, retry_topic: str) -> Inbound:
    topic, msg_id, published = msg.topic_name(), str(msg.message_id()), msg.publish_timestamp()
    if topic == retry_topic or topic.endswith(("://" + retry_topic, "/" + retry_topic)):
        # Only our own retry copies say where they came from; anyone can set properties.
        props = msg.properties()
        topic = props.get(REAL_TOPIC) or topic
        msg_id = props.get(ORIGIN_MESSAGE_ID) or msg_id
        published = int(props.get(PUBLISHED_MS) or published)
    return Inbound(msg, msg.data(), topic, msg_id, int(published))


def letter_properties(m: Inbound, extra: Mapping[str, str]) -> dict[str, str]:
    """A retry or dead-letter copy's properties: the message's own, plus where and when its
    first copy came from, plus ``extra``."""
    props = own_properties(m.handle.properties())
    props.update({REAL_TOPIC: m.origin_topic, ORIGIN_MESSAGE_ID: m.origin_id})
    props.update({PUBLISHED_MS: str(m.published_ms), **extra})
    return props
