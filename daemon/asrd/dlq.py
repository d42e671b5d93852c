"""The dead-letter topic for people: list what is parked there and replay it to the main topic.

Both use one durable subscription on the dead-letter topic (``<subscription>-dlq``, exclusive):
``list`` reads without acknowledging, so what it shows stays parked; ``replay`` republishes a
message to the main topic, without asrd's attempt bookkeeping, and only then acknowledges it.

A replay is bounded twice. It takes each partition's last message id when it starts and stops
there, so a copy dead-lettered again while the replay runs (a body no consumer can parse comes
back at once) is not replayed by the same run. And each replayed copy carries how many times
it was replayed (``ASRD_REPLAYS``, kept by the consumer on its dead-letter copies): a message
replayed ``[dlq] max_replays`` times already is refused and stays parked.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import pulsar

from . import callback
from .broker import ATTEMPTS, ORIGIN_MESSAGE_ID, REASON, make_client, own_properties
from .config import PulsarSettings

REPLAYED = "ASRD_REPLAYED_FROM"
REPLAYS = "ASRD_REPLAYS"  # how many times this message was replayed from the dead-letter topic
BODY_PREVIEW_BYTES = 4096


@dataclass(frozen=True)
class DeadLetter:
    message_id: str
    job_id: str
    reason: str
    attempts: str
    origin_message_id: str
    published_at: str
    size: int
    replays: int = 0
    body: str = ""  # the first BODY_PREVIEW_BYTES, decoded leniently (for people to read)


@dataclass
class ReplayReport:
    replayed: list[DeadLetter] = field(default_factory=list)
    refused: list[DeadLetter] = field(default_factory=list)  # replayed max_replays times already
    started_at: float = field(default_factory=time.time)  # before the first copy was sent

    def events(self) -> list[tuple[str, str, str]]:
        """The replayed jobs' timeline steps (for ``Ledger.note_events``)."""
        return [
            (d.job_id, "replayed", f"replay {d.replays + 1} from the dead-letter topic: {d.reason}")
            for d in self.replayed
            if d.job_id != "-"
        ]


def _job_id(body: bytes) -> str:
    try:
        return callback.parse(body).job_id or "-"
    except callback.BadMessage:
        return "-"


def replay_count(props: dict[str, str]) -> int:
    value = props.get(REPLAYS, "0")
    return int(value) if value.isdigit() else 0


def _describe(msg: Any) -> DeadLetter:
    props = msg.properties()
    published = datetime.fromtimestamp(msg.publish_timestamp() / 1000, UTC)
    data = msg.data()
    return DeadLetter(
        message_id=str(msg.message_id()),
        job_id=_job_id(data),
        reason=props.get(REASON, ""),
        attempts=props.get(ATTEMPTS, ""),
        origin_message_id=props.get(ORIGIN_MESSAGE_ID, ""),
        published_at=published.isoformat(timespec="seconds"),
        size=len(data),
        replays=replay_count(props),
        body=data[:BODY_PREVIEW_BYTES].decode("utf-8", errors="replace"),
    )


@contextmanager
def _parked(settings: PulsarSettings) -> Iterator[tuple[pulsar.Client, list[Any]]]:
    """One exclusive consumer per partition of the dead-letter topic (the topic itself when it
    is not partitioned): a partition's consumer can say which message is its last."""
    client = make_client(settings)
    consumers: list[Any] = []
    try:
        for topic in client.get_topic_partitions(settings.dlq_topic):
            consumers.append(
                client.subscribe(
                    topic,
                    f"{settings.subscription}-dlq",
                    consumer_type=pulsar.ConsumerType.Exclusive,
                    initial_position=pulsar.InitialPosition.Earliest,
                )
            )
        yield client, consumers
    finally:
        for consumer in consumers:
            consumer.close()
        client.close()


def _order(msg_id: Any) -> tuple[int, int, int]:
    return (msg_id.ledger_id(), msg_id.entry_id(), msg_id.batch_index())


def _messages(consumers: list[Any], wait_ms: int) -> Iterator[Any]:
    """Each partition's messages up to its last message id when this starts; an idle
    partition ends after ``wait_ms``."""
    for consumer in consumers:
        last = _order(consumer.get_last_message_id())
        if last[1] < 0:  # no message was ever published to this partition
            continue
        while True:
            try:
                msg = consumer.receive(timeout_millis=wait_ms)
            except pulsar.Timeout:
                break
            here = _order(msg.message_id())
            if here > last:
                break  # published after the start: left for the next run
            yield consumer, msg
            if here == last:
                break


def list_dead_letters(
    settings: PulsarSettings, limit: int = 1000, wait_ms: int = 2000
) -> list[DeadLetter]:
    """Parked messages, oldest first per partition, left in place."""
    found: list[DeadLetter] = []
    with _parked(settings) as (_, consumers):
        for _consumer, msg in _messages(consumers, wait_ms):
            found.append(_describe(msg))
            if len(found) >= limit:
                break
    return found


def replay(
    settings: PulsarSettings, ids: set[str] | None, max_replays: int = 3, wait_ms: int = 2000
) -> ReplayReport:
    """Put parked messages back on the main topic: all of them (``ids`` None) or those whose
    dead-letter message id or job id is in ``ids``; those already replayed ``max_replays``
    times are refused and left in place."""
    report = ReplayReport()
    with _parked(settings) as (client, consumers):
        producer = client.create_producer(settings.topic, batching_enabled=False)
        try:
            for consumer, msg in _messages(consumers, wait_ms):
                info = _describe(msg)
                if ids is not None and not ids & {info.message_id, info.job_id}:
                    continue
                if info.replays >= max_replays:
                    report.refused.append(info)
                    continue
                props = own_properties(msg.properties())
                props[REPLAYED] = info.message_id
                props[REPLAYS] = str(info.replays + 1)
                producer.send(msg.data(), properties=props)
                consumer.acknowledge(msg)
                report.replayed.append(info)
        finally:
            producer.close()
    return report
