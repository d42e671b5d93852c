"""Whether this process traces, and the one place that knows: the optional ``asrd[otel]`` extra.

Tracing is on when all three hold:

1. the OpenTelemetry SDK and its OTLP/HTTP exporter are importable (``pip install 'asrd[otel]'``);
2. ``OTEL_SDK_DISABLED`` is not ``true``;
3. an exporter is named: ``OTEL_TRACES_EXPORTER`` is set to something other than ``none``, or,
   with it unset, ``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` is.

Rule 3 is stricter than the SDK's own default (OTLP to localhost): a daemon that never asked for
traces must not try to send them anywhere. Everything else (sampler, batch sizes, endpoint,
headers, service name, resource attributes) is the SDK's standard ``OTEL_*`` configuration.

When tracing is off, ``observers`` returns nothing, so the stages call only the empty hooks of
the observers they already have: no span, no allocation, no import of OpenTelemetry.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import structlog

from .config import ConfigError
from .ledger import JobBook
from .observers import Observer

__all__ = ["observers", "shutdown", "trace_id", "trace_lookup", "wanted"]

log = structlog.get_logger("asrd.tracing")

_lock = threading.Lock()
_setup: tuple[object] | None = None  # (the tracer, or None when off), once per process


def wanted(env: Mapping[str, str] | None = None) -> bool:
    """Whether the environment asks for traces (rules 2 and 3 above)."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    exporter = env.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if exporter:
        return exporter != "none"
    return bool(
        env.get("OTEL_EXPORTER_OTLP_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    )


def _tracer() -> object:
    """The process's tracer, made on first use; None when tracing is off."""
    global _setup
    with _lock:
        if _setup is None:
            _setup = (_make_tracer(),)
        return _setup[0]


def _make_tracer() -> object:
    if not wanted():
        return None
    try:
        from . import tracing_otel
    except ImportError as exc:
        log.warning(
            "OTEL_* asks for traces but the asrd[otel] extra is not installed: tracing is off",
            missing=exc.name or str(exc),
        )
        return None
    try:
        return tracing_otel.make_tracer(os.environ)
    except ValueError as exc:
        raise ConfigError(f"config error: {exc}") from None


def observers(ledger: JobBook | None) -> list[Observer]:
    """The tracing observer when tracing is on (``ledger``: where jobs' trace contexts are kept
    and found), else an empty list."""
    tracer = _tracer()
    if tracer is None:
        return []
    from .tracing_otel import TracingObserver

    return [TracingObserver(cast(Any, tracer), ledger)]


def trace_lookup(members: Sequence[Observer]) -> Callable[[str | None], str | None]:
    """Where the metrics' exemplars come from: the tracing observer among ``members`` (from
    ``observers``) tells the sampled trace of a message's work, or of this thread's; without one
    (tracing off), nothing."""
    if not members:
        return _no_trace
    from .tracing_otel import TracingObserver  # members exist: tracing is on and importable

    for member in members:
        if isinstance(member, TracingObserver):
            return member.trace_of
    return _no_trace


def _no_trace(message_id: str | None) -> str | None:
    return None


def shutdown() -> None:
    """Export the spans still buffered (before a process leaves through ``os._exit``)."""
    with _lock:
        tracer = _setup[0] if _setup is not None else None
    if tracer is not None:
        from .tracing_otel import flush

        flush()


def trace_id(trace_parent: str | None) -> str | None:
    """The trace id (32 hex digits) of a kept ``traceparent`` value, or None."""
    if not trace_parent:
        return None
    parts = trace_parent.split(" ", 1)[0].split("-")
    if len(parts) < 4 or len(parts[1]) != 32:
        return None
    return parts[1]
