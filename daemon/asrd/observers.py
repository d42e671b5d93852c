"""Named hooks the daemon's stages call as things happen; metrics and logging attach here.

The shape is dramatiq's middleware: an ``Observer`` has one no-op method per event and a
subscriber overrides the ones it cares about; ``Observers`` fans every call out to its members.
Stages only ever see an ``Observers`` (possibly empty), so they know nothing of Prometheus or
of the log format. An observer that raises is logged and skipped: a broken metric must never
fail a delivery.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import structlog

from .vocabulary import MessageInfo as MessageInfo
from .vocabulary import MovedCallback as MovedCallback
from .vocabulary import ReconcileReport, Settlement, SweepReport, Verdict

log = structlog.get_logger("asrd.observers")


class Outgoing(Protocol):
    """A message the intake is about to put on Pulsar (its properties may be added to)."""

    @property
    def body(self) -> bytes: ...

    @property
    def properties(self) -> dict[str, str]: ...


class Received(Protocol):
    """What observers may read of a message taken from the broker (never its body)."""

    @property
    def handle(self) -> Any: ...  # the client's message: its properties (trace context)

    @property
    def origin_topic(self) -> str: ...


class Delivered(Protocol):
    """What observers learn about a record handed to a sink (never its text)."""

    @property
    def job_id(self) -> str: ...

    @property
    def queue_id(self) -> str: ...


class Observer:
    """Override the hooks you need; every hook is called from the thread doing the work."""

    # -- consumer -------------------------------------------------------------------------
    def message_received(self, info: MessageInfo) -> None:
        """A message was taken from the broker and its attempt counted."""

    def verdict(self, info: MessageInfo, verdict: Verdict, seconds: float) -> None:
        """The pipeline decided about a message (``seconds``: time spent deciding)."""

    def settled(self, info: MessageInfo, verdict: Verdict, settlement: Settlement) -> None:
        """The message left this process: acknowledged, parked for a retry, or dead-lettered."""

    def dead_lettered(self, info: MessageInfo, reason: str) -> None:
        """The message was published to the dead-letter topic."""

    def publish_failed(self, info: MessageInfo, settlement: Settlement, error: str) -> None:
        """A retry or dead-letter copy could not be published: the message was negatively
        acknowledged instead and the broker keeps it."""

    def receive_failed(self, error: str) -> None:
        """The broker refused a receive (not a timeout)."""

    def pipeline_crashed(self, info: MessageInfo, exc: BaseException) -> None:
        """The pipeline raised instead of returning a verdict (a bug; the message is retried)."""

    # -- pipeline -------------------------------------------------------------------------
    def sink_delivered(self, sink: str, job_id: str, seconds: float) -> None:
        """A sink has the record (and the ledger says so)."""

    def sink_failed(self, sink: str, job_id: str, error: str, permanent: bool) -> None:
        """A sink refused the record."""

    def audio_delivered(self, queue: str, engine: str, seconds: float) -> None:
        """A job settled with this much audio (CI's AudioTime), from this queue and engine."""

    def ci_call(self, operation: str, status: str, seconds: float) -> None:
        """One request to CI/COS ended; ``status`` is ``ok`` or the error kind."""

    def reconcile_pass(self, report: ReconcileReport, seconds: float) -> None:
        """A reconcile pass over finished jobs ended."""

    def deadline_sweep(self, report: SweepReport) -> None:
        """A deadline sweep over overdue submitted jobs ended."""

    # -- intake (CMQ → Pulsar, URL callbacks → Pulsar) ------------------------------------------
    def intake_started(self, queue: str) -> None:
        """The intake began polling a notification queue."""

    def intake_moved(self, queue: str, count: int) -> None:
        """``count`` notifications were produced to Pulsar and deleted from the queue."""

    def callbacks_moved(self, topic: str, moved: Sequence[MovedCallback]) -> None:
        """These notifications are persisted on ``topic`` (called once per batch)."""

    def intake_lag(self, queue: str, seconds: float) -> None:
        """At a poll, the oldest notification received had waited this long in the queue (0
        when the poll found none)."""

    def intake_receive_error(self, queue: str, error: str) -> None:
        """A poll of the notification queue failed."""

    def intake_poll_ok(self, queue: str) -> None:
        """A poll of the notification queue answered (with or without messages)."""

    def intake_produce_errors(self, queue: str, count: int) -> None:
        """``count`` notifications could not be put on Pulsar (they stay in the queue)."""

    def intake_delete_errors(self, queue: str, count: int) -> None:
        """The queue refused to delete ``count`` moved notifications (they come again)."""

    def url_callback(self, accepted: bool) -> None:
        """A URL callback with a valid token was put on Pulsar (or the broker refused it)."""

    # -- one job's path, for tracing (each called once per batch, not per message) ----------
    def submit_started(self, token: str) -> None:
        """``asrd submit`` (or the API) began creating the job with this client token."""

    def create_answered(self, token: str, attempt: int, seconds: float, error: str) -> None:
        """One create request for ``token`` ended (``error``: empty when CI made the job)."""

    def submit_ended(
        self, token: str, job_id: str | None, status: str, queue_id: str, error: str
    ) -> None:
        """The submit of ``token`` ended: ``status`` as ``SubmitOutcome.status``."""

    def intake_forwarding(
        self, queue: str, topic: str, messages: Sequence[Outgoing], received_s: float
    ) -> None:
        """The intake is about to produce ``messages`` (received ``received_s`` ago) from
        ``queue`` ("" for the URL intake) to ``topic``; ``intake_forwarded`` follows."""

    def intake_forwarded(self, queue: str, failures: Sequence[str | None]) -> None:
        """The produce announced by ``intake_forwarding`` ended: per message, None when the
        broker persisted it, else why not."""

    def consuming(self, messages: Sequence[Received], infos: Sequence[MessageInfo]) -> None:
        """A batch of received messages goes to the pipeline; each is settled with
        ``settled`` or ``publish_failed``."""

    def batch_jobs(self, positions: Mapping[str, list[int]]) -> None:
        """The batch's job ids, each with the positions of its messages in the batch."""

    def described(
        self, job_ids: Sequence[str], found: Mapping[str, object], seconds: float
    ) -> None:
        """CI was asked about ``job_ids`` together (one multi-id describe, retries included)."""

    def sink_called(
        self,
        sink: str,
        records: Sequence[Delivered],
        errors: Mapping[str, Exception],
        seconds: float,
    ) -> None:
        """``sink`` was handed ``records`` at once; ``errors`` by job id."""

    def ledger_committed(self, records: Sequence[Delivered], seconds: float) -> None:
        """The deliveries of ``records`` were written to the ledger in one transaction."""

    # -- credentials and outages ----------------------------------------------------------------
    def credentials_refreshed(self, provider: str, expires_at: float | None, error: str) -> None:
        """The provider was asked for keys: new ones until ``expires_at`` (None: no expiry), or
        ``error`` (the old keys are kept while they last)."""

    def auth_failed(self, service: str, cause: str) -> None:
        """``service`` (ci, cos, cmq, credentials) refused asrd's keys or gave none."""

    def outage_changed(self, source: str, reason: str) -> None:
        """Work that depends on ``source`` paused (``reason``) or resumed (``""``)."""


class Observers(Observer):
    """Every hook called on each member in order; a member that raises is skipped."""

    def __init__(self, members: Iterable[Observer] = ()) -> None:
        self._members = list(members)

    def add(self, member: Observer) -> None:
        self._members.append(member)

    def _each(self, hook: str, *args: Any) -> None:
        for member in self._members:
            fn: Callable[..., None] = getattr(member, hook)
            try:
                fn(*args)
            except Exception:  # an observer's bug must not fail the work it watches
                log.exception("observer failed", observer=type(member).__name__, hook=hook)

    def message_received(self, info: MessageInfo) -> None:
        self._each("message_received", info)

    def verdict(self, info: MessageInfo, verdict: Verdict, seconds: float) -> None:
        self._each("verdict", info, verdict, seconds)

    def settled(self, info: MessageInfo, verdict: Verdict, settlement: Settlement) -> None:
        self._each("settled", info, verdict, settlement)

    def dead_lettered(self, info: MessageInfo, reason: str) -> None:
        self._each("dead_lettered", info, reason)

    def publish_failed(self, info: MessageInfo, settlement: Settlement, error: str) -> None:
        self._each("publish_failed", info, settlement, error)

    def receive_failed(self, error: str) -> None:
        self._each("receive_failed", error)

    def pipeline_crashed(self, info: MessageInfo, exc: BaseException) -> None:
        self._each("pipeline_crashed", info, exc)

    def sink_delivered(self, sink: str, job_id: str, seconds: float) -> None:
        self._each("sink_delivered", sink, job_id, seconds)

    def sink_failed(self, sink: str, job_id: str, error: str, permanent: bool) -> None:
        self._each("sink_failed", sink, job_id, error, permanent)

    def audio_delivered(self, queue: str, engine: str, seconds: float) -> None:
        self._each("audio_delivered", queue, engine, seconds)

    def ci_call(self, operation: str, status: str, seconds: float) -> None:
        self._each("ci_call", operation, status, seconds)

    def reconcile_pass(self, report: ReconcileReport, seconds: float) -> None:
        self._each("reconcile_pass", report, seconds)

    def deadline_sweep(self, report: SweepReport) -> None:
        self._each("deadline_sweep", report)

    def intake_started(self, queue: str) -> None:
        self._each("intake_started", queue)

    def intake_moved(self, queue: str, count: int) -> None:
        self._each("intake_moved", queue, count)

    def callbacks_moved(self, topic: str, moved: Sequence[MovedCallback]) -> None:
        self._each("callbacks_moved", topic, moved)

    def intake_lag(self, queue: str, seconds: float) -> None:
        self._each("intake_lag", queue, seconds)

    def intake_receive_error(self, queue: str, error: str) -> None:
        self._each("intake_receive_error", queue, error)

    def intake_poll_ok(self, queue: str) -> None:
        self._each("intake_poll_ok", queue)

    def intake_produce_errors(self, queue: str, count: int) -> None:
        self._each("intake_produce_errors", queue, count)

    def intake_delete_errors(self, queue: str, count: int) -> None:
        self._each("intake_delete_errors", queue, count)

    def url_callback(self, accepted: bool) -> None:
        self._each("url_callback", accepted)

    def submit_started(self, token: str) -> None:
        self._each("submit_started", token)

    def create_answered(self, token: str, attempt: int, seconds: float, error: str) -> None:
        self._each("create_answered", token, attempt, seconds, error)

    def submit_ended(
        self, token: str, job_id: str | None, status: str, queue_id: str, error: str
    ) -> None:
        self._each("submit_ended", token, job_id, status, queue_id, error)

    def intake_forwarding(
        self, queue: str, topic: str, messages: Sequence[Outgoing], received_s: float
    ) -> None:
        self._each("intake_forwarding", queue, topic, messages, received_s)

    def intake_forwarded(self, queue: str, failures: Sequence[str | None]) -> None:
        self._each("intake_forwarded", queue, failures)

    def consuming(self, messages: Sequence[Received], infos: Sequence[MessageInfo]) -> None:
        self._each("consuming", messages, infos)

    def batch_jobs(self, positions: Mapping[str, list[int]]) -> None:
        self._each("batch_jobs", positions)

    def described(
        self, job_ids: Sequence[str], found: Mapping[str, object], seconds: float
    ) -> None:
        self._each("described", job_ids, found, seconds)

    def sink_called(
        self,
        sink: str,
        records: Sequence[Delivered],
        errors: Mapping[str, Exception],
        seconds: float,
    ) -> None:
        self._each("sink_called", sink, records, errors, seconds)

    def ledger_committed(self, records: Sequence[Delivered], seconds: float) -> None:
        self._each("ledger_committed", records, seconds)

    def credentials_refreshed(self, provider: str, expires_at: float | None, error: str) -> None:
        self._each("credentials_refreshed", provider, expires_at, error)

    def auth_failed(self, service: str, cause: str) -> None:
        self._each("auth_failed", service, cause)

    def outage_changed(self, source: str, reason: str) -> None:
        self._each("outage_changed", source, reason)
