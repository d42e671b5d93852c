"""The TDMQ-CMQ data-flow HTTP API (docs/tencent-cloud.md §3.1-§3.3): parsing, signature, actions.

Every answer is HTTP 200 with a JSON document carrying ``code``, ``message`` and ``requestId``
(plus the action's fields); errors are non-zero codes inside it, as the SDKs expect.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qsl

from asrd.emulator.cmq import (
    AUTH,
    BATCH_DELETE_FAILED,
    INVALID,
    MAX_BATCH,
    MAX_DELAY_S,
    MAX_POLL_S,
    NAME_RE,
    NO_MESSAGE,
    Cmq,
    CmqError,
    Message,
)
from asrd.emulator.faults import Faults
from asrd.emulator.http import Request, Response, Route
from asrd.emulator.keys import Credential, Keyring

log = logging.getLogger("asrd.emulator.cmq_api")

PATHS = ("/v2/index.php", "/")
MAX_REQUEST_BYTES = 1024 * 1024  # 4000 (10420) above this
MAX_SKEW_S = 300  # UNCONFIRMED for CMQ; the API 3.0 docs say more than 5 minutes can fail
# cmq-<r>.public….tencenttdmq.com, legacy cmq-queue-<r>/cmq-topic-<r>.api…, <r>.mqadapter.…
HOST_REGION_RE = re.compile(
    r"^(?:cmq-(?:queue-|topic-)?(?P<public>[a-z]+)\.|(?P<private>[a-z]+)\.mqadapter\.)"
)

Params = dict[str, str]
Action = Callable[[str, Params, Request], Awaitable[dict[str, Any]]]
Endpoint = Callable[[Request], Awaitable[Response]]


def string_to_sign(method: str, host: str, path: str, params: Mapping[str, str]) -> str:
    """METHOD + host + path + "?" + sorted raw ``k=v`` pairs, ``_`` in keys as ``.``
    (docs/tencent-cloud.md §3.2)."""
    pairs = "&".join(
        f"{k.replace('_', '.')}={params[k]}" for k in sorted(params) if k != "Signature"
    )
    return f"{method.upper()}{host}{path}?{pairs}"


def compute_signature(secret_key: str, text: str, signature_method: str | None) -> str:
    """Base64 HMAC; ``HmacSHA256`` selects SHA-256, anything else (or nothing) SHA-1."""
    digest = hashlib.sha256 if signature_method == "HmacSHA256" else hashlib.sha1
    mac = hmac.new(secret_key.encode(), text.encode("utf-8"), digest)
    return base64.b64encode(mac.digest()).decode()


def region_of(host: str, default: str) -> str:
    m = HOST_REGION_RE.match(host.lower())
    if m is None:
        return default
    return m["public"] or m["private"]


def invalid(module: int, text: str) -> CmqError:
    return CmqError(INVALID, f"({module}){text}")


def parse_params(req: Request) -> Params:
    """Query string and (for POST) the form body, whatever the Content-Type; ``+`` is a space."""
    raw_query = req.target.partition("?")[2]
    if len(raw_query) + len(req.body) > MAX_REQUEST_BYTES:
        raise invalid(10420, "request size exceeds 1 MB")
    sources = [raw_query]
    if req.method == "POST":
        try:
            sources.append(req.body.decode("utf-8"))
        except UnicodeDecodeError as exc:
            raise invalid(10420, "cannot parse the request body") from exc
    params: Params = {}
    for source in sources:
        try:
            pairs = parse_qsl(source, keep_blank_values=True, errors="strict")
        except (UnicodeDecodeError, ValueError) as exc:
            raise invalid(10420, "cannot parse the request") from exc
        for key, value in pairs:
            if key in params:
                raise invalid(10330, f"param {key} is not repeatable")
            params[key] = value
    return params


def _required(params: Params, name: str) -> str:
    value = params.get(name)
    if value is None or value == "":
        raise invalid(10390, f"missing param {name}")
    return value


def _integer(params: Params, name: str, low: int, high: int) -> int | None:
    text = params.get(name)
    if text is None or text == "":
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise invalid(10360, f"param {name} must be an integer") from exc
    if not low <= value <= high:
        raise invalid(10350, f"param {name} must be between {low} and {high}")
    return value


def _name(params: Params, key: str) -> str:
    value = _required(params, key)
    if not NAME_RE.match(value):
        raise invalid(
            10110, f"invalid {key} {value!r}: up to 64 letters, digits or '-', a letter first"
        )
    return value


def indexed(params: Params, prefix: str) -> list[str]:
    """``prefix.n`` values in index order: 1..16 of them, n contiguous from 0 or 1."""
    found: dict[int, str] = {}
    for key, value in params.items():
        head, dot, tail = key.partition(".")
        if head != prefix or not dot:
            continue
        if not tail.isdigit() or str(int(tail)) != tail:
            raise invalid(10310, f"param key {key} is malformed")
        found[int(tail)] = value
    if not found:
        raise invalid(10390, f"missing param {prefix}.n")
    if len(found) > MAX_BATCH:
        raise invalid(10370, f"at most {MAX_BATCH} {prefix}.n values in one request")
    indices = sorted(found)
    start = indices[0]
    if start not in (0, 1) or indices != list(range(start, start + len(indices))):
        raise invalid(10380, f"{prefix}.n indices must be contiguous from 0 or 1")
    return [found[i] for i in indices]


def _bodies(values: list[str]) -> list[str]:
    if any(v == "" for v in values):
        raise invalid(10110, "msgBody must not be empty")
    return values


class CmqApi:
    def __init__(
        self,
        cmq: Cmq,
        credentials: Keyring | Iterable[Credential],
        default_region: str,
        stats: Counter[str],
        faults: Faults | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.cmq = cmq
        self.faults = faults
        # The keyring the CI listener checks too: issued keys work here until they expire.
        self.keys = credentials if isinstance(credentials, Keyring) else Keyring(credentials)
        self.default_region = default_region
        self.stats = stats
        self._clock = clock
        self._actions: dict[str, Action] = {
            "SendMessage": self._send,
            "BatchSendMessage": self._batch_send,
            "ReceiveMessage": self._receive,
            "BatchReceiveMessage": self._batch_receive,
            "DeleteMessage": self._delete,
            "BatchDeleteMessage": self._batch_delete,
            "PublishMessage": self._publish,
            "BatchPublishMessage": self._batch_publish,
        }

    def routes(self) -> list[Route[Endpoint]]:
        """The two paths the SDKs post to; every method reaches ``handle``, which answers the
        wrong ones in CMQ's own JSON, as it does unknown actions."""
        known: list[Route[Endpoint]] = [Route("*", path, self.handle) for path in PATHS]
        return [*known, Route("*", "/{path:.*}", self._unknown_path)]

    @staticmethod
    async def dispatch(req: Request, endpoint: Endpoint) -> Response:
        return await endpoint(req)

    async def _unknown_path(self, req: Request) -> Response:
        # UNCONFIRMED what the gateway answers on other paths.
        message = f"(10400)unknown path {req.path}"
        return _json(404, {"code": INVALID, "message": message, "requestId": uuid.uuid4().hex})

    async def handle(self, req: Request) -> Response:
        request_id = uuid.uuid4().hex
        injected = self.faults.cmq_error() if self.faults is not None else None
        if injected is not None and injected >= 1000:
            message = "(6000)internal error" if injected == 6000 else "QPS throttled"
            return _json(200, {"code": injected, "message": message, "requestId": request_id})
        if injected is not None:  # the gateway in front of CMQ failing: no JSON document
            return Response(injected, b"<html>bad gateway</html>", content_type="text/html")
        try:
            if req.method not in ("GET", "POST"):
                raise invalid(10410, f"unexpected http {req.method} only GET or POST is supported")
            params = parse_params(req)
            try:
                self._authenticate(req, params)
            except CmqError as err:
                self.keys.refuse("cmq", f"{err.code} {err.message}")
                raise
            action = self._actions.get(params.get("Action", ""))
            if action is None:
                raise invalid(10280, f"action {params.get('Action', '')} does not exist")
            region = region_of(req.headers.get("host", ""), self.default_region)
            fields = await action(region, params, req)
            doc: dict[str, Any] = {"code": 0, "message": "", "requestId": request_id, **fields}
        except CmqError as err:
            if err.code != NO_MESSAGE:
                self.stats[f"cmq_error_{err.code}"] += 1
            doc = {"code": err.code, "message": err.message, "requestId": request_id, **err.extra}
        return _json(200, doc)

    # ---- authentication --------------------------------------------------------------------

    def _authenticate(self, req: Request, params: Params) -> None:
        secret_id, sent = params.get("SecretId"), params.get("Signature")
        if not secret_id or not sent:
            raise CmqError(AUTH, "SecretId and Signature are required")
        cred = self.keys.find(secret_id)
        if cred is None:
            raise CmqError(AUTH, "the SecretId is unknown")
        timestamp = _integer(params, "Timestamp", 0, 2**63)
        if timestamp is None:
            raise invalid(10390, "missing param Timestamp")
        _required(params, "Nonce")
        text = string_to_sign(req.method, req.headers.get("host", ""), req.path, params)
        expected = compute_signature(cred.secret_key, text, params.get("SignatureMethod"))
        if not hmac.compare_digest(expected.encode(), sent.encode()):
            raise CmqError(AUTH, "the signature does not match")
        if abs(self._clock() - timestamp) > MAX_SKEW_S:
            raise CmqError(AUTH, f"the Timestamp is more than {MAX_SKEW_S} s from the server time")
        if cred.token is not None and params.get("Token") != cred.token:
            raise CmqError(AUTH, "the Token of the temporary key is missing or wrong")
        if cred.is_expired(self._clock()):
            # UNCONFIRMED module code; the top-level 4100 is CMQ's authentication failure.
            raise CmqError(AUTH, "the temporary key has expired")
        self.keys.used(cred, "cmq")

    # ---- actions ---------------------------------------------------------------------------

    async def _send(self, region: str, p: Params, req: Request) -> dict[str, Any]:
        name = _name(p, "queueName")
        body = _bodies([_required(p, "msgBody")])
        delay = _integer(p, "delaySeconds", 0, MAX_DELAY_S) or 0
        (msg,) = self.cmq.send(region, name, body, delay)
        return {"msgId": msg.msg_id}

    async def _batch_send(self, region: str, p: Params, req: Request) -> dict[str, Any]:
        name = _name(p, "queueName")
        bodies = _bodies(indexed(p, "msgBody"))
        delay = _integer(p, "delaySeconds", 0, MAX_DELAY_S) or 0
        sent = self.cmq.send(region, name, bodies, delay)
        return {"msgList": [{"msgId": m.msg_id} for m in sent]}

    async def _poll(self, region: str, p: Params, req: Request, n: int) -> list[Message]:
        name = _name(p, "queueName")
        queue = self.cmq.queue(region, name)
        wait = _integer(p, "pollingWaitSeconds", 0, MAX_POLL_S)
        if wait is None:
            wait = queue.spec.polling
        got = await queue.receive(n, wait, gone=req.closed)
        if not got:
            raise CmqError(NO_MESSAGE, "(10200)no message")
        return got

    async def _receive(self, region: str, p: Params, req: Request) -> dict[str, Any]:
        (msg,) = await self._poll(region, p, req, 1)
        return msg.as_received()

    async def _batch_receive(self, region: str, p: Params, req: Request) -> dict[str, Any]:
        if not p.get("numOfMsg"):
            raise invalid(10390, "missing param numOfMsg")
        n = _integer(p, "numOfMsg", 1, MAX_BATCH)
        assert n is not None
        got = await self._poll(region, p, req, n)
        return {"msgInfoList": [m.as_received() for m in got]}

    async def _delete(self, region: str, p: Params, req: Request) -> dict[str, Any]:
        name = _name(p, "queueName")
        self.cmq.delete(region, name, _required(p, "receiptHandle"))
        return {}

    async def _batch_delete(self, region: str, p: Params, req: Request) -> dict[str, Any]:
        name = _name(p, "queueName")
        handles = indexed(p, "receiptHandle")
        self.cmq.queue(region, name)  # an unknown queue fails the whole request (4440)
        errors = []
        for handle in handles:
            try:
                self.cmq.delete(region, name, handle)
            except CmqError as err:
                errors.append({"code": err.code, "message": err.message, "receiptHandle": handle})
        if errors:
            # UNCONFIRMED exact shape (docs/tencent-cloud.md §3.3); the handles that were valid
            # are deleted.
            raise CmqError(
                BATCH_DELETE_FAILED,
                "batch delete failed for some messages, see errorList",
                {"errorList": errors},
            )
        return {}

    async def _publish(self, region: str, p: Params, req: Request) -> dict[str, Any]:
        name = _name(p, "topicName")
        # msgTag.n and routingKey are accepted and ignored: subscriptions here have no filters.
        (msg_id,) = self.cmq.publish(region, name, _bodies([_required(p, "msgBody")]))
        return {"msgId": msg_id}

    async def _batch_publish(self, region: str, p: Params, req: Request) -> dict[str, Any]:
        name = _name(p, "topicName")
        ids = self.cmq.publish(region, name, _bodies(indexed(p, "msgBody")))
        return {"msgList": [{"msgId": i} for i in ids]}


def _json(status: int, doc: dict[str, Any]) -> Response:
    body = json.dumps(doc, ensure_ascii=False).encode()
    return Response(status, body, content_type="application/json")
