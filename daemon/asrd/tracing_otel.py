"""The OpenTelemetry side of tracing (imported only when the ``asrd[otel]`` extra is installed and
the environment asks for traces; ``tracing.py`` decides).

One trace per CI job. ``asrd.submit`` starts it (``ci.create`` for each create request) and its
context is kept with the job in the ledger. Either intake (the CMQ queue's or the URL one) finds
it there by job id (or starts the trace when the job was submitted elsewhere), adds ``ci.job``
from CI's own creation and end times and ``cmq.move`` (``url.move``), and writes the W3C
``traceparent``/``tracestate`` into the Pulsar message's properties. The consumer continues
from them: ``pulsar.consume`` for each attempt (a retry is a new span with its
``asrd.attempt``); then ``ci.describe`` (one multi-id request), each ``sink.<name>`` (one
delivery of a batch) and ``ledger.commit`` (one transaction) once per batch, in the first job's
trace and linked from the others'.

Stages do work for several jobs at once; their hooks are called once per batch, and the spans
of a batch are kept per thread (a batch never leaves the thread that received it).
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.trace import Span, SpanKind, Status, StatusCode, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from . import callback
from .broker import base_topic
from .ledger import JobBook
from .observers import Delivered, MessageInfo, Observer, Outgoing, Received
from .vocabulary import Settlement, Verdict

__all__ = ["TracingObserver", "flush", "make_tracer"]

# W3C trace context names (https://www.w3.org/TR/trace-context/), as message properties.
TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
_W3C = TraceContextTextMapPropagator()
_provider: TracerProvider | None = None

# CI's times in a callback body, XML or JSON (``2026-01-02T03:04:05+0800``).
_CI_TIME = r"\W{1,4}(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d))"
_CREATED = re.compile(rb"CreationTime" + _CI_TIME.encode())
_ENDED = re.compile(rb"EndTime" + _CI_TIME.encode())

# Attribute names: OpenTelemetry's messaging conventions, then asrd's own.
SYSTEM = "messaging.system"
DESTINATION = "messaging.destination.name"
OPERATION = "messaging.operation.type"
OPERATION_NAME = "messaging.operation.name"
MESSAGE_ID = "messaging.message.id"
BATCH_COUNT = "messaging.batch.message_count"
JOB_ID = "asrd.job_id"
QUEUE_ID = "asrd.queue_id"
SINK = "asrd.sink"
ATTEMPT = "asrd.attempt"


def _exporter(name: str) -> SpanExporter:
    if name == "otlp":
        return OTLPSpanExporter()
    if name == "console":
        return ConsoleSpanExporter()
    raise ValueError(f"OTEL_TRACES_EXPORTER: asrd knows otlp, console and none, not {name!r}")


def make_tracer(env: Mapping[str, str]) -> Tracer:
    """asrd's tracer provider from the standard ``OTEL_*`` variables (the SDK reads the sampler,
    batch, endpoint and resource ones itself). Raises ValueError on a bad value.

    It is not made OpenTelemetry's global provider: FastAPI would then trace every request to
    the sidecar API (each probe and metrics scrape a trace of its own)."""
    global _provider
    protocol = env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or env.get(
        "OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"
    )
    if protocol.strip() != "http/protobuf":
        raise ValueError(
            f"OTEL_EXPORTER_OTLP_PROTOCOL: asrd exports http/protobuf only, not {protocol!r}"
        )
    # Unset or empty: the specification's default, otlp.
    names = [n.strip().lower() for n in (env.get("OTEL_TRACES_EXPORTER") or "otlp").split(",")]
    exporters = [_exporter(n) for n in names if n and n != "none"]
    named = env.get("OTEL_SERVICE_NAME") or "service.name=" in env.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    provider = TracerProvider(resource=Resource.create({} if named else {"service.name": "asrd"}))
    for exporter in exporters:
        provider.add_span_processor(BatchSpanProcessor(exporter))
    _provider = provider
    return provider.get_tracer("asrd")


def flush() -> None:
    if _provider is not None:
        _provider.force_flush()


def _ns_ago(seconds: float, now_ns: int | None = None) -> int:
    return (now_ns if now_ns is not None else time.time_ns()) - int(seconds * 1e9)


def _ci_ns(pattern: re.Pattern[bytes], body: bytes) -> int | None:
    m = pattern.search(body)
    if m is None:
        return None
    try:
        return int(datetime.fromisoformat(m[1].decode()).timestamp() * 1e9)
    except ValueError:
        return None


def carrier_of(span: Span) -> str:
    """What the ledger keeps: ``traceparent``, then ``tracestate`` after a space if any."""
    out: dict[str, str] = {}
    _W3C.inject(out, context=trace.set_span_in_context(span))
    state = out.get(TRACESTATE, "")
    return out[TRACEPARENT] + (f" {state}" if state else "")


def context_of(kept: str) -> Context:
    parent, _, state = kept.partition(" ")
    carrier = {TRACEPARENT: parent, **({TRACESTATE: state} if state else {})}
    return _W3C.extract(carrier, context=Context())


def _job_of(body: bytes) -> str:
    try:
        return callback.parse(body).job_id
    except callback.BadMessage:
        return ""


class _Batch(threading.local):
    """The spans of the batch a thread is working on."""

    def __init__(self) -> None:
        self.moves: list[Span] = []
        self.consumes: list[Span] = []
        self.by_message: dict[str, Span] = {}
        self.by_job: dict[str, Span] = {}
        self.ids: list[str] = []  # the message ids, as ``consumes``
        self.job_of: dict[str, str] = {}  # message id -> job id, set on its span when settled
        self.linked: set[tuple[int, int]] = set()  # (consume span, batch parent) linked once
        self.traced: dict[str, Span] = {}  # message id -> consume span, until the next batch
        self.submit: Span | None = None  # the submit under way


class TracingObserver(Observer):
    """Opens and closes the spans of each job's trace from the stages' hooks."""

    def __init__(self, tracer: Tracer, ledger: JobBook | None) -> None:
        self._tracer = tracer
        self._ledger = ledger
        self._submits: dict[str, tuple[Span, int]] = {}
        self._lock = threading.Lock()
        self._batch = _Batch()

    # -- submit ----------------------------------------------------------------------------
    def submit_started(self, token: str) -> None:
        span = self._tracer.start_span("asrd.submit", context=Context(), kind=SpanKind.PRODUCER)
        with self._lock:
            self._submits[token] = (span, 0)
        self._batch.submit = span

    def create_answered(self, token: str, attempt: int, seconds: float, error: str) -> None:
        with self._lock:
            parent = self._submits.get(token)
        if parent is None:
            return
        span = self._tracer.start_span(
            "ci.create",
            context=trace.set_span_in_context(parent[0]),
            kind=SpanKind.CLIENT,
            attributes={ATTEMPT: attempt},
            start_time=_ns_ago(seconds),
        )
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()

    def submit_ended(
        self, token: str, job_id: str | None, status: str, queue_id: str, error: str
    ) -> None:
        with self._lock:
            found = self._submits.pop(token, None)
        if found is None:
            return
        span = found[0]
        self._batch.submit = None
        span.set_attribute("asrd.submit.status", status)
        if job_id:
            span.set_attribute(JOB_ID, job_id)
        if queue_id:
            span.set_attribute(QUEUE_ID, queue_id)
        if error:
            span.set_status(Status(StatusCode.ERROR, error))
        span.end()
        if job_id and status in ("submitted", "adopted") and self._ledger is not None:
            self._ledger.set_trace_parent(job_id, carrier_of(span))

    # -- intake ----------------------------------------------------------------------------
    def intake_forwarding(
        self, queue: str, topic: str, messages: Sequence[Outgoing], received_s: float
    ) -> None:
        """Both intakes (``queue`` "" for the URL one) come through here."""
        self._end_moves([])
        jobs = [_job_of(m.body) for m in messages]
        known: dict[str, str] = {}
        if self._ledger is not None and any(jobs):
            known = self._ledger.trace_parents([j for j in jobs if j])
        started = _ns_ago(received_s)
        move_attrs: dict[str, Any] = {
            SYSTEM: "pulsar",
            DESTINATION: topic,
            OPERATION: "send",
            OPERATION_NAME: "send",
            **({"asrd.cmq.queue": queue} if queue else {}),
        }
        begun: dict[str, str] = {}  # jobs whose trace starts here: kept for the next ones
        for m, job in zip(messages, jobs, strict=True):
            kept = known.get(job) or begun.get(job)
            parent = context_of(kept) if kept else Context()
            root: Span | None = None
            attrs: dict[str, Any] = {JOB_ID: job} if job else {}
            created, ended = _ci_ns(_CREATED, m.body), _ci_ns(_ENDED, m.body)
            if created is not None and ended is not None and ended >= created:
                ci_job = self._tracer.start_span(
                    "ci.job", context=parent, attributes=attrs, start_time=created
                )
                ci_job.end(end_time=ended)
                parent = trace.set_span_in_context(ci_job)
                root = ci_job
            move = self._tracer.start_span(
                "cmq.move" if queue else "url.move",
                context=parent,
                kind=SpanKind.PRODUCER,
                attributes={**move_attrs, **attrs},
                start_time=started,
            )
            _W3C.inject(m.properties, context=trace.set_span_in_context(move))
            self._batch.moves.append(move)
            if job and not kept:
                begun[job] = carrier_of(root or move)
        if begun and self._ledger is not None:
            # A job submitted elsewhere (or before tracing was on): its trace starts here.
            for job, kept in begun.items():
                self._ledger.set_trace_parent(job, kept)

    def intake_forwarded(self, queue: str, failures: Sequence[str | None]) -> None:
        self._end_moves(failures)

    def _end_moves(self, failures: Sequence[str | None]) -> None:
        """End the moves of this thread's round (``failures``: what the broker answered)."""
        moves, self._batch.moves = self._batch.moves, []
        for i, span in enumerate(moves):
            failed = failures[i] if i < len(failures) else None
            if failed is not None:
                span.set_status(Status(StatusCode.ERROR, failed[:500]))
            span.end()

    # -- consumer --------------------------------------------------------------------------
    def consuming(self, messages: Sequence[Received], infos: Sequence[MessageInfo]) -> None:
        b = self._batch
        for message_id, left in b.by_message.items():  # a batch left unsettled: close it
            job = b.job_of.get(message_id)
            if job:
                left.set_attribute(JOB_ID, job)
            left.end()
        b.consumes, b.by_message, b.by_job, b.traced = [], {}, {}, {}
        b.ids, b.job_of, b.linked = [], {}, set()
        for m, info in zip(messages, infos, strict=True):
            props = _properties(m)
            parent = _W3C.extract(props, context=Context()) if TRACEPARENT in props else Context()
            span = self._tracer.start_span(
                "pulsar.consume",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes={
                    SYSTEM: "pulsar",
                    DESTINATION: base_topic(m.origin_topic),
                    OPERATION: "process",
                    OPERATION_NAME: "consume",
                    MESSAGE_ID: info.message_id,
                    ATTEMPT: info.attempt,
                },
            )
            b.consumes.append(span)
            b.ids.append(info.message_id)
            b.by_message[info.message_id] = b.traced[info.message_id] = span

    def batch_jobs(self, positions: Mapping[str, list[int]]) -> None:
        b = self._batch
        if not b.consumes:
            return
        for job, where in positions.items():
            for i in where:
                if i < len(b.ids):
                    b.job_of[b.ids[i]] = job
            if where and where[0] < len(b.consumes):
                b.by_job[job] = b.consumes[where[0]]

    def described(
        self, job_ids: Sequence[str], found: Mapping[str, object], seconds: float
    ) -> None:
        failed = sum(1 for j in job_ids if not isinstance(found.get(j), dict))
        self._batch_span("ci.describe", job_ids, {"asrd.not_described": failed}, seconds, failed)

    def sink_called(
        self,
        sink: str,
        records: Sequence[Delivered],
        errors: Mapping[str, Exception],
        seconds: float,
    ) -> None:
        attrs: dict[str, Any] = {SINK: sink, "asrd.refused": len(errors)}
        queues = {r.queue_id for r in records}
        if len(queues) == 1:
            attrs[QUEUE_ID] = queues.pop()
        jobs = [r.job_id for r in records]
        self._batch_span(f"sink.{sink}", jobs, attrs, seconds, len(errors), SpanKind.PRODUCER)

    def ledger_committed(self, records: Sequence[Delivered], seconds: float) -> None:
        attrs = {"db.operation.name": "COMMIT"}
        self._batch_span("ledger.commit", [r.job_id for r in records], attrs, seconds)

    def _batch_span(
        self,
        name: str,
        job_ids: Sequence[str],
        attrs: dict[str, Any],
        seconds: float,
        failed: int = 0,
        kind: SpanKind = SpanKind.CLIENT,
    ) -> None:
        """One span for work done for several jobs at once (OpenTelemetry's pattern for batch
        processing): in the first job's trace, and linked from every other job's consume span.
        Per-job copies would show the same interval again and cost a span per job each."""
        parents = list(self._parents(job_ids).values())
        first = parents[0] if parents else None
        attrs[BATCH_COUNT] = len(job_ids)
        if len(job_ids) == 1:
            attrs[JOB_ID] = job_ids[0]
        span = self._tracer.start_span(
            name,
            context=_in(first),
            kind=kind,
            attributes=attrs,
            start_time=_ns_ago(seconds),
        )
        if failed:
            span.set_status(Status(StatusCode.ERROR, f"{failed} of {len(job_ids)} jobs failed"))
        span.end()
        context = span.get_span_context()
        # Each other job's consume span links to the first of the batch spans under ``first``
        # only: the others sit next to it in that trace (a link each would cost more than the
        # spans themselves).
        linked, key = self._batch.linked, id(first)
        for p in parents[1:]:
            if p.is_recording() and (id(p), key) not in linked:
                linked.add((id(p), key))
                p.add_link(context)

    def settled(self, info: MessageInfo, verdict: Verdict, settlement: Settlement) -> None:
        b = self._batch
        span = b.by_message.pop(info.message_id, None)
        if span is None:
            return
        outcome = verdict.outcome.value
        attrs = {"asrd.outcome": outcome, "asrd.settlement": settlement.action.value}
        job = b.job_of.get(info.message_id)
        if job:
            attrs[JOB_ID] = job
        span.set_attributes(attrs)  # at once: each call takes the span's lock
        if outcome in ("retry", "dead"):
            span.set_status(Status(StatusCode.ERROR, verdict.reason[:500]))
        span.end()

    def publish_failed(self, info: MessageInfo, settlement: Settlement, error: str) -> None:
        b = self._batch
        span = b.by_message.pop(info.message_id, None)
        if span is not None:
            job = b.job_of.get(info.message_id)
            if job:
                span.set_attribute(JOB_ID, job)
            span.set_status(Status(StatusCode.ERROR, f"could not publish: {error}"[:500]))
            span.end()

    # -- exemplars ---------------------------------------------------------------------------
    def trace_of(self, message_id: str | None) -> str | None:
        """The sampled trace id of a message of this thread's latest batch; with None, of the
        work this thread is doing (a submit, or the open batch's first job, whose trace has the
        batch's spans). None when there is none or it is not sampled."""
        b = self._batch
        if message_id is not None:
            span = b.traced.get(message_id)
        elif b.submit is not None:
            span = b.submit
        else:
            span = next(iter(b.by_job.values()), None) if b.by_message else None
        if span is None:
            return None
        context = span.get_span_context()
        return format(context.trace_id, "032x") if context.trace_flags.sampled else None

    def _parents(self, job_ids: Sequence[str]) -> dict[str, Span]:
        """The consume span of each job in this thread's batch; jobs delivered without a
        message (the reconciler, the deadline sweep) continue their trace from the ledger."""
        by_job = self._batch.by_job
        out = {j: by_job[j] for j in job_ids if j in by_job}
        rest = [j for j in job_ids if j not in out]
        if rest and self._ledger is not None:
            for job, kept in self._ledger.trace_parents(rest).items():
                out[job] = trace.NonRecordingSpan(
                    trace.get_current_span(context_of(kept)).get_span_context()
                )
        return out


def _in(span: Span | None) -> Context:
    return trace.set_span_in_context(span) if span is not None else Context()


def _properties(m: Received) -> dict[str, str]:
    try:
        props = m.handle.properties()
    except AttributeError:  # a message made in memory (tests, tools) has none
        return {}
    return dict(props) if isinstance(props, Mapping) else {}
