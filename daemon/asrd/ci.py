"""The only module that talks to Tencent Cloud CI and COS, always through ``cos-python-sdk-v5``.

It hides the SDK's shapes (dict-or-list, strings, ``None`` for empty) behind a few calls and
maps every failure to one of three kinds the pipeline can act on: transient (retry later),
permanent (dead-letter), and not found.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit
from xml.etree.ElementTree import ParseError

from qcloud_cos import CosConfig, CosS3Client
from qcloud_cos.cos_auth import CosS3Auth
from qcloud_cos.cos_comm import format_xml, xml_to_dict
from qcloud_cos.cos_exception import CosClientError, CosServiceError

from . import backoff
from .config import CiSettings

# The SDK logs request headers (Authorization, security token) at DEBUG: never let that through.
logging.getLogger("qcloud_cos").setLevel(logging.WARNING)

JobsDetail = dict[str, Any]
T = TypeVar("T")


class ErrorKind(Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"


class CiError(Exception):
    """A CI/COS call failed; ``kind`` says whether trying again can help."""

    def __init__(self, kind: ErrorKind, code: str, message: str, status: int | None = None):
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.kind = kind
        self.code = code
        self.status = status

    @property
    def transient(self) -> bool:
        return self.kind is ErrorKind.TRANSIENT


# 4xx codes that mean "slow down" rather than "your request is wrong".
_RETRYABLE_CODES = {"SlowDown", "RequestTimeout", "TooManyRequests", "ServiceUnavailable"}


def classify(exc: Exception) -> CiError:
    """Turn an SDK exception into a ``CiError`` (secrets never appear in SDK messages we keep)."""
    if isinstance(exc, CosServiceError):
        status = int(exc.get_status_code())
        code = str(exc.get_error_code() or "Unknown")
        try:
            msg = str(exc.get_error_msg())
        except (KeyError, TypeError):
            msg = "no message"
        transient = status >= 500 or status == 429 or code in _RETRYABLE_CODES
        return CiError(ErrorKind.TRANSIENT if transient else ErrorKind.PERMANENT, code, msg, status)
    if isinstance(exc, CosClientError):
        # Network failures (refused, reset, timeout) after the SDK's own attempts.
        return CiError(ErrorKind.TRANSIENT, "ClientError", _short(str(exc)))
    if isinstance(exc, ParseError):
        return CiError(
            ErrorKind.TRANSIENT, "BadResponse", "CI answered with a body that is not XML"
        )
    raise exc


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


@dataclass(frozen=True)
class Backoff:
    """In-process retries of one call: bounded by attempts and by total sleep.

    Kept short on purpose: longer waits belong to the redelivery path, which does not hold a
    worker thread.
    """

    attempts: int = 3
    base_s: float = 0.2
    cap_s: float = 2.0
    budget_s: float = 5.0

    def delays(self) -> Iterator[float]:
        spent = 0.0
        for attempt in range(1, self.attempts):
            wait = backoff.delay(attempt, self.base_s, self.cap_s)
            if spent + wait > self.budget_s:
                return
            spent += wait
            yield wait


def with_retry(
    call: Callable[[], T], backoff: Backoff, sleep: Callable[[float], None] = time.sleep
) -> T:
    """Run ``call``; on a transient ``CiError`` wait and try again within ``backoff``."""
    delays = backoff.delays()
    while True:
        try:
            return call()
        except CiError as err:
            if not err.transient:
                raise
            delay = next(delays, None)
            if delay is None:
                raise
            sleep(delay)


def sdk_config(settings: CiSettings) -> CosConfig:
    secret_id = settings.secret_id.get_secret_value() if settings.secret_id else None
    secret_key = settings.secret_key.get_secret_value() if settings.secret_key else None
    token = settings.token.get_secret_value() if settings.token else None
    common: dict[str, Any] = {
        "Region": settings.region,
        "SecretId": secret_id,
        "SecretKey": secret_key,
        "Token": token or None,
        "Timeout": settings.timeout_s,
    }
    if settings.endpoint:
        # IP/Port mode: the SDK still sends the COS host name, which the emulator routes on.
        parts = urlsplit(settings.endpoint)
        return CosConfig(
            IP=parts.hostname,
            Port=parts.port or (443 if parts.scheme == "https" else 80),
            Scheme=parts.scheme,
            **common,
        )
    return CosConfig(Scheme="https", **common)


class CiClient:
    """CI ASR jobs and COS objects of one bucket.

    The SDK's built-in retry is off (``retry=0``): delays are decided here and by the pipeline,
    so they never multiply unseen, and a create is never re-sent blindly (it would make a
    second job).
    """

    def __init__(self, settings: CiSettings, backoff: Backoff | None = None) -> None:
        self.bucket = settings.bucket
        self._client = CosS3Client(sdk_config(settings), retry=0)
        self._backoff = backoff or Backoff()

    def _call(self, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except (CosServiceError, CosClientError, ParseError) as exc:
            raise classify(exc) from None

    def create_job(self, request: dict[str, Any]) -> JobsDetail:
        """POST /asr_jobs with a body asrd builds itself.

        ``ci_create_asr_job`` drops ``CallBackType`` and cannot send ``UserData``/``JobLevel``
        (SDK bug), so the body goes through the SDK's own XML writer, signing and transport.
        """
        path = "/asr_jobs"
        conf = self._client.get_conf()
        url = conf.uri(bucket=self.bucket, path=path, endpoint=conf._endpoint_ci)
        body = format_xml(data=request, root="Request")

        def send() -> JobsDetail:
            rt = self._client.send_request(
                method="POST",
                url=url,
                bucket=self.bucket,
                data=body,
                auth=CosS3Auth(conf, path, params={}),
                params={},
                headers={"Content-Type": "application/xml"},
                ci_request=True,
            )
            detail = xml_to_dict(rt.content).get("JobsDetail")
            if not isinstance(detail, dict):
                raise CiError(
                    ErrorKind.TRANSIENT, "BadResponse", "create answered without JobsDetail"
                )
            return detail

        # Only a 503/throttle before the job exists is safe to retry; a timeout is not.
        return self._call(send)

    def get_job(self, job_id: str, retry: bool = True) -> JobsDetail | None:
        """The job as CI knows it now, or ``None`` when CI lists the id as non-existent."""

        def fetch() -> JobsDetail | None:
            data = self._call(lambda: self._client.ci_get_asr_job(Bucket=self.bucket, JobID=job_id))
            for detail in data.get("JobsDetail") or []:
                if isinstance(detail, dict) and detail.get("JobId") == job_id:
                    return detail
            return None

        return with_retry(fetch, self._backoff) if retry else fetch()

    def list_jobs(
        self,
        queue_id: str | None = None,
        states: str = "All",
        start: str | None = None,
        end: str | None = None,
        page_size: int = 100,
        limit: int | None = None,
    ) -> Iterator[JobsDetail]:
        """Every job matching the filters, following ``NextToken`` pages."""

        def page_at(token: str) -> dict[str, Any]:
            return self._call(
                lambda: self._client.ci_list_asr_jobs(
                    Bucket=self.bucket,
                    QueueId=queue_id or None,
                    StartCreationTime=start,
                    EndCreationTime=end,
                    States=states,
                    Size=page_size,
                    NextToken=token,
                )
            )

        token = ""
        seen = 0
        while True:
            page = with_retry(partial(page_at, token), self._backoff)
            for detail in page.get("JobsDetail") or []:
                yield detail
                seen += 1
                if limit is not None and seen >= limit:
                    return
            token = page.get("NextToken") or ""
            if not token:
                return

    def put_object(
        self,
        key: str,
        body: bytes,
        content_type: str = "application/octet-stream",
        bucket: str | None = None,
    ) -> None:
        self._call(
            lambda: self._client.put_object(
                Bucket=bucket or self.bucket, Key=key, Body=body, ContentType=content_type
            )
        )

    def get_object(self, key: str, bucket: str | None = None) -> bytes:
        def read() -> bytes:
            resp = self._client.get_object(Bucket=bucket or self.bucket, Key=key)
            data: bytes = resp["Body"].get_raw_stream().read()
            return data

        return with_retry(lambda: self._call(read), self._backoff)
