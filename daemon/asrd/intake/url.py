"""The URL callback receiver: ``POST /v1/callbacks/<token>`` from CI (``CallBackType=Url``) or from
a CMQ topic's HTTP push subscription, produced onto the Pulsar topic before the answer.

2xx only once the broker has persisted the body, so a sender that sees anything else (5xx, a
timeout) sends again: CI and CMQ both retry. The answer comes within ``ANSWER_WITHIN_S`` (503
when the broker has not confirmed by then), before CMQ's push gives up on it. The token in the
path is the only secret the sender can carry (CI's callback URL has no header settings); it is
compared in constant time.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from ..config import UrlIntakeSettings
from ..observers import MovedCallback, Observers
from .forward import Forwarder, ForwardError, Outgoing

__all__ = ["Answer", "UrlReceiver", "unwrap_push"]

log = structlog.get_logger("asrd.intake.url")

SOURCE = "ASRD_SOURCE"
# CMQ's HTTP push wants a 2xx within about 15 s and retries otherwise
# (docs/tencent-cloud.md §3.7); a 503 well before that makes the sender retry instead of counting
# a timeout.
ANSWER_WITHIN_S = 10.0


@dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]


def unwrap_push(body: bytes) -> bytes:
    """The message inside a CMQ topic's JSON push envelope (``msgBody`` with ``topicName`` or
    ``TopicOwner``), else the body unchanged (a raw CI callback or a SIMPLIFIED push)."""
    if body.lstrip()[:1] != b"{":
        return body
    try:
        doc = json.loads(body)
    except (ValueError, RecursionError):
        return body  # not ours to judge: the consumer dead-letters it with the reason
    if (
        isinstance(doc, dict)
        and isinstance(doc.get("msgBody"), str)
        and ("topicName" in doc or "TopicOwner" in doc)
    ):
        return str(doc["msgBody"]).encode("utf-8")
    return body


class UrlReceiver:
    def __init__(
        self,
        settings: UrlIntakeSettings,
        forwarder: Forwarder,
        observers: Observers,
        answer_within_s: float = ANSWER_WITHIN_S,
    ) -> None:
        self.answer_within_s = answer_within_s
        token = settings.token.get_secret_value() if settings.token is not None else ""
        self._token = token.encode("utf-8")
        self.max_bytes = settings.max_bytes
        self._forwarder = forwarder
        self._obs = observers

    def token_matches(self, token: str) -> bool:
        return hmac.compare_digest(token.encode("utf-8"), self._token)

    def accept(self, token: str, body: bytes, headers: Mapping[str, str]) -> Answer:
        """Check, unwrap and forward one callback; the answer the HTTP layer sends back."""
        if not self.token_matches(token):
            # 404, not 401: a wrong token must not tell a scanner that the endpoint exists.
            return Answer(404, {"error": "no such callback endpoint"})
        if len(body) > self.max_bytes:
            return Answer(413, {"error": f"body larger than {self.max_bytes} bytes"})
        if not body.strip():
            return Answer(400, {"error": "empty body"})
        received_at, received = time.time(), time.monotonic()
        props = {SOURCE: "url"}
        via = "URL callback"
        message_id = headers.get("x-cmq-message-id")
        if message_id:
            props.update({SOURCE: "cmq-push", "CMQ_MSG_ID": message_id[:128]})
            via = f"CMQ push to the URL (message {message_id[:128]})"
        inner = unwrap_push(body)
        # The CMQ intake's path too: tracing continues the job's trace into the message.
        out = [Outgoing(inner, props)]
        try:
            since = time.monotonic() - received
            failed = self._forwarder.forward(
                out, self.answer_within_s, self._obs, received_s=since
            )[0]
        except ForwardError as exc:
            failed = str(exc)
        if failed is not None:
            self._obs.url_callback(accepted=False)
            log.warning("URL callback not taken by the broker; the sender will retry", error=failed)
            return Answer(503, {"error": "broker unavailable, retry later"})
        self._obs.url_callback(accepted=True)
        self._obs.callbacks_moved(self._forwarder.topic, [MovedCallback(inner, received_at, via)])
        return Answer(200, {"accepted": True})
