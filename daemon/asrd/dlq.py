"""The dead-letter topic for people: list what is parked there and replay it to the main topic.

Both use one durable subscription on the dead-letter topic (``<subscription>-dlq``, exclusive):
``list`` reads without acknowledging, so what it shows stays parked; ``replay`` republishes a
message to the main topic, without asrd's attempt bookkeeping, and only then acknowledges it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pulsar

from . import callback
from .broker import ATTEMPTS, ORIGIN_MESSAGE_ID, REASON, make_client, own_properties
from .config import PulsarSettings

REPLAYED = "ASRD_REPLAYED_FROM"


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    job_id: str
    reason: str
    attempts: str
    origin_message_id: str
    published_at: str
    size: int


def _job_id(body: bytes) -> str:
    try:
        return callback.parse(body).job_id or "-"
    except callback.BadMessage:
        return "-"


def _describe(msg: Any) -> DeadLetter:
    props = msg.properties()
    published = datetime.fromtimestamp(msg.publish_timestamp() / 1000, UTC)
    return DeadLetter(
        message_id=str(msg.message_id()),
        job_id=_job_id(msg.data()),
        reason=props.get(REASON, ""),
        attempts=props.get(ATTEMPTS, ""),
        origin_message_id=props.get(ORIGIN_MESSAGE_ID, ""),
        published_at=published.isoformat(timespec="seconds"),
        size=len(msg.data()),
    )


@contextmanager
def _parked(settings: PulsarSettings) -> Iterator[tuple[pulsar.Client, Any]]:
    client = make_client(settings)
    try:
        consumer = client.subscribe(
            settings.dlq_topic,
            f"{settings.subscription}-dlq",
            consumer_type=pulsar.ConsumerType.Exclusive,
            initial_position=pulsar.InitialPosition.Earliest,
        )
        try:
            yield client, consumer
        finally:
            consumer.close()
    finally:
        client.close()


def _messages(consumer: Any, wait_ms: int) -> Iterator[Any]:
    while True:
        try:
            yield consumer.receive(timeout_millis=wait_ms)
        except pulsar.Timeout:
            return


def list_dead_letters(
    settings: PulsarSettings, limit: int = 1000, wait_ms: int = 2000
) -> list[DeadLetter]:
    """Parked messages, oldest first, left in place."""
    found: list[DeadLetter] = []
    with _parked(settings) as (_, consumer):
        for msg in _messages(consumer, wait_ms):
            found.append(_describe(msg))
            if len(found) >= limit:
                break
    return found


def replay(settings: PulsarSettings, ids: set[str] | None, wait_ms: int = 2000) -> list[DeadLetter]:
    """Put parked messages back on the main topic: all of them (``ids`` None) or those whose
    dead-letter message id or job id is in ``ids``. Returns what was replayed."""
    done: list[DeadLetter] = []
    with _parked(settings) as (client, consumer):
        producer = client.create_producer(settings.topic, batching_enabled=False)
        try:
            for msg in _messages(consumer, wait_ms):
                info = _describe(msg)
                if ids is not None and not ids & {info.message_id, info.job_id}:
                    continue
                props = own_properties(msg.properties())
                props[REPLAYED] = info.message_id
                producer.send(msg.data(), properties=props)
                consumer.acknowledge(msg)
                done.append(info)
        finally:
            producer.close()
    return done
