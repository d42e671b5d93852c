"""Tracing in process: the real submitter, worker, pipeline, file sinks and SQLite ledger, with
the tracing observer exporting to opentelemetry-sdk's in-memory exporter. CI is a small stand-in
(pure logic: it answers the create and the describe from a dict); the intake's hook is called as
the intake calls it (the end-to-end test, tests/test_tracing_e2e.py, runs the real intake)."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF

from asrd import config, tracing
from asrd.api import ApiContext, create_app
from asrd.broker import Inbound
from asrd.config import Settings, UrlIntakeSettings
from asrd.intake.forward import Forwarder, Outgoing
from asrd.intake.url import UrlReceiver
from asrd.jobs import show
from asrd.ledger import SCHEMA_VERSION, SqliteLedger
from asrd.metrics import Metrics
from asrd.observers import MessageInfo, Observers
from asrd.pipeline import Pipeline
from asrd.sinks import build_routes
from asrd.sinks.routing import Router
from asrd.submit import JobSpec, Submitter, TokenLookup
from asrd.testing import StubMessage, StubTransport, message
from asrd.tracing_otel import TracingObserver
from asrd.vocabulary import Action, Outcome, Settlement, Verdict
from asrd.worker import Worker

from . import otlp_receiver
from .conftest import Broker
from .support import quiet_client
from .test_callback_and_result import detail
from .test_ledger import BACKENDS, Store

TOPIC = "persistent://public/default/asr"
# One per batch, in its first job's trace, linked from the others'.
BATCH_SPANS = ("ci.describe", "sink.files", "sink.archive", "ledger.commit")
BASE = """
[ci]
region = "ap-guangzhou"
bucket = "b-1250000000"
secret_id = "id"
secret_key = "key"
endpoint = "http://127.0.0.1:1"
queue_id = "p5275b560c7fd498db9a36e5e202827b6"
[ci.callback]
mq_name = "q"
[pulsar]
topic = "asr"
max_attempts = 3
"""


class Ci:
    """CI's create and describe as asrd's stages call them (``running``: jobs that describe as
    still Running this many more times)."""

    def __init__(self) -> None:
        self.jobs: dict[str, dict[str, Any]] = {}
        self.running: dict[str, int] = {}
        self.observers = Observers()  # told of each describe, as the real client tells

    def queue_id(self) -> str:
        return "p5275b560c7fd498db9a36e5e202827b6"

    def create_job(self, request: dict[str, Any]) -> dict[str, Any]:
        job = "s" + uuid.uuid4().hex
        self.jobs[job] = {**detail(Result="[0:0.000,0:1.000] hi"), "JobId": job}
        return {"JobId": job, "QueueId": self.queue_id(), "State": "Submitted"}

    def get_jobs(self, job_ids: list[str]) -> dict[str, Any]:
        self.observers.ci_call("describe", "ok", 0.003)
        out: dict[str, Any] = {}
        for j in job_ids:
            d = self.jobs.get(j)
            if d is not None and self.running.get(j, 0) > 0:
                self.running[j] -= 1
                d = {**d, "State": "Running"}
            out[j] = d
        return out

    def get_job(self, job_id: str) -> dict[str, Any] | None:
        return self.get_jobs([job_id])[job_id]

    def callback(self, job: str) -> bytes:
        """The TaskFinish body CI writes to the queue (its JobsDetail as the describe's)."""
        return json.dumps({"EventName": "TaskFinish", "JobsDetail": self.jobs[job]}).encode()


class Rig:
    def __init__(self, tmp_path: Path) -> None:
        self.spans = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.ledger = SqliteLedger(tmp_path / "ledger.db")
        self.tracer = TracingObserver(provider.get_tracer("test"), self.ledger)
        # Metrics after tracing: its exemplars must not depend on which observer runs first.
        self.metrics = Metrics()
        self.metrics.trace_of = tracing.trace_lookup([self.tracer])
        self.observers = Observers([self.tracer, self.metrics])
        path = tmp_path / "asrd.toml"
        path.write_text(
            BASE
            + "".join(
                f'[[sinks]]\nname = "{n}"\ntype = "file"\ndir = "{tmp_path / n}"\n'
                for n in ("files", "archive")
            )
        )
        self.settings: Settings = config.load(path, environ={})
        self.ci = Ci()
        self.ci.observers = self.observers
        ci: Any = self.ci  # the stand-in has the calls the stages make
        self.submitter = Submitter(
            ci,
            self.settings.ci,
            self.ledger,
            3600.0,
            TokenLookup(ci, self.settings.ci.queue_id, 60.0),
            observers=self.observers,
        )
        routes = build_routes(self.settings)
        self.pipeline = Pipeline(ci, Router(routes), self.ledger, self.observers)
        self.transport = StubTransport()
        self.worker = Worker(
            self.settings.pulsar,
            self.pipeline.handle_batch,
            self.ledger,
            self.transport,
            self.observers,
        )

    def untraced(self) -> Submitter:
        """A submitter where tracing is off: the ledger keeps no trace context for its jobs."""
        return Submitter(
            self.ci,  # type: ignore[arg-type]
            self.settings.ci,
            self.ledger,
            3600.0,
            TokenLookup(self.ci, "", 60.0),  # type: ignore[arg-type]
        )

    def submit(self) -> str:
        out = self.submitter.submit(JobSpec(input_object="a.mp3"), uuid.uuid4().hex)
        assert out.job_id
        return out.job_id

    def intake(self, jobs: Sequence[str]) -> list[Inbound]:
        """The intake's round for these jobs' callbacks: the messages as the broker hands
        them to the consumer (with the properties the intake wrote)."""
        outgoing = [Outgoing(self.ci.callback(j), {"CMQ_QUEUE": "q"}) for j in jobs]
        self.observers.intake_forwarding("q", TOPIC, outgoing, 0.01)
        self.observers.intake_forwarded("q", [None] * len(outgoing))
        received = []
        for o in outgoing:
            stub = StubMessage(o.body, TOPIC, props=o.properties)
            received.append(Inbound(stub, o.body, TOPIC, stub.id, stub.publish_ms))
        return received

    def of(self, job: str) -> list[ReadableSpan]:
        """Every finished span in the traces of the spans that name ``job``, plus the
        batch spans they link to and those next to them (under the same consume span)."""
        spans = self.spans.get_finished_spans()
        names = [s for s in spans if (s.attributes or {}).get("asrd.job_id") == job]
        traces = {s.context.trace_id for s in names}
        mine = [s for s in spans if s.context.trace_id in traces]
        linked = {link.context.span_id for s in mine for link in s.links}
        batch = [s for s in spans if s.name in BATCH_SPANS and s not in mine and s.parent]
        under = {s.parent.span_id for s in batch if s.context.span_id in linked and s.parent}
        return mine + [s for s in batch if s.parent and s.parent.span_id in under]

    def close(self) -> None:
        self.ledger.close()


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


def named(spans: list[ReadableSpan], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def one(spans: list[ReadableSpan], name: str) -> ReadableSpan:
    [span] = named(spans, name)
    return span


def parent_of(child: ReadableSpan, parent: ReadableSpan) -> bool:
    return child.parent is not None and child.parent.span_id == parent.context.span_id


def test_a_delivered_job_has_one_trace_from_submit_to_every_sink(rig: Rig) -> None:
    first, second = rig.submit(), rig.submit()
    rig.worker.process_batch(rig.intake([first, second]))
    assert len(rig.transport.acked) == 2

    spans = rig.of(first)
    assert {s.context.trace_id for s in spans} == {spans[0].context.trace_id}
    submit = one(spans, "asrd.submit")
    assert submit.parent is None and submit.attributes["asrd.queue_id"].startswith("p")
    create, ci_job = one(spans, "ci.create"), one(spans, "ci.job")
    assert parent_of(create, submit) and create.attributes["asrd.attempt"] == 1
    assert parent_of(ci_job, submit)
    # ci.job spans CI's own CreationTime to EndTime (17:43:01 to 17:43:25 in the detail).
    assert ci_job.end_time - ci_job.start_time == 24 * 10**9
    move, consume = one(spans, "cmq.move"), one(spans, "pulsar.consume")
    assert parent_of(move, ci_job) and parent_of(consume, move)
    assert consume.attributes["messaging.system"] == "pulsar"
    assert consume.attributes["messaging.destination.name"] == TOPIC
    assert consume.attributes["messaging.operation.type"] == "process"
    assert consume.attributes["asrd.attempt"] == 1
    assert move.attributes["messaging.destination.name"] == TOPIC
    batch = [one(spans, name) for name in BATCH_SPANS]
    for span in batch:
        assert parent_of(span, consume)
        assert span.attributes["messaging.batch.message_count"] == 2
    assert [s.attributes["asrd.sink"] for s in batch[1:3]] == ["files", "archive"]
    assert batch[1].attributes["asrd.queue_id"] == "p5275b560c7fd498db9a36e5e202827b6"

    # The other job of the batch: its own trace, linked once to the batch's first span (the
    # others are next to it), where its job id is among the described ones.
    others = rig.of(second)
    theirs = one(others, "pulsar.consume")
    assert theirs.context.trace_id != consume.context.trace_id
    assert theirs.attributes["asrd.job_id"] == second
    assert [link.context.span_id for link in theirs.links] == [batch[0].context.span_id]
    assert {s.name for s in others} >= set(BATCH_SPANS)

    # asrd jobs show prints the trace id.
    view = show(rig.ledger, rig.ci, first, 0.0)  # type: ignore[arg-type]
    assert view["trace_id"] == f"{submit.context.trace_id:032x}"


def test_a_retried_delivery_shows_both_attempts(rig: Rig) -> None:
    job = rig.submit()
    rig.ci.running[job] = 1  # the first describe finds the job still Running
    rig.worker.process_batch(rig.intake([job]))
    assert [r.attempt for r in rig.transport.retried] == [1]
    rig.worker.process_batch(rig.transport.redeliver())
    assert len(rig.transport.acked) == 1

    spans = rig.of(job)
    assert len({s.context.trace_id for s in spans}) == 1
    move = one(spans, "cmq.move")
    consumes = sorted(named(spans, "pulsar.consume"), key=lambda s: s.attributes["asrd.attempt"])
    assert [c.attributes["asrd.attempt"] for c in consumes] == [1, 2]
    assert all(parent_of(c, move) for c in consumes)
    assert consumes[0].status.status_code.name == "ERROR"
    assert consumes[0].attributes["asrd.outcome"] == "retry"
    assert consumes[1].attributes["asrd.outcome"] == "done"
    assert [parent_of(one(spans, "sink.files"), c) for c in consumes] == [False, True]


def test_a_job_submitted_elsewhere_gets_one_trace_from_the_intake_on(rig: Rig) -> None:
    # Submitted where tracing was off: the ledger knows the job but keeps no trace context.
    untraced = rig.untraced()
    job = untraced.submit(JobSpec(input_object="b.mp3"), uuid.uuid4().hex).job_id
    assert job and rig.ledger.trace_parents([job]) == {}
    rig.worker.process_batch(rig.intake([job]))
    again = rig.intake([job])  # a duplicate callback continues the same trace
    rig.worker.process_batch(again)

    spans = rig.of(job)
    assert len({s.context.trace_id for s in spans}) == 1
    assert not named(spans, "asrd.submit")
    roots = [s for s in spans if s.parent is None]
    assert [s.name for s in roots] == ["ci.job"]
    assert len(named(spans, "cmq.move")) == 2 and len(named(spans, "pulsar.consume")) == 2
    kept = rig.ledger.trace_parents([job])[job]
    assert tracing.trace_id(kept) == f"{roots[0].context.trace_id:032x}"

    # A job the ledger does not know at all still gets a trace from the intake on.
    stranger = rig.ci.create_job({})["JobId"]
    rig.worker.process_batch(rig.intake([stranger]))
    theirs = rig.of(stranger)
    assert len({s.context.trace_id for s in theirs}) == 1
    assert {s.name for s in theirs} >= {"ci.job", "cmq.move", "pulsar.consume", *BATCH_SPANS}


def test_the_url_intake_continues_the_jobs_trace_into_the_message(
    rig: Rig, broker: Broker, topic: str
) -> None:
    """A real URL receiver producing to a real Pulsar topic, as CI's Url callbacks reach it."""
    client = quiet_client(broker.service_url)
    try:
        consumer = client.subscribe(topic, "reader")
        receiver = UrlReceiver(
            UrlIntakeSettings(token="callback-secret-0123"), Forwarder(client, topic), rig.observers
        )
        job = rig.submit()
        untraced = rig.untraced()
        elsewhere = untraced.submit(JobSpec(input_object="b.mp3"), uuid.uuid4().hex).job_id
        assert elsewhere and rig.ledger.trace_parents([elsewhere]) == {}
        for j in (job, elsewhere):
            assert receiver.accept("callback-secret-0123", rig.ci.callback(j), {}).status == 200
        got = [consumer.receive(timeout_millis=30_000) for _ in range(2)]
        received = []
        for m in got:
            props = dict(m.properties())
            assert props["ASRD_SOURCE"] == "url" and "traceparent" in props
            stub = StubMessage(m.data(), TOPIC, props=props)
            received.append(Inbound(stub, m.data(), TOPIC, stub.id, stub.publish_ms))
        rig.worker.process_batch(received)
        assert len(rig.transport.acked) == 2
    finally:
        client.close()

    spans = rig.of(job)
    assert len({s.context.trace_id for s in spans}) == 1
    submit, ci_job, move = one(spans, "asrd.submit"), one(spans, "ci.job"), one(spans, "url.move")
    consume = one(spans, "pulsar.consume")
    assert parent_of(ci_job, submit) and parent_of(move, ci_job) and parent_of(consume, move)
    assert move.attributes["messaging.destination.name"] == topic
    assert "asrd.cmq.queue" not in move.attributes and not named(spans, "cmq.move")
    # The message carried the move's context.
    [parent] = [p["traceparent"] for p in (dict(m.properties()) for m in got)
                if p["traceparent"].split("-")[1] == f"{submit.context.trace_id:032x}"]  # fmt: skip
    assert parent.split("-")[2] == f"{move.context.span_id:016x}"
    # A job submitted without tracing: its trace starts at the URL intake, kept in the ledger.
    theirs = rig.of(elsewhere)
    assert [s.name for s in theirs if s.parent is None] == ["ci.job"]
    assert {s.name for s in theirs} >= {"ci.job", "url.move", "pulsar.consume"}
    kept = rig.ledger.trace_parents([elsewhere])[elsewhere]
    assert tracing.trace_id(kept) == f"{theirs[0].context.trace_id:032x}"


OPENMETRICS_ACCEPT = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"


def exemplars(text: str, family: str) -> list[str]:
    """The trace ids of the exemplars on ``family``'s buckets in an OpenMetrics exposition."""
    return re.findall(
        rf'^{family}_bucket\{{.*\}} \S+ # \{{trace_id="([0-9a-f]{{32}})"\}}', text, re.M
    )


def test_the_latency_histograms_exemplars_point_at_the_jobs_traces(rig: Rig) -> None:
    job = rig.submit()
    rig.worker.process_batch(rig.intake([job]))
    assert len(rig.transport.acked) == 1
    consume = one(rig.of(job), "pulsar.consume")
    trace = f"{consume.context.trace_id:032x}"

    ci: Any = rig.ci
    metrics = rig.metrics
    app = create_app(
        ApiContext(
            ci, rig.settings.ci, lambda: True, metrics.exposition, openmetrics=metrics.openmetrics
        )
    )
    scraped = TestClient(app).get("/metrics", headers={"Accept": OPENMETRICS_ACCEPT})
    assert scraped.status_code == 200
    assert scraped.headers["content-type"].startswith("application/openmetrics-text")
    assert exemplars(scraped.text, "asrd_delivery_latency_seconds") == [trace]
    # The describe's duration points at the trace its ci.describe span is in.
    assert exemplars(scraped.text, "asrd_ci_request_duration_seconds") == [trace]
    # A scraper that asks for the Prometheus text gets it, without exemplars.
    plain = TestClient(app).get("/metrics")
    assert plain.headers["content-type"].startswith("text/plain")
    assert "asrd_delivery_latency_seconds_bucket" in plain.text and "trace_id" not in plain.text


def settle_one(observers: Observers) -> None:
    """A message consumed and delivered, as the worker reports it."""
    m = message(b"body")
    info = MessageInfo(m.origin_id, 1, int(time.time() * 1000) - 2000)  # 2 s ago
    observers.consuming([m], [info])
    observers.message_received(info)
    observers.settled(
        info, Verdict(Outcome.DONE, "", "s-1", delivered=("files",)), Settlement(Action.ACK)
    )


def test_no_exemplar_without_tracing_or_sampling(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    off = Metrics()
    off.trace_of = tracing.trace_lookup(tracing.observers(None))  # as the daemon wires it
    settle_one(Observers([off]))
    # A trace not sampled is not pointed at either.
    unsampled = TracerProvider(sampler=ALWAYS_OFF).get_tracer("test")
    tracer = TracingObserver(unsampled, None)
    dropped = Metrics()
    dropped.trace_of = tracing.trace_lookup([tracer])
    settle_one(Observers([tracer, dropped]))
    for metrics in (off, dropped):
        text = metrics.openmetrics().decode()
        assert 'asrd_delivery_latency_seconds_bucket{le="5.0"} 1.0' in text
        assert "trace_id" not in text


def test_the_trace_rule() -> None:
    assert not tracing.wanted({})
    assert not tracing.wanted({"OTEL_TRACES_EXPORTER": "none"})
    assert tracing.wanted({"OTEL_TRACES_EXPORTER": "otlp"})
    assert tracing.wanted({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"})
    assert not tracing.wanted(
        {"OTEL_SDK_DISABLED": "true", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}
    )
    assert tracing.trace_id("00-" + "a" * 32 + "-" + "b" * 16 + "-01 k=v") == "a" * 32
    assert tracing.trace_id(None) is None


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    server = request.getfixturevalue("postgres") if request.param == "postgresql" else None
    return Store(request.param, tmp_path, server)


def test_a_version_6_ledger_gains_the_trace_context_column(store: Store) -> None:
    t = store.time_type
    version = (
        ["PRAGMA user_version = 6"]
        if store.backend == "sqlite"
        else ["CREATE TABLE asrd_schema (version INTEGER NOT NULL)",
              "INSERT INTO asrd_schema VALUES (6)"]
    )  # fmt: skip
    store.raw(
        "CREATE TABLE jobs (client_token TEXT PRIMARY KEY, job_id TEXT UNIQUE,"
        f" input TEXT NOT NULL, status TEXT NOT NULL, submitted_at {t} NOT NULL,"
        f" deadline_at {t} NOT NULL, settled_at {t}, ci_state TEXT NOT NULL DEFAULT '',"
        f" checked_at {t}, reason TEXT NOT NULL DEFAULT '', queue_id TEXT NOT NULL DEFAULT '',"
        " user_data TEXT NOT NULL DEFAULT '')",
        "INSERT INTO jobs (client_token, job_id, input, status, submitted_at, deadline_at)"
        " VALUES ('a', 's-a', 'a.mp3', 'owed', 1, 2), ('b', 's-b', 'b.mp3', 'owed', 1, 2)",
        *version,
    )
    ledger = store.open()
    try:
        assert ledger.trace_parents(["s-a", "s-b"]) == {}
        kept = "00-" + "1" * 32 + "-" + "2" * 16 + "-01 vendor=x"
        ledger.set_trace_parent("s-a", kept)
        ledger.set_trace_parent("s-unknown", kept)  # a job the ledger does not have: nothing
        assert ledger.trace_parents(["s-a", "s-b", "s-unknown"]) == {"s-a": kept}
        assert ledger.trace_parents([]) == {}
    finally:
        ledger.close()
    assert store.version() == SCHEMA_VERSION


def test_an_empty_exporter_variable_means_the_default_otlp(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Exported over OTLP/HTTP to a receiver (tests/otlp_receiver.py), as the daemon does."""
    from asrd import tracing_otel

    receiver = otlp_receiver.start()
    try:
        monkeypatch.setenv("OTEL_TRACES_EXPORTER", "")
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{receiver.endpoint}/v1/traces")
        tracing_otel.make_tracer(os.environ).start_span("probe").end()
        tracing_otel.flush()
        assert [s.name for s in receiver.snapshot()] == ["probe"]
    finally:
        receiver.close()
    with pytest.raises(ValueError, match="not 'jaeger'"):
        tracing_otel.make_tracer({"OTEL_TRACES_EXPORTER": "jaeger"})
