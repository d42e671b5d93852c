"""Logging (structlog, JSON lines on stderr by default) and the daemon's counters.

The Pulsar C++ client and the COS SDK log through stdlib ``logging``; their records are
rendered by the same structlog processors, so one stream has one format. A redaction
processor keeps anything that looks like a credential out of every line.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import Counter
from collections.abc import MutableMapping
from typing import Any

import pulsar
import structlog

_SECRET_WORDS = ("secret", "token", "password", "authorization", "signature", "credential")


def redact_secrets(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
    """Replace values of keys that name a credential; a second line of defence, not the first."""
    for key in list(event):
        if any(word in key.lower() for word in _SECRET_WORDS):
            event[key] = "[redacted]"
    return event


class _NamedWriteLogger(structlog.WriteLogger):
    """structlog's plain writer with a name, so ``add_logger_name`` works without stdlib."""

    def __init__(self, name: str) -> None:
        super().__init__(sys.stderr)
        self.name = name


def _named_writer(*args: Any) -> _NamedWriteLogger:
    return _NamedWriteLogger(str(args[0]) if args else "asrd")


def configure(level: str = "info", fmt: str = "json") -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact_secrets,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=False)
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    # asrd's own lines go straight to stderr (a line per message is on the hot path, and the
    # stdlib hop costs as much as the rest of the logging); the C++ client's and the SDK's
    # stdlib records get the same processors through the handler below.
    structlog.configure(
        processors=[*shared, structlog.processors.format_exc_info, renderer],
        logger_factory=_named_writer,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # The SDK logs request headers (with the Authorization signature) at DEBUG/INFO, and every
    # failed request's whole answer at ERROR: asrd reports those failures itself (per message
    # settled, once per outage), so the SDK's copy would only flood the log during an outage.
    logging.getLogger("qcloud_cos").setLevel(logging.CRITICAL)
    logging.getLogger("urllib3").setLevel(logging.WARNING)


def pulsar_logger() -> pulsar.ConsoleLogger:
    """The Pulsar C++ client's own logger, writing its warnings and errors (at asrd's debug
    level, its INFO lines too) to standard output in its own format.

    Not a Python logger: the client cannot tell a Python logger's level, so it crossed into
    Python for every DEBUG line it formats, three per message received, each taking the
    interpreter lock from a C++ thread. That was most of the daemon's thread switching; a native
    logger filters by level without Python."""
    debug = logging.getLogger().isEnabledFor(logging.DEBUG)
    return pulsar.ConsoleLogger(pulsar.LoggerLevel.Info if debug else pulsar.LoggerLevel.Warn)


class Counters:
    """Thread-safe named counters (messages by outcome, deliveries by sink, ...)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[str] = Counter()

    def inc(self, name: str, by: int = 1) -> None:
        with self._lock:
            self._counts[name] += by

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
