"""Plugin sinks: ``factory = "module:callable"`` builds a sink from another package (the other
way, an ``asrd.sinks`` entry point, needs no ``factory`` key; see ``asrd.sinks``)."""

from __future__ import annotations

import importlib
from typing import cast

from ..config import ConfigError, PluginSinkSettings, Settings
from .base import Sink


def build(settings: PluginSinkSettings, shared: Settings) -> Sink:
    """The ``asrd.sinks`` entry point for ``type = "plugin"``."""
    module_name, _, attr = settings.factory.partition(":")
    where = f"sinks.{settings.name}.factory"
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"config error: {where}: cannot load {settings.factory}: {exc}") from None
    sink = factory(settings.name, dict(settings.options))
    if not all(callable(getattr(sink, m, None)) for m in ("deliver", "close")):
        raise ConfigError(f"config error: {where}: {settings.factory} gave no deliver/close")
    return cast(Sink, sink)
