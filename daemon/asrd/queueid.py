"""The bucket's ASR queue id for one-off commands, when ``[ci] queue_id`` is left empty.

The ``/asr_jobs`` documents make ``QueueId`` required on create and list, and a bucket with ASR
enabled has its queue. The daemon asks ``CiClient.queue_id`` on first use (CI may be down at
start-up); a one-off command (``asrd submit``, ``list``, ``reconcile``, ``check --connect``)
looks it up here first, so a bucket with no ASR queue or several is a configuration error
(exit 78) before anything else happens.
"""

from __future__ import annotations

from .ci import CiClient, CiError
from .config import ConfigError, Settings

__all__ = ["lookup", "resolved"]


def lookup(ci: CiClient) -> str:
    """The queue id ``ci`` uses; ``ConfigError`` when the bucket has none or several."""
    try:
        return ci.queue_id()
    except CiError as exc:
        if exc.code == "QueueId":
            raise ConfigError(f"config error: ci.queue_id: {str(exc).split(': ', 1)[1]}") from None
        raise


def resolved(settings: Settings, ci: CiClient | None = None) -> Settings:
    """``settings`` with ``ci.queue_id`` filled in (unchanged when it is configured)."""
    if settings.ci.queue_id:
        return settings
    queue_id = lookup(ci if ci is not None else CiClient(settings.ci))
    ci_settings = settings.ci.model_copy(update={"queue_id": queue_id})
    return settings.model_copy(update={"ci_section": ci_settings})
