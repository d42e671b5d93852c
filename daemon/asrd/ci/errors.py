"""What a failed CI or COS call means (``CiError``: transient, permanent, or refused keys), from
the SDK's exceptions (``classify``), and the short in-process retries of one call
(``with_retry``)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import TypeVar
from xml.etree.ElementTree import ParseError

from qcloud_cos.cos_exception import CosClientError, CosServiceError

from .. import backoff

T = TypeVar("T")


class ErrorKind(Enum):
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    # asrd's keys were refused or there are none: a setup fault, never the message's.
    AUTH = "auth"


class CiError(Exception):
    """A CI/COS call failed; ``kind`` says whether trying again can help."""

    def __init__(self, kind: ErrorKind, code: str, message: str, status: int | None = None):
        super().__init__(f"{code}: {message}" + (f" (HTTP {status})" if status else ""))
        self.kind = kind
        self.code = code
        self.status = status

    @property
    def transient(self) -> bool:
        """Trying again later can help (an authentication failure too, once keys work)."""
        return self.kind is not ErrorKind.PERMANENT

    @property
    def auth(self) -> bool:
        return self.kind is ErrorKind.AUTH

    @property
    def throttling(self) -> bool:
        return self.status == 429 or (self.status == 503 and self.code in _THROTTLE_CODES)


# Answers that say the request quota is spent: the limiter slows every caller down.
_THROTTLE_CODES = {"SlowDown", "TooManyRequests", "RequestLimitExceeded"}
# 4xx codes that mean "slow down" rather than "your request is wrong".
_RETRYABLE_CODES = {"SlowDown", "RequestTimeout", "TooManyRequests", "ServiceUnavailable"}
# 4xx codes that say asrd's keys were refused (expired token, unknown or wrong key, no
# permission): work pauses until keys work again, no message is charged an attempt.
AUTH_CODES = {
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken",
    "InvalidToken", "TokenExpired",
}  # fmt: skip
# 4xx codes that say asrd's own settings are wrong, not the message: retried (with backoff) so
# a bad clock or bucket does not dead-letter every message while it is fixed.
_SETUP_CODES = {"RequestTimeTooSkewed", "NoSuchBucket"}


def classify(exc: Exception) -> CiError:
    """Turn an SDK exception into a ``CiError`` (secrets never appear in SDK messages we keep)."""
    if isinstance(exc, CosServiceError):
        status = int(exc.get_status_code())
        code = str(exc.get_error_code() or "Unknown")
        try:
            msg = str(exc.get_error_msg())
        except (KeyError, TypeError):
            msg = "no message"
        if status in (400, 401, 403) and code in AUTH_CODES:
            return CiError(ErrorKind.AUTH, code, msg, status)
        transient = status >= 500 or status == 429 or code in _RETRYABLE_CODES | _SETUP_CODES
        return CiError(ErrorKind.TRANSIENT if transient else ErrorKind.PERMANENT, code, msg, status)
    if isinstance(exc, CosClientError):
        # Network failures (refused, reset, timeout) after the SDK's own attempts.
        return CiError(ErrorKind.TRANSIENT, "ClientError", short(str(exc)))
    if isinstance(exc, ParseError):
        return CiError(
            ErrorKind.TRANSIENT, "BadResponse", "CI answered with a body that is not XML"
        )
    raise exc


def short(text: str, limit: int = 300) -> str:
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
            if not err.transient or err.auth:  # refused keys: the outage pause decides
                raise
            delay = next(delays, None)
            if delay is None:
                raise
            sleep(delay)
