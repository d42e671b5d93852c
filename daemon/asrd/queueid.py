"""The bucket's ASR queue id, when ``[ci] queue_id`` is left empty.

The ``/asr_jobs`` documents make ``QueueId`` required on create and list, and a bucket with ASR
enabled has its queue; so asrd looks it up once (the SDK's queue description call) and uses it
for every create, list, reconcile and client-token look-up, exactly as if it were configured.
"""

from __future__ import annotations

from .ci import CiClient
from .config import ConfigError, Settings

__all__ = ["lookup", "resolved"]


def lookup(ci: CiClient) -> str:
    """The id of the bucket's only ASR queue; ``ConfigError`` when there is none or several
    (asrd cannot guess which one the user means)."""
    ids = [str(q.get("QueueId") or "") for q in ci.asr_queues()]
    ids = [i for i in ids if i]
    if not ids:
        raise ConfigError(
            f"config error: ci.queue_id: bucket {ci.bucket} has no ASR queue: enable speech "
            "recognition on the bucket, or set ci.queue_id"
        )
    if len(ids) > 1:
        raise ConfigError(
            f"config error: ci.queue_id: bucket {ci.bucket} has {len(ids)} ASR queues "
            f"({', '.join(ids)}): set ci.queue_id to the one jobs go to"
        )
    return ids[0]


def resolved(settings: Settings, ci: CiClient | None = None) -> Settings:
    """``settings`` with ``ci.queue_id`` filled in (unchanged when it is configured)."""
    if settings.ci.queue_id:
        return settings
    queue_id = lookup(ci if ci is not None else CiClient(settings.ci))
    ci_settings = settings.ci.model_copy(update={"queue_id": queue_id})
    return settings.model_copy(update={"ci": ci_settings})
