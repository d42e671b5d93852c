"""What one process shares with the parts it builds: its one CI client (with the process's
credentials, request limiter and metrics) and its observers.

Sink factories receive it (``asrd.sinks``), so a sink that talks to Tencent Cloud signs with the
keys the process refreshes and is counted where the process's other calls are, instead of
building a client of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ci import CiClient
from .observers import Observers

__all__ = ["Services"]


@dataclass(frozen=True)
class Services:
    """``ci``: the process's CI/COS client; ``observers``: the process's hooks (metrics, logs)."""

    ci: CiClient
    observers: Observers = field(default_factory=Observers)
