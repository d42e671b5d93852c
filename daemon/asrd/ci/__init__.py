"""The only package that talks to Tencent Cloud CI and COS, always through ``cos-python-sdk-v5``.

It hides the SDK's shapes (dict-or-list, strings, ``None`` for empty) behind a few calls and
maps every failure to one of three kinds the pipeline can act on: transient (retry later),
permanent (dead-letter), and not found. ``errors``: the failures and the retry of one call;
``batcher``: look-ups coalesced into multi-id requests; ``client``: ``CiClient``.
"""

from __future__ import annotations

from .batcher import GetBatcher, JobsDetail
from .client import (
    CI_TIME,
    CI_ZONE,
    CiClient,
    answer_dict,
    ci_time,
    only_queue,
    sdk_config,
    service_url,
)
from .errors import AUTH_CODES, Backoff, CiError, ErrorKind, classify, with_retry

__all__ = [
    "AUTH_CODES",
    "CI_TIME",
    "CI_ZONE",
    "Backoff",
    "CiClient",
    "CiError",
    "ErrorKind",
    "GetBatcher",
    "JobsDetail",
    "answer_dict",
    "ci_time",
    "classify",
    "only_queue",
    "sdk_config",
    "service_url",
    "with_retry",
]
