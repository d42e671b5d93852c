"""The worker, the pipeline, the settle policy and a file sink together, in process: the broker
is ``StubTransport``, the ledger ``MemoryLedger``, CI ``StubCi`` (asrd.testing). What the broker
tests show end to end (tests/test_reliability.py, tests/test_sink_outage.py), here in
milliseconds: a message is acknowledged only once every sink has its record, transient failures
are retried with a counted attempt until the budget ends, an outage spends no attempt, and a
single message is a batch of one."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from asrd.broker import Inbound
from asrd.ci import CiError, ErrorKind
from asrd.clienttoken import compose
from asrd.config import FileSinkSettings, PulsarSettings, When
from asrd.ledger import PENDING, SETTLED, JobEntry
from asrd.observers import Observers
from asrd.pipeline import Pipeline
from asrd.result import ResultRecord
from asrd.sinks.base import SinkError
from asrd.sinks.file import FileSink
from asrd.sinks.routing import Route, Router
from asrd.testing import MemoryLedger, StubCi, StubTransport, message
from asrd.worker import Worker

SETTINGS = PulsarSettings(
    topic="persistent://public/default/asr", max_attempts=3, retry_base_s=2.0, retry_max_s=10.0
)


def job_id(n: int) -> str:
    return f"s{n:032x}"


def callback(job: str) -> bytes:
    """CI's notification that ``job`` finished (the JSON form)."""
    detail = {"JobId": job, "Tag": "SpeechRecognition", "State": "Success"}
    return json.dumps({"EventName": "TaskFinish", "JobsDetail": [detail]}).encode()


def described(job: str, state: str = "Success") -> dict[str, object]:
    """The job as CI's describe answers for it."""
    return {
        "Code": "Success", "CreationTime": "2026-01-01T08:00:00+0800",
        "EndTime": "2026-01-01T08:00:09+0800", "JobId": job, "State": state,
        "Tag": "SpeechRecognition", "QueueId": "p" + "0" * 32, "Message": None,
        "Input": {"BucketId": "b-1250000000", "Object": f"media/{job}.mp3", "Region": "ap-x"},
        "Operation": {"UserData": "", "SpeechRecognitionResult": {
            "AudioTime": "9.5", "Result": "[0:0.000,0:2.000] hello"}},
    }  # fmt: skip


@dataclass
class Hook:
    """A sink that can be down as a whole (a webhook's server refusing connections), or answer
    500 for some jobs (``failing``)."""

    name: str = "hook"
    down: bool = False
    failing: set[str] = field(default_factory=set)
    got: list[str] = field(default_factory=list)

    def deliver(self, record: ResultRecord) -> None:
        if self.down:
            raise SinkError("connection refused", outage=self.name)
        if record.job_id in self.failing:
            raise SinkError("HTTP 500")
        self.got.append(record.job_id)

    def close(self) -> None:
        pass


@dataclass
class Daemon:
    """The stages of one worker wired as ``asrd run`` wires them, around in-process doubles."""

    out: Path
    ci: StubCi = field(default_factory=StubCi)
    ledger: MemoryLedger = field(default_factory=MemoryLedger)
    transport: StubTransport = field(default_factory=StubTransport)
    hook: Hook | None = None
    paused: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        files = FileSink(FileSinkSettings(name="files", type="file", dir=self.out))
        routes = [Route(files, When())]
        if self.hook is not None:
            routes.append(Route(self.hook, When()))
        self.pipeline = Pipeline(self.ci, Router(routes), self.ledger, Observers())
        self.worker = Worker(
            SETTINGS,
            self.pipeline.handle_batch,
            self.ledger,
            self.transport,
            Observers(),
            on_pause=lambda source, reason: self.paused.append((source, reason)),
        )

    def receive(self, *messages: Inbound) -> None:
        self.worker.process_batch(list(messages))

    def attempts(self, m: Inbound) -> int:
        """How many starts the ledger holds for ``m`` (counting one more, then taking it back)."""
        count = self.ledger.begin_attempts([m.key])[m.key].count - 1
        self.ledger.undo_attempts([m.key])
        return count


def test_a_delivered_job_is_acknowledged_settled_and_its_attempts_forgotten(
    tmp_path: Path,
) -> None:
    d = Daemon(tmp_path / "out")
    job = job_id(1)
    d.ci.jobs[job] = described(job)
    m = message(callback(job))
    d.receive(m)
    assert d.transport.acked == [m] and not d.transport.retried and not d.transport.dead_lettered
    record = json.loads((tmp_path / "out" / f"{job}.json").read_text())
    assert record["job_id"] == job and record["state"] == "Success"
    assert d.ledger.finished_many([job]) == {job: {"files"}}
    assert d.attempts(m) == 0


def test_a_job_ci_does_not_know_yet_is_retried_with_its_attempt_counted(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "out")
    job = job_id(2)
    d.receive(message(callback(job)))  # the notification came before CI's describe knows it
    [copy] = d.transport.redeliver()
    d.receive(copy)
    assert [r.attempt for r in d.transport.retried] == [1, 2]
    assert d.attempts(copy) == 2
    d.ci.jobs[job] = described(job)  # now it does
    [copy] = d.transport.redeliver()
    d.receive(copy)
    assert d.transport.acked == [copy] and not d.transport.dead_lettered
    assert (tmp_path / "out" / f"{job}.json").exists()
    assert d.attempts(copy) == 0


def test_a_job_that_never_comes_is_dead_lettered_when_its_attempts_are_spent(
    tmp_path: Path,
) -> None:
    d = Daemon(tmp_path / "out")
    d.receive(message(callback(job_id(3))))
    for _ in range(SETTINGS.max_attempts - 1):
        [copy] = d.transport.redeliver()
        d.receive(copy)
    [dead] = d.transport.dead_lettered
    assert dead.attempts == 3 and dead.reason.startswith("gave up after 3 attempts")
    assert dead.reason.endswith("CI does not know this job (NonExistJobIds)")
    assert d.transport.redeliver() == [] and d.transport.acked == []


def test_a_sink_outage_pauses_work_and_spends_no_attempt(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "out", hook=Hook(down=True))
    job = job_id(4)
    d.ci.jobs[job] = described(job)
    m = message(callback(job))
    for _ in range(SETTINGS.max_attempts + 2):  # more times than it has attempts
        d.receive(m)
        assert d.transport.redeliver() == [m]  # put back, not retried or dead-lettered
    assert d.transport.settled == 0 and not d.transport.retried
    assert d.paused and {source for source, _ in d.paused} == {"hook"}
    assert d.attempts(m) == 0
    assert (tmp_path / "out" / f"{job}.json").exists()  # the other sink has it meanwhile
    d.hook.down = False  # type: ignore[union-attr]
    d.receive(m)
    assert d.transport.acked == [m]
    assert d.hook.got == [job]  # type: ignore[union-attr]
    assert d.ledger.finished_many([job]) == {job: {"files", "hook"}}


def test_a_sink_failing_since_the_first_try_holds_the_message_past_its_budget(
    tmp_path: Path,
) -> None:
    """One job, and the hook answers 500 to it from its first try: too few jobs for the
    breaker to call the hook down, yet nothing shows the record is at fault. It is put back
    without spending attempts (work is not paused) and arrives once the hook works."""
    job = job_id(10)
    d = Daemon(tmp_path / "out", hook=Hook(failing={job}))
    d.ci.jobs[job] = described(job)
    tries = SETTINGS.max_attempts + 4  # more than it has attempts
    d.receive(message(callback(job)))
    for _ in range(tries - 1):
        [copy] = d.transport.redeliver()
        d.receive(copy)
    assert not d.transport.dead_lettered and not d.paused
    assert len(d.transport.retried) == SETTINGS.max_attempts - 1
    assert len(d.transport.released) == tries - (SETTINGS.max_attempts - 1)
    assert d.attempts(copy) == SETTINGS.max_attempts - 1  # each hold took its attempt back
    d.hook.failing.clear()  # type: ignore[union-attr]
    [copy] = d.transport.redeliver()
    d.receive(copy)
    assert d.transport.acked == [copy] and d.hook.got == [job]  # type: ignore[union-attr]


def test_a_record_the_sink_refuses_while_taking_others_is_dead_lettered(tmp_path: Path) -> None:
    bad, good = job_id(11), job_id(12)
    d = Daemon(tmp_path / "out", hook=Hook(failing={bad}))
    d.ci.jobs |= {bad: described(bad), good: described(good)}
    d.receive(message(callback(bad)))
    d.receive(message(callback(good)))  # the hook takes another record after the first try
    for _ in range(SETTINGS.max_attempts - 1):
        [copy] = d.transport.redeliver()
        d.receive(copy)
    [dead] = d.transport.dead_lettered
    assert dead.attempts == 3 and dead.reason.startswith("gave up after 3 attempts")
    assert dead.reason.endswith("sink hook: HTTP 500") and not d.transport.released


def test_a_refused_key_pauses_work_too(tmp_path: Path) -> None:
    d = Daemon(tmp_path / "out")
    job = job_id(5)
    d.ci.failures[job] = CiError(ErrorKind.AUTH, "ExpiredToken", "the token expired", 403)
    m = message(callback(job))
    d.receive(m)
    assert d.transport.released == [m] and d.transport.settled == 0
    assert d.paused[0][0] == "credentials" and "ExpiredToken" in d.paused[0][1]
    assert d.attempts(m) == 0


def test_duplicate_callbacks_in_one_batch_deliver_once_and_are_both_acknowledged(
    tmp_path: Path,
) -> None:
    d = Daemon(tmp_path / "out", hook=Hook())
    job = job_id(6)
    d.ci.jobs[job] = described(job)
    first, second = message(callback(job)), message(callback(job))
    d.receive(first, second)
    assert d.transport.acked == [first, second]
    assert d.ci.asked == [[job]]  # one look-up for both
    assert d.hook.got == [job]  # type: ignore[union-attr]
    delivered = [e.detail for e in d.ledger.events(job) if e.stage == "delivered"]
    assert sorted(delivered) == ["files", "hook"]
    d.receive(message(callback(job)))  # a third, later: CI is not asked again
    assert d.ci.asked == [[job]] and len(d.transport.acked) == 3


def test_a_batch_of_one_is_judged_as_the_same_message_in_a_batch(tmp_path: Path) -> None:
    """The same messages, one batch each or all in one batch, end the same way."""
    bodies = [
        callback(job_id(7)),  # known to CI: delivered
        callback(job_id(8)),  # not known yet: retried
        b"not a notification",  # dead-lettered with the reason
        callback(job_id(9)),  # CI's describe fails permanently for it: dead-lettered
    ]

    def run(out: Path, together: bool) -> tuple[list[bytes], list[bytes], list[str]]:
        d = Daemon(out)
        d.ci.jobs[job_id(7)] = described(job_id(7))
        d.ci.failures[job_id(9)] = CiError(ErrorKind.PERMANENT, "InvalidArgument", "no", 400)
        messages = [message(b) for b in bodies]
        if together:
            d.receive(*messages)
        else:
            for m in messages:
                d.receive(m)
        t = d.transport
        return (
            [m.data for m in t.acked],
            [r.message.data for r in t.retried],
            [x.reason for x in t.dead_lettered],
        )

    one_by_one = run(tmp_path / "a", together=False)
    assert one_by_one == run(tmp_path / "b", together=True)
    acked, retried, dead = one_by_one
    assert acked == [bodies[0]] and retried == [bodies[1]]
    assert dead[0].startswith("bad message: ") and dead[1].startswith("CI get job failed: ")


def test_a_job_delivered_before_the_submit_knows_its_id_is_settled_by_its_token(
    tmp_path: Path,
) -> None:
    """The create's answer was lost and the submit is still looking the job up when its callback
    is delivered: the job's pending row is settled through the token in its UserData."""
    d = Daemon(tmp_path / "out")
    job = job_id(7)
    now = time.time()
    d.ledger.record_pending(JobEntry("tok-7", None, "media/7.mp3", PENDING, now, now + 3600))
    detail = described(job)
    detail["Operation"] = {**detail["Operation"], "UserData": compose("tok-7", "mine")}  # type: ignore[dict-item]
    d.ci.jobs[job] = detail
    d.receive(message(callback(job)))
    settled = d.ledger.job_by_token("tok-7")
    assert settled is not None and (settled.job_id, settled.status) == (job, SETTLED)
    d.ledger.record_job(JobEntry("tok-7", job, "media/7.mp3", PENDING, now, now + 3600))
    assert d.ledger.job_stats(time.time()).owed == 0
