"""Sinks and routing: which configured sink receives which record."""

from __future__ import annotations

from dataclasses import dataclass

from ..config import (
    FileSinkSettings,
    SinkSettings,
    StdoutSinkSettings,
    WebhookSinkSettings,
    When,
)
from ..result import ResultRecord
from .base import Sink, SinkError
from .file import FileSink
from .stdout import StdoutSink
from .webhook import WebhookSink

__all__ = ["Route", "Sink", "SinkError", "build_routes"]


@dataclass(frozen=True)
class Route:
    sink: Sink
    when: When

    def selects(self, record: ResultRecord) -> bool:
        return record.state in self.when.state


def build(settings: SinkSettings) -> Sink:
    if isinstance(settings, FileSinkSettings):
        return FileSink(settings)
    if isinstance(settings, StdoutSinkSettings):
        return StdoutSink(settings)
    if isinstance(settings, WebhookSinkSettings):
        return WebhookSink(settings)
    raise TypeError(f"no sink for {type(settings).__name__}")


def build_routes(settings: list[SinkSettings]) -> list[Route]:
    return [Route(build(s), s.when) for s in settings]
