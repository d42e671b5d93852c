"""Sinks and routing: which configured sink receives which record."""

from __future__ import annotations

from dataclasses import dataclass

from ..ci import CiClient
from ..config import (
    CosSinkSettings,
    FileSinkSettings,
    PluginSinkSettings,
    PulsarSinkSettings,
    Settings,
    SinkSettings,
    StdoutSinkSettings,
    WebhookSinkSettings,
    When,
)
from ..result import ResultRecord
from . import plugin
from .base import Sink, SinkError
from .cos import CosSink
from .file import FileSink
from .pulsar import PulsarSink
from .stdout import StdoutSink
from .webhook import WebhookSink

__all__ = ["Route", "Sink", "SinkError", "build_routes"]


@dataclass(frozen=True)
class Route:
    sink: Sink
    when: When

    def selects(self, record: ResultRecord) -> bool:
        return record.state in self.when.state


def build(sink: SinkSettings, settings: Settings) -> Sink:
    """One sink; ``settings`` supplies what sinks share with the rest (CI credentials, broker)."""
    if isinstance(sink, FileSinkSettings):
        return FileSink(sink)
    if isinstance(sink, StdoutSinkSettings):
        return StdoutSink(sink)
    if isinstance(sink, WebhookSinkSettings):
        return WebhookSink(sink)
    if isinstance(sink, PulsarSinkSettings):
        token = settings.pulsar.token.get_secret_value() if settings.pulsar.token else ""
        return PulsarSink(sink, settings.pulsar.service_url, token)
    if isinstance(sink, CosSinkSettings):
        return CosSink(sink, CiClient(settings.ci))
    if isinstance(sink, PluginSinkSettings):
        return plugin.load(sink)
    raise TypeError(f"no sink for {type(sink).__name__}")


def build_routes(settings: Settings) -> list[Route]:
    return [Route(build(s, settings), s.when) for s in settings.sinks]
