"""A small client of the TDMQ-CMQ data-flow HTTP API: batch receive (long poll) and batch delete.

Why our own and not the official ``qcloud-cmq-sdk-py3``: that SDK (last changed 2020) signs a body
starting with ``@`` without it, sends a non-API ``UserpollingWaitSeconds`` parameter, has no STS
token support, writes a log file into the working directory the moment an account exists, shares
one non-thread-safe connection, and re-sends keep-alive GET retries without their query string
(docs/tencent-cloud.md §3.8). ``tencentcloud-sdk-python-common``'s ``AbstractClient`` adds API 3.0
parameters and expects API 3.0 envelopes, so only its ``Sign.sign`` (the HMAC step) is reused; the
request shape (docs/tencent-cloud.md §3.2) is the few lines below.

Every request is a signed form POST to the endpoint copied from the console. Answers are HTTP 200
with a JSON ``code``; ``7000`` ("no message") is the normal idle answer and comes back as an empty
list, never as an error.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests
from tencentcloud.common.sign import Sign

from .credentials import CredentialError, Snapshot

__all__ = [
    "CmqClient",
    "CmqError",
    "CmqMessage",
    "string_to_sign",
]

MAX_BATCH = 16
MAX_POLL_S = 30
NO_MESSAGE = 7000
AUTH_FAILED = 4100  # the key, its signature or its token was refused
# Codes that mean "try again later": throttled, server error, partial batch delete.
_TRANSIENT = {4420, 6000}
_PARTIAL_DELETE = 6010


class CmqError(Exception):
    """A CMQ call failed. ``code`` is CMQ's (0 for transport failures); ``transient`` says whether
    waiting and retrying can help (network, 5xx, throttling) or not (signature, unknown queue)."""

    def __init__(
        self, code: int, message: str, transient: bool, request_id: str = "", auth: bool = False
    ) -> None:
        super().__init__(f"CMQ code {code}: {message}" if code else message)
        self.code = code
        self.message = message
        self.transient = transient
        self.request_id = request_id
        # Refused keys (4100) or none to sign with: a setup fault, the intake waits for keys.
        self.auth = auth or code == AUTH_FAILED


@dataclass(frozen=True)
class CmqMessage:
    msg_id: str
    body: str
    receipt_handle: str
    enqueue_time: int
    dequeue_count: int
    # When CMQ hands the message out again if it is not deleted (Unix seconds; 0 = not said).
    next_visible_time: int = 0


def string_to_sign(method: str, host: str, path: str, params: Mapping[str, str]) -> str:
    """``METHOD host path ? k=v&...`` with keys sorted by byte order and ``_`` in keys as ``.``;
    values raw, not URL-encoded (docs/tencent-cloud.md §3.2)."""
    pairs = "&".join(f"{k.replace('_', '.')}={params[k]}" for k in sorted(params))
    return f"{method.upper()}{host}{path}?{pairs}"


DEFAULT_PATH = (
    "/v2/index.php"  # the documents' and the official SDKs' path (docs/tencent-cloud.md §3.1)
)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def request_target(endpoint: str) -> tuple[str, str, str]:
    """``(url, host, path)`` of an endpoint copied from the console.

    Without a path (or with just ``/``) the documented ``/v2/index.php``; any other path is
    kept. The host is signed exactly as the Host header will carry it, so a default
    port written out (``https://host:443``) is dropped from both, as HTTP clients drop it from
    the header (the server would otherwise compute another signature: code 4100).
    """
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"CMQ endpoint {endpoint!r} is not an http(s) URL")
    host = parts.hostname
    if ":" in host:
        host = f"[{host}]"  # an IPv6 literal
    if parts.port is not None and parts.port != _DEFAULT_PORTS[parts.scheme]:
        host = f"{host}:{parts.port}"
    path = parts.path if parts.path not in ("", "/") else DEFAULT_PATH
    return f"{parts.scheme}://{host}{path}", host, path


class CmqClient:
    """Thread-safe enough for one caller per instance (the intake has one loop)."""

    def __init__(
        self,
        endpoint: str,
        secret_id: str,
        secret_key: str,
        token: str = "",
        signature_method: str = "HmacSHA256",
        timeout_s: float = 10.0,
        keys: Callable[[], Snapshot] | None = None,
    ) -> None:
        self._url, self._host, self._path = request_target(endpoint)
        self._secret_id = secret_id
        self._secret_key = secret_key
        self._token = token
        self._keys = keys
        self._method = signature_method
        self._timeout = timeout_s
        # trust_env stays on, as for CI: HTTPS_PROXY/NO_PROXY pick the route and
        # REQUESTS_CA_BUNDLE the trusted CAs, the way every requests-based client behaves.
        self._session = requests.Session()

    @property
    def endpoint(self) -> str:
        return self._url

    def close(self) -> None:
        self._session.close()

    def _signed(self, action: str, params: Mapping[str, str]) -> dict[str, str]:
        secret_id, secret_key, token = self._secret_id, self._secret_key, self._token
        if self._keys is not None:
            try:
                keys = self._keys()  # one snapshot: id, key and token of the same keys
            except CredentialError as exc:
                raise CmqError(0, f"{action}: {exc}", transient=True, auth=True) from None
            secret_id, secret_key, token = keys.secret_id, keys.secret_key, keys.token
        form = {
            **params,
            "Action": action,
            "SecretId": secret_id,
            "Nonce": str(random.randint(1, 2**31 - 1)),  # noqa: S311 - replay nonce, not a key
            "Timestamp": str(int(time.time())),
            "SignatureMethod": self._method,
            "RequestClient": "asrd",
        }
        if token:
            form["Token"] = token
        sign_str = string_to_sign("POST", self._host, self._path, form)
        form["Signature"] = Sign.sign(secret_key, sign_str, self._method)
        return form

    def call(
        self,
        action: str,
        params: Mapping[str, str],
        wait_s: float = 0.0,
        accept: tuple[int, ...] = (0,),
    ) -> dict[str, Any]:
        """One signed call; returns the JSON answer when ``code`` is in ``accept``."""
        form = self._signed(action, params)
        try:
            resp = self._session.post(self._url, data=form, timeout=self._timeout + wait_s)
        except requests.RequestException as exc:
            # The exception text can carry the URL but never the form, which holds the signature.
            raise CmqError(0, f"{action}: {type(exc).__name__}", transient=True) from None
        if resp.status_code != 200:
            raise CmqError(0, f"{action}: HTTP {resp.status_code}", transient=True)
        try:
            answer = resp.json()
            code = int(answer["code"])
        except (ValueError, KeyError, TypeError):
            raise CmqError(0, f"{action}: answer is not CMQ JSON", transient=True) from None
        if code not in accept:
            raise CmqError(
                code,
                f"{action}: {answer.get('message', '')}",
                transient=code in _TRANSIENT,
                request_id=str(answer.get("requestId", "")),
            )
        return dict(answer)

    def batch_receive(self, queue: str, count: int, wait_s: int) -> list[CmqMessage]:
        """Up to ``count`` messages, long-polling up to ``wait_s``; ``[]`` when none came."""
        answer = self.call(
            "BatchReceiveMessage",
            {
                "queueName": queue,
                "numOfMsg": str(max(1, min(count, MAX_BATCH))),
                "pollingWaitSeconds": str(max(0, min(wait_s, MAX_POLL_S))),
            },
            wait_s=wait_s,
            accept=(0, NO_MESSAGE),
        )
        if answer["code"] == NO_MESSAGE:
            return []
        return [
            CmqMessage(
                msg_id=str(m.get("msgId", "")),
                body=str(m.get("msgBody", "")),
                receipt_handle=str(m["receiptHandle"]),
                enqueue_time=int(m.get("enqueueTime") or 0),
                dequeue_count=int(m.get("dequeueCount") or 0),
                next_visible_time=int(m.get("nextVisibleTime") or 0),
            )
            for m in answer.get("msgInfoList") or []
        ]

    def batch_delete(self, queue: str, handles: Sequence[str]) -> dict[str, str]:
        """Delete by receipt handle; returns ``{handle: reason}`` for those CMQ refused.

        A refused handle (4430: expired or superseded) means CMQ will redeliver that message; the
        copy already on Pulsar is then a duplicate the ledger absorbs.
        """
        if not handles:
            return {}
        params = {f"receiptHandle.{i}": h for i, h in enumerate(handles, start=1)}
        params["queueName"] = queue
        answer = self.call("BatchDeleteMessage", params, accept=(0, _PARTIAL_DELETE))
        if answer["code"] == 0:
            return {}
        refused = {
            str(e.get("receiptHandle", "")): f"code {e.get('code')}: {e.get('message', '')}"
            for e in answer.get("errorList") or []
        }
        # Without a usable errorList every handle counts as refused: they come back and are
        # absorbed as duplicates, which is safe; treating them as deleted would not be.
        return refused or {h: str(answer.get("message", "")) for h in handles}
