"""Load on the broker and CI: create jobs, publish callbacks, the raw consume-and-ack baseline."""

from __future__ import annotations

import contextlib
import json
import logging
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pulsar

from benchmarks.harness import admin_url, pulsar_url

_quiet = logging.getLogger("bench.pulsar")
_quiet.setLevel(logging.ERROR)


def client() -> pulsar.Client:
    return pulsar.Client(pulsar_url(), logger=_quiet, operation_timeout_seconds=30)


def subscribe(topic: str, subscription: str) -> None:
    """Create a durable Shared subscription at the topic's end, so it keeps what comes next."""
    c = client()
    try:
        c.subscribe(topic, subscription, consumer_type=pulsar.ConsumerType.Shared).close()
    finally:
        c.close()


@dataclass
class Drained:
    """What one subscription received: bodies and publish times by job id, and the rate."""

    bodies: dict[str, bytes]
    published: dict[str, float]  # job id -> broker publish time (s)
    count: int
    seconds: float  # first receive to last acknowledgement


def consume_all(
    topic: str, subscription: str, expected: int, keep_bodies: bool, idle_timeout: float = 20.0
) -> Drained:
    """Receive and acknowledge everything on ``subscription`` (the raw baseline: no other work
    than remembering the job id and publish time, and the body when asked)."""
    c = client()
    bodies: dict[str, bytes] = {}
    published: dict[str, float] = {}
    count = 0
    first = last = 0.0
    try:
        consumer = c.subscribe(
            topic, subscription, consumer_type=pulsar.ConsumerType.Shared, receiver_queue_size=1000
        )
        while count < expected:
            try:
                msg = consumer.receive(timeout_millis=int(idle_timeout * 1000))
            except pulsar.Timeout:
                break
            if count == 0:
                first = time.monotonic()
            job_id = msg.properties().get("JobId", "")
            published[job_id] = msg.publish_timestamp() / 1000.0
            if keep_bodies:
                bodies[job_id] = msg.data()
            consumer.acknowledge(msg)
            count += 1
            last = time.monotonic()
        consumer.close()
    finally:
        c.close()
    return Drained(bodies, published, count, last - first)


def publish_bulk(
    topic: str, bodies: Sequence[tuple[str, bytes]], total: int, batching: bool = True
) -> float:
    """Publish ``total`` messages cycling over ``bodies`` as fast as the broker takes them;
    returns seconds."""
    c = client()
    started = time.monotonic()
    try:
        producer = c.create_producer(
            topic,
            batching_enabled=batching,
            batching_max_messages=1000,
            batching_max_publish_delay_ms=10,
            max_pending_messages=20_000,
            block_if_queue_full=True,
            send_timeout_millis=60_000,
        )
        errors: list[Any] = []

        def sent(result: Any, _: Any) -> None:
            if result != pulsar.Result.Ok:
                errors.append(result)

        for i in range(total):
            job_id, body = bodies[i % len(bodies)]
            producer.send_async(body, sent, properties={"JobId": job_id})
        producer.flush()
        producer.close()
        if errors:
            raise RuntimeError(f"{len(errors)} publishes failed: {errors[0]}")
    finally:
        c.close()
    return time.monotonic() - started


def publish_paced(
    topic: str, bodies: Sequence[tuple[str, bytes]], rate: float, seconds: float
) -> int:
    """Publish at ``rate`` messages/s for ``seconds`` (batching off: each message goes now)."""
    c = client()
    sent = 0
    try:
        producer = c.create_producer(
            topic, batching_enabled=False, max_pending_messages=10_000, block_if_queue_full=True
        )
        total = int(rate * seconds)
        start = time.monotonic()
        for i in range(min(total, len(bodies))):
            due = start + i / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            job_id, body = bodies[i]
            producer.send_async(body, lambda *_: None, properties={"JobId": job_id})
            sent += 1
        producer.flush()
        producer.close()
    finally:
        c.close()
    return sent


def _admin(method: str, path: str) -> Any:
    req = urllib.request.Request(f"{admin_url()}/admin/v2/{path}", method=method)
    with urllib.request.urlopen(req, timeout=30) as resp:
        body = resp.read()
    return json.loads(body) if body else None


def _topic_path(topic: str) -> str:
    return topic.replace("persistent://", "persistent/")


def backlog(topic: str, subscription: str) -> int:
    """Messages waiting on ``subscription`` (from the broker's admin API)."""
    stats = _admin("GET", f"{_topic_path(topic)}/stats")
    return int(stats["subscriptions"][subscription]["msgBacklog"])


def wait_backlog(topic: str, subscription: str, expected: int, timeout: float) -> int:
    """Wait until ``expected`` messages wait on ``subscription`` (or the timeout passes)."""
    deadline = time.monotonic() + timeout
    seen = backlog(topic, subscription)
    while seen < expected and time.monotonic() < deadline:
        time.sleep(0.5)
        seen = backlog(topic, subscription)
    return seen


def delete_topics(prefix: str, namespace: str = "public/default") -> int:
    """Remove every topic whose name starts with ``prefix`` (a run's topics and the retry and
    dead-letter topics the daemon made for them), best effort; returns how many went."""
    deleted = 0
    with contextlib.suppress(OSError, ValueError):
        for topic in _admin("GET", f"persistent/{namespace}"):
            if str(topic).startswith(f"persistent://{namespace}/{prefix}"):
                with contextlib.suppress(OSError, ValueError):
                    _admin("DELETE", f"{_topic_path(str(topic))}?force=true")
                    deleted += 1
    return deleted
