"""In-process doubles for tests of asrd's stages and of plugins: no broker, no subprocess.

``StubMessage`` stands for a received ``pulsar.Message`` (the calls asrd makes on one);
``message`` wraps one as the ``Inbound`` the worker takes. ``StubTransport`` is the worker's
``Transport`` in memory: it records what the worker decided for each message (acknowledge,
retry after a delay, dead-letter with a reason, put back), can fail its publishes as a broker
outage would, and hands retry copies and messages put back out again as the broker would (same
origin, so the ledger counts their attempts under the same key).

``MemoryLedger`` is the whole ledger in memory (the SQL ledger's answers, no file), and
``StubCi`` answers the pipeline's look-ups from a dict of job descriptions, so the worker, the
pipeline, the settle policy and the sinks can be driven together in milliseconds.
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from .broker import Inbound, own_properties
from .ci import CiError, JobsDetail
from .ledger import Ledger
from .ledger.memory import MemoryLedger

__all__ = [
    "DeadLetter",
    "MemoryLedger",
    "Retry",
    "StubCi",
    "StubMessage",
    "StubTransport",
    "message",
]

_ids = itertools.count(1)
# mypy holds MemoryLedger to the whole ledger protocol here.
_WHOLE_LEDGER: Callable[[], Ledger] = MemoryLedger


@dataclass
class StubMessage:
    """What asrd reads from a received ``pulsar.Message``."""

    body: bytes
    topic: str = "persistent://public/default/asr"
    id: str = field(default_factory=lambda: f"({next(_ids)},0,-1,-1)")
    props: dict[str, str] = field(default_factory=dict)
    publish_ms: int = 1_767_225_600_000

    def data(self) -> bytes:
        return self.body

    def topic_name(self) -> str:
        return self.topic

    def message_id(self) -> str:
        return self.id

    def properties(self) -> dict[str, str]:
        return dict(self.props)

    def publish_timestamp(self) -> int:
        return self.publish_ms


def message(body: bytes, topic: str = "persistent://public/default/asr") -> Inbound:
    """A freshly received message (its first copy) carrying ``body``."""
    stub = StubMessage(body, topic)
    return Inbound(stub, body, topic, stub.id, stub.publish_ms)


@dataclass(frozen=True)
class Retry:
    message: Inbound
    attempt: int
    delay_s: float


@dataclass(frozen=True)
class DeadLetter:
    message: Inbound
    reason: str
    attempts: int


@dataclass
class StubTransport:
    """``worker.Transport`` in memory. ``outage``: the error every publish (retry or dead
    letter) answers with, as while the broker is unreachable; "" publishes succeed."""

    outage: str = ""
    acked: list[Inbound] = field(default_factory=list)
    retried: list[Retry] = field(default_factory=list)
    dead_lettered: list[DeadLetter] = field(default_factory=list)
    released: list[Inbound] = field(default_factory=list)
    _waiting: deque[Inbound] = field(default_factory=deque)

    def ack(self, m: Inbound) -> None:
        self.acked.append(m)

    def retry(self, m: Inbound, attempt: int, delay_s: float) -> str:
        if self.outage:
            return self.outage
        self.retried.append(Retry(m, attempt, delay_s))
        # As the consumer's copies: the message's own properties (trace context) travel along.
        props = {**own_properties(m.handle.properties()), "attempt": str(attempt)}
        copy = StubMessage(m.data, m.origin_topic + "-RETRY", props=props)
        # The copy is a new message of the retry topic that names its origin.
        self._waiting.append(Inbound(copy, m.data, m.origin_topic, m.origin_id, m.published_ms))
        return ""

    def dead_letter(self, m: Inbound, reason: str, attempts: int) -> str:
        if self.outage:
            return self.outage
        self.dead_lettered.append(DeadLetter(m, reason, attempts))
        return ""

    def release(self, m: Inbound) -> None:
        """Put back unacknowledged (an outage): the broker hands the same message out again."""
        self.released.append(m)
        self._waiting.append(m)

    def redeliver(self) -> list[Inbound]:
        """The retry copies published so far, as they come back once their delay is over
        (delays are recorded in ``retried``, not waited for), and the messages put back."""
        copies = list(self._waiting)
        self._waiting.clear()
        return copies

    @property
    def settled(self) -> int:
        """Messages acknowledged or dead-lettered: they will not come back."""
        return len(self.acked) + len(self.dead_lettered)


@dataclass
class StubCi:
    """CI's job look-ups (``pipeline.JobLookup``) answered from ``jobs`` (job id → what CI's
    describe says); an id missing there is unknown to CI. ``failures``: job id → the error its
    look-up fails with. Every look-up is recorded in ``asked``."""

    jobs: dict[str, JobsDetail] = field(default_factory=dict)
    failures: dict[str, CiError] = field(default_factory=dict)
    asked: list[list[str]] = field(default_factory=list)

    def get_jobs(self, job_ids: list[str]) -> dict[str, JobsDetail | CiError | None]:
        self.asked.append(list(job_ids))
        return {j: self.failures.get(j) or self.jobs.get(j) for j in job_ids}
