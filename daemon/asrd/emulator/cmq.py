"""TDMQ-CMQ queues and topics: messages, visibility timeout, receipt handles, long polling.

Semantics follow docs/tencent-cloud.md §3. Everything runs on the event loop thread; long polls are
coroutines waiting on a per-queue event, never threads. Declarations and messages are journaled
(sends and deletes, not receives), so a restarted emulator still holds every undeleted message;
visibility state is not kept, so after a restart every message is immediately receivable.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import Any

from asrd.emulator.journal import Journal

log = logging.getLogger("asrd.emulator.cmq")

NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9-]{0,63}$")
REGION_RE = re.compile(r"^[a-z]{2,8}$")
HARD_MAX_BYTES = 1024 * 1024  # TDMQ gateway limit for any message (docs/tencent-cloud.md §3.5)
DEFAULT_MAX_BYTES = 65536
DEFAULT_VISIBILITY_S = 30
MAX_VISIBILITY_S = 43200
MAX_POLL_S = 30
MAX_BATCH = 16
# TDMQ's "max message unacknowledged time" (30 s - 12 h): an undeleted message older than this is
# acknowledged by the server and gone. Below 30 s only for tests.
MAX_UNACKED_S = 43200
MAX_DELAY_S = 6_048_000  # GOSDK's bound; the server's is UNCONFIRMED

# Top-level codes (docs/tencent-cloud.md §3.3).
INVALID = 4000
AUTH = 4100
TOO_BIG = 4400
BAD_HANDLE = 4430
NO_QUEUE = 4440
BATCH_DELETE_FAILED = 6010
NO_MESSAGE = 7000


class CmqError(Exception):
    """An answer with a non-zero ``code``; ``extra`` fields join the JSON document."""

    def __init__(self, code: int, message: str, extra: dict[str, Any] | None = None) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.extra = extra or {}


@dataclass(frozen=True)
class QueueSpec:
    region: str
    name: str
    visibility: int = DEFAULT_VISIBILITY_S
    maxsize: int = DEFAULT_MAX_BYTES
    polling: int = 0  # the queue's default pollingWaitSeconds
    max_unacked: int = MAX_UNACKED_S

    @property
    def limit(self) -> int:
        return min(self.maxsize, HARD_MAX_BYTES)


@dataclass(frozen=True)
class TopicSpec:
    region: str
    name: str
    queues: tuple[str, ...]  # queue subscriptions (SIMPLIFIED: the raw body), same region
    maxsize: int = DEFAULT_MAX_BYTES

    @property
    def limit(self) -> int:
        return min(self.maxsize, HARD_MAX_BYTES)


QUEUE_LIMITS = {
    "visibility": (1, MAX_VISIBILITY_S),
    "maxsize": (1024, HARD_MAX_BYTES),
    "polling": (0, MAX_POLL_S),
    "max_unacked": (1, MAX_UNACKED_S),
}
TOPIC_LIMITS = {"maxsize": (1024, HARD_MAX_BYTES)}


def check_region_and_name(region: str, name: str) -> None:
    """ValueError naming the problem (flags and the admin API declare through this)."""
    if not REGION_RE.match(region):
        raise ValueError(f"region {region!r} must be a short code such as gz")
    if not NAME_RE.match(name):
        raise ValueError(f"name {name!r}: up to 64 letters, digits or '-', starting with a letter")


def _attributes(values: dict[str, Any], limits: dict[str, tuple[int, int]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for key, value in values.items():
        if key not in limits:
            raise ValueError(f"unknown option {key!r} (expected {', '.join(limits)})")
        low, high = limits[key]
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"{key} must be an integer from {low} to {high}")
        out[key] = value
    return out


def queue_spec(region: str, name: str, **attributes: Any) -> QueueSpec:
    check_region_and_name(region, name)
    return QueueSpec(region, name, **_attributes(attributes, QUEUE_LIMITS))


def topic_spec(region: str, name: str, queues: list[str], **attributes: Any) -> TopicSpec:
    check_region_and_name(region, name)
    if not queues:
        raise ValueError(f"topic {name} needs at least one queue")
    for queue in queues:
        check_region_and_name(region, queue)
    return TopicSpec(region, name, tuple(queues), **_attributes(attributes, TOPIC_LIMITS))


@dataclass
class Message:
    msg_id: str
    body: str
    enqueue_time: int
    visible_at: float  # receivable from then on (delay, or the end of a visibility timeout)
    dequeue_count: int = 0
    first_dequeue_time: int = 0
    handle: str = ""  # the only valid receipt handle: the one from the latest receive
    heap_seq: int = field(default=-1, repr=False)

    def as_received(self) -> dict[str, Any]:
        return {
            "msgBody": self.body,
            "msgId": self.msg_id,
            "receiptHandle": self.handle,
            "enqueueTime": self.enqueue_time,
            "firstDequeueTime": self.first_dequeue_time,
            "nextVisibleTime": int(self.visible_at),
            "dequeueCount": self.dequeue_count,
        }


def _new_id() -> str:
    return uuid.uuid4().hex


class MessageQueue:
    def __init__(self, spec: QueueSpec) -> None:
        self.spec = spec
        self.messages: dict[str, Message] = {}
        # (visible_at, seq, msg_id); an entry is stale once the message moved or went.
        self._heap: list[tuple[float, int, str]] = []
        self._seq = itertools.count()
        self._handles: dict[str, str] = {}  # receipt handle -> msg_id
        self._arrival = asyncio.Event()
        self.auto_acked = 0  # messages TDMQ would have acknowledged for nobody (max_unacked)

    def _expired(self, msg: Message, now: float) -> bool:
        # UNCONFIRMED whether TDMQ counts from the send or from the first receive; from the
        # send is the cautious reading (an intake that never polled loses them as well).
        return now >= msg.enqueue_time + self.spec.max_unacked

    def _drop(self, msg: Message) -> None:
        self._handles.pop(msg.handle, None)
        self.messages.pop(msg.msg_id, None)
        self.auto_acked += 1

    def expire(self, now: float) -> None:
        """Drop every message past the queue's max unacknowledged time."""
        for msg in [m for m in self.messages.values() if self._expired(m, now)]:
            self._drop(msg)

    def add(self, msg: Message) -> None:
        self.messages[msg.msg_id] = msg
        self._schedule(msg)
        # Wake every poller; the ones that find nothing wait again.
        self._arrival.set()
        self._arrival = asyncio.Event()

    def _schedule(self, msg: Message) -> None:
        msg.heap_seq = next(self._seq)
        heapq.heappush(self._heap, (msg.visible_at, msg.heap_seq, msg.msg_id))

    def _top(self) -> Message | None:
        while self._heap:
            _, seq, msg_id = self._heap[0]
            msg = self.messages.get(msg_id)
            if msg is not None and msg.heap_seq == seq:
                return msg
            heapq.heappop(self._heap)
        return None

    def take(self, n: int, now: float) -> list[Message]:
        """Up to n receivable messages, made invisible for the visibility timeout."""
        out: list[Message] = []
        while len(out) < n:
            msg = self._top()
            if msg is None or msg.visible_at > now:
                break
            heapq.heappop(self._heap)
            if self._expired(msg, now):
                self._drop(msg)
                continue
            self._handles.pop(msg.handle, None)  # the previous receive's handle is now stale
            msg.handle = _new_id()
            self._handles[msg.handle] = msg.msg_id
            msg.dequeue_count += 1
            if not msg.first_dequeue_time:
                msg.first_dequeue_time = int(now)
            msg.visible_at = now + self.spec.visibility
            self._schedule(msg)
            out.append(msg)
        return out

    async def receive(
        self,
        n: int,
        wait_s: float,
        gone: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> list[Message]:
        """Long poll: wait up to ``wait_s`` for messages; [] if none came or the client left."""
        deadline = clock() + wait_s
        while True:
            if gone is not None and gone():
                return []  # nobody would read the answer: leave the messages for others
            now = clock()
            got = self.take(n, now)
            if got:
                return got
            remaining = deadline - now
            if remaining <= 0:
                return []
            top = self._top()
            if top is not None:  # an invisible or delayed message becomes receivable first
                remaining = min(remaining, max(0.0, top.visible_at - now) + 0.001)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._arrival.wait(), timeout=remaining)

    def delete(self, handle: str, now: float) -> Message:
        msg_id = self._handles.get(handle)
        msg = self.messages.get(msg_id) if msg_id is not None else None
        if msg is not None and self._expired(msg, now):
            self._drop(msg)
            msg = None
        if msg is None or msg.handle != handle or now >= msg.visible_at:
            # Only the latest receive's handle is valid, and only until nextVisibleTime.
            raise CmqError(BAD_HANDLE, "receipt handle is invalid or expired")
        del self._handles[handle]
        del self.messages[msg.msg_id]
        return msg

    def depth(self, now: float) -> dict[str, int]:
        self.expire(now)
        active = sum(1 for m in self.messages.values() if m.visible_at <= now)
        delayed = sum(
            1 for m in self.messages.values() if m.visible_at > now and m.dequeue_count == 0
        )
        inactive = len(self.messages) - active - delayed
        return {
            "active": active,
            "inactive": inactive,
            "delayed": delayed,
            "auto_acked": self.auto_acked,
        }


class Cmq:
    """All queues and topics of the emulated account, keyed by (region, name)."""

    def __init__(self, journal: Journal | None, stats: Counter[str]) -> None:
        self.queues: dict[tuple[str, str], MessageQueue] = {}
        self.topics: dict[tuple[str, str], TopicSpec] = {}
        self._journal = journal
        self.stats = stats

    # ---- declarations and the journal ------------------------------------------------------

    def declare_queue(self, spec: QueueSpec, journal: bool = True) -> None:
        key = (spec.region, spec.name)
        queue = self.queues.get(key)
        if queue is None:
            self.queues[key] = MessageQueue(spec)
        else:
            queue.spec = spec  # a new declaration changes the attributes, keeps the messages
        if journal:
            self._write({"kind": "cmq_queue", **asdict(spec)})

    def declare_topic(self, spec: TopicSpec, journal: bool = True) -> None:
        missing = [q for q in spec.queues if (spec.region, q) not in self.queues]
        if missing:
            raise ValueError(f"topic {spec.name}: queue {missing[0]!r} is not declared")
        self.topics[(spec.region, spec.name)] = spec
        if journal:
            rec = asdict(spec)
            rec["queues"] = list(spec.queues)
            self._write({"kind": "cmq_topic", **rec})

    def restore(self, records: Iterable[dict[str, Any]]) -> None:
        for rec in records:
            kind = rec.get("kind")
            values = {k: v for k, v in rec.items() if k != "kind"}
            try:
                if kind == "cmq_queue":
                    self.declare_queue(QueueSpec(**values), journal=False)
                elif kind == "cmq_topic":
                    values["queues"] = tuple(values["queues"])
                    self.declare_topic(TopicSpec(**values), journal=False)
                elif kind == "cmq_msg":
                    queue = self.queues.get((values["region"], values["queue"]))
                    if queue is not None:
                        queue.add(
                            Message(
                                values["id"], values["body"], values["enqueued"], values["visible"]
                            )
                        )
                elif kind == "cmq_del":
                    queue = self.queues.get((values["region"], values["queue"]))
                    if queue is not None:
                        queue.messages.pop(values["id"], None)
            except (TypeError, KeyError, ValueError) as exc:
                raise ValueError(f"journal record of kind {kind!r} unreadable: {exc}") from exc

    def snapshot(self) -> list[dict[str, Any]]:
        """The records that recreate the current state (journal compaction)."""
        out: list[dict[str, Any]] = [
            {"kind": "cmq_queue", **asdict(q.spec)} for q in self.queues.values()
        ]
        for t in self.topics.values():
            out.append({"kind": "cmq_topic", **asdict(t), "queues": list(t.queues)})
        for q in self.queues.values():
            out.extend(self._message_record(q.spec, m) for m in q.messages.values())
        return out

    @staticmethod
    def _message_record(spec: QueueSpec, msg: Message) -> dict[str, Any]:
        return {
            "kind": "cmq_msg",
            "region": spec.region,
            "queue": spec.name,
            "id": msg.msg_id,
            "body": msg.body,
            "enqueued": msg.enqueue_time,
            "visible": msg.visible_at if msg.dequeue_count == 0 else msg.enqueue_time,
        }

    def _write(self, record: dict[str, Any]) -> None:
        if self._journal is not None:
            self._journal.write(record)

    # ---- data flow -------------------------------------------------------------------------

    def queue(self, region: str, name: str) -> MessageQueue:
        queue = self.queues.get((region, name))
        if queue is None:
            raise CmqError(NO_QUEUE, f"queue {name} does not exist in region {region}")
        return queue

    def topic(self, region: str, name: str) -> TopicSpec:
        topic = self.topics.get((region, name))
        if topic is None:
            # UNCONFIRMED: the code for an unknown topic is not documented; 4440 as for queues.
            raise CmqError(NO_QUEUE, f"topic {name} does not exist in region {region}")
        return topic

    def send(self, region: str, name: str, bodies: list[str], delay_s: int) -> list[Message]:
        """All or nothing: one body over the limit rejects the whole request (4400)."""
        queue = self.queue(region, name)
        for body in bodies:
            _check_size(body, queue.spec.limit)
        now = time.time()
        sent = []
        for body in bodies:
            msg = Message(_new_id(), body, int(now), now + delay_s)
            self._write(self._message_record(queue.spec, msg))
            queue.add(msg)
            sent.append(msg)
        return sent

    def publish(self, region: str, name: str, bodies: list[str]) -> list[str]:
        """Fan out to the topic's queue subscriptions; returns one msgId per body."""
        topic = self.topic(region, name)
        for body in bodies:
            _check_size(body, topic.limit)
        ids = []
        for body in bodies:
            ids.append(_new_id())
            for queue_name in topic.queues:
                queue = self.queues[(region, queue_name)]
                if len(body.encode()) > queue.spec.limit:
                    # The push into a smaller queue fails; the topic drops it after its retries.
                    self.stats["cmq_push_oversize"] += 1
                    continue
                self.send(region, queue_name, [body], 0)
        return ids

    def delete(self, region: str, name: str, handle: str) -> None:
        queue = self.queue(region, name)
        msg = queue.delete(handle, time.time())
        self._write({"kind": "cmq_del", "region": region, "queue": name, "id": msg.msg_id})

    # ---- CI's TDMQ notifications -----------------------------------------------------------

    def deliver_callback(self, region: str, mode: str, name: str, body: bytes) -> bool:
        """Write a TaskFinish body as CI would; a lost one is counted, never delivered."""
        try:
            text = body.decode("utf-8")
            if mode == "Topic":
                self.publish(region, name, [text])
            else:
                self.send(region, name, [text], 0)
        except CmqError as err:
            reason = "oversize" if err.code == TOO_BIG else "no_queue"
            self.stats[f"cmq_callbacks_{reason}"] += 1
            log.warning(
                "TDMQ callback (%d bytes) for %s %s/%s lost: %s",
                len(body),
                mode,
                region,
                name,
                err.message,
            )
            return False
        self.stats["cmq_callbacks_sent"] += 1
        return True

    def state(self) -> dict[str, Any]:
        now = time.time()
        return {
            "queues": [
                {**asdict(q.spec), **q.depth(now)}
                for q in sorted(self.queues.values(), key=lambda q: (q.spec.region, q.spec.name))
            ],
            "topics": [
                {**asdict(t), "queues": list(t.queues)}
                for t in sorted(self.topics.values(), key=lambda t: (t.region, t.name))
            ],
        }


def _check_size(body: str, limit: int) -> None:
    size = len(body.encode())
    if size > limit:
        raise CmqError(TOO_BIG, f"message size {size} exceeds the limit of {limit} bytes")
