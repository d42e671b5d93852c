"""The sink interface: deliver one record, idempotently, or raise ``SinkError``; optionally
several at once (``BatchSink``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from ..result import ResultRecord


class SinkError(Exception):
    """Delivery failed; ``permanent`` means retrying the same record cannot succeed. ``outage``
    names what cannot work now (``"credentials"``: the sink's keys were refused; a sink's own
    name for the sink as a whole): the message is put back without spending an attempt and
    work pauses until it works again."""

    def __init__(self, message: str, permanent: bool = False, outage: str = "") -> None:
        super().__init__(message)
        self.permanent = permanent
        self.outage = outage


class Sink(Protocol):
    """A destination for result records.

    ``deliver`` must be idempotent per ``record.job_id``: the same job may arrive again after a
    crash between delivery and the ledger entry. It returns only once the record is durable.

    A sink that can tell when it is down as a whole (a full disk, a refused connection) raises
    ``SinkError(..., outage=<its name>)`` and may have a ``probe()`` method that raises while
    the fault lasts: deliveries to it then pause until the probe passes.
    """

    name: str

    def deliver(self, record: ResultRecord) -> None: ...

    def close(self) -> None: ...


class BatchSink(Sink, Protocol):
    """A sink that takes several records at once (files written then synced together, one
    producer flush). Returns the records that failed, by job id; the others are durable."""

    def deliver_many(self, records: Sequence[ResultRecord]) -> dict[str, SinkError]: ...


def deliver_all(sink: Sink, records: Sequence[ResultRecord]) -> dict[str, SinkError]:
    """``records`` to ``sink``: at once where it takes batches, else one by one. One record's
    failure never fails the others."""
    many = getattr(sink, "deliver_many", None)
    if many is not None:
        failed: dict[str, SinkError] = many(records)
        return failed
    failed = {}
    for record in records:
        try:
            sink.deliver(record)
        except SinkError as exc:
            failed[record.job_id] = exc
    return failed
