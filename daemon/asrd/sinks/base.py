"""The sink interface: deliver one record, idempotently, or raise ``SinkError``."""

from __future__ import annotations

from typing import Protocol

from ..result import ResultRecord


class SinkError(Exception):
    """Delivery failed; ``permanent`` means retrying the same record cannot succeed."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class Sink(Protocol):
    """A destination for result records.

    ``deliver`` must be idempotent per ``record.job_id``: the same job may arrive again after a
    crash between delivery and the ledger entry. It returns only once the record is durable.
    """

    name: str

    def deliver(self, record: ResultRecord) -> None: ...

    def close(self) -> None: ...
