"""COS sink: ``<prefix><job_id>.<format>`` objects in a bucket, via the official SDK.

A put of a whole object is atomic and replaces the previous one, so the sink is idempotent.
"""

from __future__ import annotations

from ..ci import CiClient, CiError
from ..config import CosSinkSettings, Settings
from ..formats import render
from ..result import ResultRecord
from ..services import Services
from .base import SinkError

_TYPES = {"json": "application/json", "txt": "text/plain", "srt": "application/x-subrip"}


class CosSink:
    def __init__(self, settings: CosSinkSettings, client: CiClient) -> None:
        self.name = settings.name
        self.bucket = settings.bucket or client.bucket
        self.prefix = settings.prefix
        self.formats = list(dict.fromkeys(settings.formats))
        self._client = client

    def deliver(self, record: ResultRecord) -> None:
        # json last: its presence means every other format is already in place.
        for fmt in sorted(self.formats, key=lambda f: f == "json"):
            key = f"{self.prefix}{record.job_id}.{fmt}"
            content_type = _TYPES.get(fmt, "text/vtt") + "; charset=utf-8"
            try:
                self._client.put_object(key, render(record, fmt), content_type, bucket=self.bucket)
            except CiError as exc:
                raise SinkError(
                    f"cos://{self.bucket}/{key}: {exc}",
                    not exc.transient,
                    outage="credentials" if exc.auth else "",
                ) from None

    def close(self) -> None:
        return None


def build(settings: CosSinkSettings, shared: Settings, *, services: Services) -> CosSink:
    """The ``asrd.sinks`` entry point for ``type = "cos"``: it puts through the process's CI
    client, so its requests use the keys, connection pool and metrics of every other call."""
    return CosSink(settings, services.ci)
