"""The worker and the settle policy in process: a stub transport (asrd.testing), a SQLite ledger
on a temporary file, pipelines as plain functions. What the broker tests show end to end
(tests/test_reliability.py), here in milliseconds."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from asrd.broker import Inbound
from asrd.config import PulsarSettings
from asrd.ledger import SqliteLedger
from asrd.observers import Observers
from asrd.pipeline import Outcome, Verdict
from asrd.settle import DIED_ON_IT
from asrd.testing import StubTransport, message
from asrd.worker import Worker

SETTINGS = PulsarSettings(
    topic="persistent://public/default/asr",
    max_attempts=3,
    retry_base_s=2.0,
    retry_max_s=10.0,
)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[SqliteLedger]:
    ledger = SqliteLedger(tmp_path / "ledger.db")
    yield ledger
    ledger.close()


def worker(
    ledger: SqliteLedger, transport: StubTransport, judge: Callable[[bytes], Verdict]
) -> Worker:
    """A worker whose pipeline answers ``judge(body)`` for each message of a batch."""
    return Worker(
        SETTINGS, lambda bodies: [judge(b) for b in bodies], ledger, transport, Observers()
    )


def begin(ledger: SqliteLedger, key: str) -> int:
    """Count one more start of the message ``key``; its count."""
    return ledger.begin_attempts([key])[key].count


def by_body(verdicts: dict[bytes, Verdict]) -> Callable[[bytes], Verdict]:
    return lambda body: verdicts[body]


def test_done_is_acknowledged_and_its_attempts_forgotten(ledger: SqliteLedger) -> None:
    transport = StubTransport()
    m = message(b"ok")
    worker(ledger, transport, by_body({b"ok": Verdict(Outcome.DONE, "")})).process_batch([m])
    assert transport.acked == [m] and not transport.retried and not transport.dead_lettered
    assert begin(ledger, m.key) == 1  # counted afresh: the old count is gone


def test_a_failing_message_is_retried_with_backoff_then_dead_lettered(
    ledger: SqliteLedger,
) -> None:
    transport = StubTransport()
    w = worker(ledger, transport, lambda body: Verdict(Outcome.RETRY, "CI busy"))
    w.process_batch([message(b"job")])
    for _ in range(2):
        [copy] = transport.redeliver()
        w.process_batch([copy])
    assert [r.attempt for r in transport.retried] == [1, 2]
    # Backoff grows from retry_base_s (jitter below its bound), capped at retry_max_s.
    assert all(0 < r.delay_s <= 10.0 for r in transport.retried)
    [dead] = transport.dead_lettered
    assert dead.attempts == 3 and dead.reason.startswith("gave up after 3 attempts")
    assert dead.reason.endswith(": CI busy")
    assert transport.redeliver() == [] and transport.acked == []


def test_a_permanent_failure_is_dead_lettered_at_once(ledger: SqliteLedger) -> None:
    transport = StubTransport()
    w = worker(ledger, transport, lambda body: Verdict(Outcome.DEAD, "not a CI callback"))
    w.process_batch([message(b"junk")])
    [dead] = transport.dead_lettered
    assert (dead.reason, dead.attempts) == ("not a CI callback", 1)
    assert not transport.retried


def test_a_pipeline_bug_is_retried_not_lost(ledger: SqliteLedger) -> None:
    def broken(body: bytes) -> Verdict:
        raise KeyError("oops")

    transport = StubTransport()
    worker(ledger, transport, broken).process_batch([message(b"job")])
    [retry] = transport.retried
    assert retry.attempt == 1 and not transport.acked and not transport.dead_lettered


def test_a_message_the_process_died_on_is_parked_without_another_try(
    ledger: SqliteLedger,
) -> None:
    m = message(b"poison")
    for _ in range(SETTINGS.max_attempts):
        begin(ledger, m.key)  # counted, then the process died before settling
    judged: list[bytes] = []

    def judge(body: bytes) -> Verdict:
        judged.append(body)
        return Verdict(Outcome.DONE, "")

    transport = StubTransport()
    worker(ledger, transport, judge).process_batch([m])
    assert judged == []  # not tried again
    [dead] = transport.dead_lettered
    assert dead.reason.endswith(DIED_ON_IT)


def test_an_outage_of_the_broker_leaves_the_message_unsettled(ledger: SqliteLedger) -> None:
    transport = StubTransport(outage="broker unreachable")
    w = worker(ledger, transport, lambda body: Verdict(Outcome.RETRY, "CI busy"))
    w.process_batch([message(b"job")])
    assert transport.settled == 0 and transport.retried == [] and transport.redeliver() == []


def test_a_batch_is_settled_message_by_message(ledger: SqliteLedger) -> None:
    transport = StubTransport()
    verdicts = {
        b"a": Verdict(Outcome.DONE, ""),
        b"b": Verdict(Outcome.RETRY, "CI busy"),
        b"c": Verdict(Outcome.DEAD, "bad job id"),
        b"d": Verdict(Outcome.IGNORED, "not ours"),
    }
    batch = [message(body) for body in verdicts]
    worker(ledger, transport, by_body(verdicts)).process_batch(batch)
    assert [m.data for m in transport.acked] == [b"a", b"d"]
    assert [r.message.data for r in transport.retried] == [b"b"]
    assert [(d.message.data, d.reason) for d in transport.dead_lettered] == [(b"c", "bad job id")]
    # Settled messages' attempts are forgotten; the retried one keeps its count.
    counts: dict[str, int] = {m.key: begin(ledger, m.key) for m in batch}
    assert counts == {batch[0].key: 1, batch[1].key: 2, batch[2].key: 1, batch[3].key: 1}


def test_retry_copies_keep_the_identity_of_their_first_copy() -> None:
    transport = StubTransport()
    first = message(b"job")
    assert transport.retry(first, 1, 2.0) == ""
    [copy] = transport.redeliver()
    assert isinstance(copy, Inbound) and copy.key == first.key
    assert copy.handle.topic_name().endswith("-RETRY")


def test_the_doubles_names_are_pinned() -> None:
    import asrd.testing

    assert asrd.testing.__all__ == [
        "DeadLetter",
        "MemoryLedger",
        "Retry",
        "StubCi",
        "StubMessage",
        "StubTransport",
        "message",
    ]
    for name in asrd.testing.__all__:
        assert getattr(asrd.testing, name) is not None


def test_a_stub_message_reads_as_a_received_one() -> None:
    """broker.inbound (what the consumer does with each received message) takes a StubMessage
    as it takes a pulsar.Message: a retry copy names its first copy."""
    from asrd.broker import ORIGIN_MESSAGE_ID, PUBLISHED_MS, REAL_TOPIC, inbound
    from asrd.testing import StubMessage

    retry_topic = "persistent://public/default/asr-asrd-RETRY"
    copy = StubMessage(
        b"job",
        retry_topic,
        props={REAL_TOPIC: SETTINGS.topic, ORIGIN_MESSAGE_ID: "(7,0,-1,-1)", PUBLISHED_MS: "5"},
    )
    got = inbound(copy, retry_topic)
    assert (got.origin_topic, got.origin_id, got.published_ms) == (SETTINGS.topic, "(7,0,-1,-1)", 5)
    assert got.data == b"job" and got.handle is copy
