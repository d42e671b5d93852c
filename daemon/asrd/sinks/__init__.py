"""Sinks: the interface plugins implement, and building the configured ones by type.

Every sink type, asrd's own included, is an entry point in the ``asrd.sinks`` group whose name
is the ``type`` in ``[[sinks]]`` and whose value is a factory ``(settings, shared) -> Sink``:
``settings`` is that sink's table (for another package's type, an ``ExtensionSinkSettings``
with ``name``, ``when`` and ``options``), ``shared`` the whole configuration. A factory that
also takes a keyword parameter ``services`` gets the process's ``Services`` (its one CI client
and its observers); one that does not is called with the two arguments alone. A new sink type
is one module and one entry point; nothing here changes.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, cast

from ..ci import CiClient
from ..config import ConfigError, ExtensionSinkSettings, Settings
from ..formats import render
from ..result import ResultRecord, Segment, Word
from ..services import Services
from .base import BatchSink, Sink, SinkError
from .routing import Route

# The names other packages may rely on; tests/test_sinks_api.py pins them.
__all__ = [
    "ENTRY_POINT_GROUP",
    "BatchSink",
    "ExtensionSinkSettings",
    "ResultRecord",
    "Segment",
    "Services",
    "Sink",
    "SinkError",
    "SinkFactory",
    "Word",
    "render",
]

ENTRY_POINT_GROUP = "asrd.sinks"
# ``(settings, shared)``, or ``(settings, shared, *, services)`` for a factory that uses them.
SinkFactory = Callable[..., Sink]


def sink_types() -> dict[str, Any]:
    """Every installed sink type → its (not yet loaded) entry point."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def require_sinks(settings: Settings) -> None:
    """A command that delivers needs at least one sink; the others (submit, jobs, dlq) read
    no sinks at all."""
    if not settings.sinks:
        raise ConfigError(
            "config error: sinks: no [[sinks]] table; results are delivered to at least one sink"
        )


def _wants_services(factory: SinkFactory) -> bool:
    try:
        parameters = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # a callable without a signature takes the two arguments
        return False
    return "services" in parameters


def build_routes(settings: Settings, services: Services | None = None) -> list[Route]:
    """One route per ``[[sinks]]`` table, each sink built by its type's factory. Without
    ``services`` (a one-off build outside a process's composition), a factory that asks for
    them gets a CI client of their own."""
    require_sinks(settings)
    shared: list[Services] = [services] if services is not None else []
    types = sink_types()
    routes = []
    for index, sink_settings in enumerate(settings.sinks):
        where = f"sinks.{index}.type"
        ep = types.get(sink_settings.type)
        if ep is None:
            known = ", ".join(sorted(types))
            raise ConfigError(
                f"config error: {where}: no sink type {sink_settings.type!r} is installed "
                f"(known: {known})"
            )
        try:
            factory = cast(SinkFactory, ep.load())
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"config error: {where}: cannot load {ep.value}: {exc}") from None
        if _wants_services(factory):
            if not shared:
                shared.append(Services(CiClient(settings.ci)))
            sink = factory(sink_settings, settings, services=shared[0])
        else:
            sink = factory(sink_settings, settings)
        routes.append(Route(sink, sink_settings.when))
    return routes
