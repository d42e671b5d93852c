"""Webhook sink: POST each record as JSON to an HTTP(S) endpoint, signed with HMAC-SHA256.

Request, one per delivery::

    POST <url>
    Content-Type: application/json
    Idempotency-Key: <job_id>
    X-Asrd-Job-Id: <job_id>
    X-Asrd-Timestamp: <unix seconds>
    X-Asrd-Signature: sha256=<hex>        (only when a secret is configured)
    <configured extra headers>

    <record.to_dict() as UTF-8 JSON>

Signature: ``hex(HMAC-SHA256(key=secret as UTF-8, msg=timestamp + "." + body))`` where
``timestamp`` is the ``X-Asrd-Timestamp`` value and ``body`` the raw request bytes exactly as
received. A receiver recomputes it over the raw body, compares in constant time
(``hmac.compare_digest``), rejects timestamps too far from its clock (replays), and dedupes
on ``Idempotency-Key``: asrd delivers at least once, so the same job can arrive again (after a
crash, or a retry whose earlier attempt did arrive), each time with a fresh timestamp,
signature and ``delivered_at``.

Answers: 2xx is delivered. 408, 425, 429, 5xx, resets and timeouts are transient (the
message is retried later). A refused connection, no route or an unknown host name means the
endpoint is down for every record: an outage of the sink (deliveries pause, probed by
connecting, and no message spends an attempt; see docs/guarantees.md). Any other status,
including 3xx (redirects are not followed: the signed body is never sent anywhere but
``url``), is permanent and the message is dead-lettered. Error texts name the URL without
userinfo or query and never the secret. ``timeout_s`` bounds connecting and each wait for the
answer. Connections are kept alive between deliveries and closed after 5 s idle (``httppool``).
Proxies and CA bundles come from the usual environment (``HTTPS_PROXY``, ``NO_PROXY``,
``REQUESTS_CA_BUNDLE``).
"""

from __future__ import annotations

import errno
import hashlib
import hmac
import re
import socket
import time
from urllib.parse import urlsplit, urlunsplit

import requests

from .. import __version__
from ..config import ConfigError, Settings, WebhookSinkSettings
from ..formats import to_json
from ..httppool import ExpiringAdapter
from ..result import ResultRecord
from .base import SinkError

TRANSIENT_STATUS = frozenset({408, 425, 429})
# Headers asrd sets itself; configuring them would break signing, framing or dedupe.
RESERVED_HEADERS = frozenset(
    {"content-type", "content-length", "transfer-encoding", "host", "idempotency-key"}
)
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_BAD_VALUE = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
# Keep-alive connections for every worker thread (the daemon runs up to 32 by default).
_POOL_SIZE = 64
_MAX_ANSWER_BYTES = 64 * 1024


def safe_url(url: str) -> str:
    """``url`` without userinfo, query or fragment: fit for logs and dead-letter reasons."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = f"{host}:{port}" if port is not None else host
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def signature(secret: bytes, timestamp: str, body: bytes) -> str:
    """The ``X-Asrd-Signature`` value for ``body`` sent at ``timestamp``."""
    digest = hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256)
    return "sha256=" + digest.hexdigest()


def _checked_headers(name: str, headers: dict[str, str]) -> dict[str, str]:
    for key, value in headers.items():
        where = f"config error: sinks.{name}.headers"
        if not _TOKEN.fullmatch(key):
            raise ConfigError(f"{where}: {key!r} is not a valid header name")
        if key.lower() in RESERVED_HEADERS or key.lower().startswith("x-asrd-"):
            raise ConfigError(f"{where}: {key} is set by asrd and cannot be configured")
        if _BAD_VALUE.search(value) or value != value.strip():
            raise ConfigError(f"{where}: the value of {key} has control characters or padding")
    return dict(headers)


# The endpoint as a whole cannot be reached: nothing about one record makes these happen.
_UNREACHABLE = frozenset({errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH})


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception behind it (causes, contexts, urllib3's ``reason``)."""
    seen: dict[int, BaseException] = {}
    stack: list[BaseException | None] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen[id(item)] = item
        stack.extend([item.__cause__, item.__context__, getattr(item, "reason", None)])
        stack.extend(a for a in item.args if isinstance(a, BaseException))
    return list(seen.values())


def unreachable(exc: BaseException) -> bool:
    """Whether a failed request means the endpoint is down for every record: the connection
    refused, no route, or the name not resolved."""
    return any(
        isinstance(e, socket.gaierror) or (isinstance(e, OSError) and e.errno in _UNREACHABLE)
        for e in _chain(exc)
    )


def _cause(exc: BaseException) -> str:
    """The innermost OS-level reason (``Connection refused``) without URLs or object reprs."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [exc]
    while stack:
        item = stack.pop()
        if item is None or id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, OSError) and item.strerror:
            return item.strerror
        stack.extend([item.__cause__, item.__context__, getattr(item, "reason", None)])
        stack.extend(a for a in item.args if isinstance(a, BaseException))
    return type(exc).__name__


class WebhookSink:
    def __init__(self, settings: WebhookSinkSettings) -> None:
        self.name = settings.name
        self.url = settings.url
        self.display_url = safe_url(settings.url)
        self._secret = settings.secret.get_secret_value().encode() if settings.secret else None
        self._timeout = settings.timeout_s
        self._headers = _checked_headers(settings.name, settings.headers)
        self._session = requests.Session()
        self._session.headers["User-Agent"] = f"asrd/{__version__}"
        adapter = ExpiringAdapter(pool_connections=1, pool_maxsize=_POOL_SIZE, max_retries=0)
        self._session.mount("http://", adapter)
        self._session.mount("https://", adapter)

    def request_headers(self, job_id: str, body: bytes, timestamp: str) -> dict[str, str]:
        headers = {
            **self._headers,
            "Content-Type": "application/json",
            "Idempotency-Key": job_id,
            "X-Asrd-Job-Id": job_id,
            "X-Asrd-Timestamp": timestamp,
        }
        if self._secret:
            headers["X-Asrd-Signature"] = signature(self._secret, timestamp, body)
        return headers

    def deliver(self, record: ResultRecord) -> None:
        body = to_json(record)
        timestamp = str(int(time.time()))
        headers = self.request_headers(record.job_id, body, timestamp)
        where = f"POST {self.display_url}"
        try:
            with self._session.post(
                self.url,
                data=body,
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
                stream=True,
            ) as resp:
                status, reason = resp.status_code, (resp.reason or "")[:80]
                # Read a bounded answer so the connection can be reused; a huge one closes it.
                read = 0
                for chunk in resp.iter_content(8192):
                    read += len(chunk)
                    if read > _MAX_ANSWER_BYTES:
                        break
        except requests.Timeout:
            raise SinkError(f"{where}: no answer within {self._timeout:g}s") from None
        except requests.RequestException as exc:
            # Refused, no route or an unknown name: the endpoint is down, not this record (an
            # outage of the sink). Reset, TLS, a broken answer: retried within the budget.
            outage = self.name if unreachable(exc) else ""
            raise SinkError(f"{where}: connection failed: {_cause(exc)}", outage=outage) from None
        if 200 <= status < 300:
            return
        message = f"{where}: HTTP {status} {reason}".rstrip()
        transient = status in TRANSIENT_STATUS or status >= 500
        raise SinkError(message, permanent=not transient)

    def probe(self) -> None:
        """Raises while the endpoint takes no TCP connection (refused, unroutable, unknown
        name). Whether it answers 2xx again is found by the next deliveries."""
        parts = urlsplit(self.url)
        port = parts.port or (443 if parts.scheme == "https" else 80)
        with socket.create_connection((parts.hostname or "", port), timeout=self._timeout):
            pass

    def close(self) -> None:
        self._session.close()


def build(settings: WebhookSinkSettings, shared: Settings) -> WebhookSink:
    """The ``asrd.sinks`` entry point for ``type = "webhook"``."""
    return WebhookSink(settings)
