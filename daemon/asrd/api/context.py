"""What the sidecar API serves from: the process's parts, kept on ``app.state`` and handed to
each route by ``context``."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fastapi import Request

from ..ci import CiClient
from ..config import CiSettings
from ..console import ConsoleContext
from ..intake.url import UrlReceiver
from ..jobs import JobService
from ..ledger import JobBook


@dataclass
class ApiContext:
    ci: CiClient
    ci_settings: CiSettings
    ready: Callable[[], bool]
    metrics: Callable[[], bytes]  # Prometheus text
    callbacks: UrlReceiver | None = None
    ledger: JobBook | None = None  # where "delivered to" comes from
    jobs: JobService | None = None  # submission and the ledger's job list
    token: str = ""  # bearer token for /v1/*; empty = none needed (loopback only)
    not_ready: Callable[[], str] = lambda: ""  # why work is paused ("" when it is not)
    max_body_bytes: int = 64 * 1024
    console: ConsoleContext | None = None  # the pages under /ui/
    openmetrics: Callable[[], bytes] | None = None  # the OpenMetrics text (with exemplars)


async def context(request: Request) -> ApiContext:
    """The dependency every route reads the process's parts through."""
    ctx: ApiContext = request.app.state.ctx
    return ctx
