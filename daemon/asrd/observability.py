"""Logging (structlog, JSON lines on stderr by default) and the daemon's counters.

The Pulsar C++ client and the COS SDK log through stdlib ``logging``; their records are
rendered by the same structlog processors, so one stream has one format. A redaction
processor keeps anything that looks like a credential out of every line.
"""

from __future__ import annotations

import logging
import os
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


# Fields every line of this process carries, from any thread (a worker's number): a thread
# does not inherit the context variables of the one that started it.
_PROCESS_FIELDS: dict[str, Any] = {}


def bind_process(**fields: Any) -> None:
    """Name this process on every log line from now on, whichever thread writes it."""
    _PROCESS_FIELDS.update(fields)


def unbind_process(*keys: str) -> None:
    for key in keys:
        _PROCESS_FIELDS.pop(key, None)


def _process_fields(_logger: Any, _name: str, event: MutableMapping[str, Any]) -> Any:
    for key, value in _PROCESS_FIELDS.items():
        event.setdefault(key, value)
    return event


def configure(level: str = "info", fmt: str = "json") -> None:
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _process_fields,
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


def keep_stdout_for_data() -> None:
    """Keep standard output for the command's data: ``sys.stdout`` moves to a copy of file
    descriptor 1, and descriptor 1 then points at standard error.

    Native code writes to descriptor 1 directly: the Pulsar C++ client's console logger (see
    ``pulsar_logger``) prints to ``std::cout``. After this its lines, like every other log line,
    reach standard error, and ``asrd dlq list > parked.tsv`` holds only data. Child processes
    (the supervisor's workers) inherit the same descriptor 1, so theirs do too. Called by the
    console script only: in-process callers (tests) keep their own standard output."""
    sys.stdout.flush()
    data = os.dup(1)  # not inherited by child processes
    os.dup2(2, 1)
    line_buffered = 1 if os.isatty(data) else -1  # as Python sets up standard output
    sys.stdout = open(  # noqa: SIM115 - it is the process's standard output from now on
        data, "w", buffering=line_buffered, encoding=sys.stdout.encoding, errors=sys.stdout.errors
    )


def pulsar_logger() -> pulsar.ConsoleLogger:
    """The Pulsar C++ client's own logger, writing its warnings and errors (at asrd's debug
    level, its INFO lines too) in its own format to file descriptor 1, which the console script
    points at standard error (``keep_stdout_for_data``).

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
