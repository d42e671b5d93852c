"""What the consumer, the dead-letter tool, the intake and the Pulsar sink share about the
broker: the client builder (TLS, token), how a partitioned topic's messages are named, and the
names of the properties asrd puts on the copies it publishes.

ORIGIN_MESSAGE_ID, REAL_TOPIC, RECONSUMETIMES and DELAY_TIME mirror the Java client's
retry-letter and dead-letter conventions, which TDMQ documents.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pulsar
import structlog
from pydantic import SecretStr

from .config import PulsarSettings
from .observability import pulsar_logger

log = structlog.get_logger("asrd.broker")

REASON = "ASRD_DLQ_REASON"
ATTEMPTS = "ASRD_ATTEMPTS"
PUBLISHED_MS = "ASRD_PUBLISHED_MS"  # when the first copy reached the broker (latency metric)
ORIGIN_MESSAGE_ID = "ORIGIN_MESSAGE_ID"
REAL_TOPIC = "REAL_TOPIC"
RECONSUMETIMES = "RECONSUMETIMES"
DELAY_TIME = "DELAY_TIME"
INTERNAL_PROPERTIES = (
    REASON, ATTEMPTS, PUBLISHED_MS, ORIGIN_MESSAGE_ID, REAL_TOPIC, RECONSUMETIMES, DELAY_TIME
)  # fmt: skip


class TokenSettings(Protocol):
    """Where a client's token comes from: ``[pulsar]`` or a Pulsar sink of its own."""

    @property
    def token(self) -> SecretStr | None: ...

    @property
    def token_file(self) -> Path | None: ...


class TokenFile:
    """The token supplier the client calls on every (re)connection and authentication refresh:
    the file's content, read again only when the file changed. A file that cannot be read, or
    is empty, leaves the last token in use (a rotation caught half-written must not log out)."""

    def __init__(self, path: Path, token: str) -> None:
        self.path = path
        self._token = token
        self._seen: tuple[int, int, int] | None = None  # the first call reads the file
        self._lock = threading.Lock()

    def _stamp(self) -> tuple[int, int, int] | None:
        try:
            st = self.path.stat()
        except OSError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def __call__(self) -> str:
        # Called from the client's own threads: it must never raise.
        with self._lock:
            stamp = self._stamp()
            if stamp is not None and stamp != self._seen:
                self._seen = stamp
                try:
                    fresh = self.path.read_text(encoding="utf-8").strip()
                except (OSError, UnicodeDecodeError) as exc:
                    log.warning(
                        "cannot read pulsar token file", path=str(self.path), error=str(exc)
                    )
                    fresh = ""
                if fresh and fresh != self._token:
                    self._token = fresh
                    log.info("pulsar token file changed: using the new token", path=str(self.path))
            return self._token


def current_token(source: TokenSettings) -> str:
    """The token a new connection would present now (the file's content, if it can be read)."""
    token = source.token.get_secret_value() if source.token is not None else ""
    return TokenFile(source.token_file, token)() if source.token_file is not None else token


def authentication(source: TokenSettings) -> pulsar.Authentication | None:
    token = source.token.get_secret_value() if source.token is not None else ""
    if source.token_file is not None:
        return pulsar.AuthenticationToken(TokenFile(source.token_file, token))
    return pulsar.AuthenticationToken(token) if token else None


def make_client(
    settings: PulsarSettings,
    service_url: str = "",
    credentials: TokenSettings | None = None,
    operation_timeout_s: int = 30,
    quiet: bool = False,
) -> pulsar.Client:
    """The one way asrd builds a Pulsar client: ``[pulsar]``'s TLS settings and token, or
    another ``service_url`` and ``credentials`` (a Pulsar sink's own) with the same TLS ones.

    ``quiet``: the client's own log lines are dropped, for probes whose failures are the answer
    (``asrd check`` names each problem in one line of its own)."""
    ca = settings.tls_trust_certs_file
    return pulsar.Client(
        service_url or settings.service_url,
        authentication=authentication(credentials or settings),
        operation_timeout_seconds=operation_timeout_s,
        tls_trust_certs_file_path=str(ca) if ca is not None else None,
        tls_validate_hostname=settings.tls_validate_hostname and not settings.tls_allow_insecure,
        tls_allow_insecure_connection=settings.tls_allow_insecure,
        logger=pulsar.FileLogger(pulsar.LoggerLevel.Error, os.devnull)
        if quiet
        else pulsar_logger(),
    )


def own_properties(props: Mapping[str, str]) -> dict[str, str]:
    """A message's properties without the ones asrd itself manages."""
    return {k: v for k, v in props.items() if k not in INTERNAL_PROPERTIES}


@dataclass(frozen=True)
class Inbound:
    """A received message and where its first copy came from (retry copies say so)."""

    handle: Any  # the pulsar.Message, for acknowledgement
    data: bytes
    origin_topic: str
    origin_id: str
    published_ms: int

    @property
    def key(self) -> str:
        """Its identity across retry copies: the ledger counts attempts under this key."""
        return f"{self.origin_topic}|{self.origin_id}"


# A partitioned topic's messages come from ``<topic>-partition-<n>`` (how Pulsar names the
# partitions, and how TDMQ creates topics by default).
_PARTITION = re.compile(r"-partition-\d+$")


def base_topic(topic: str) -> str:
    """The topic a message was published to, without the partition the broker put it on."""
    return _PARTITION.sub("", topic)


def same_topic(received: str, configured: str) -> bool:
    """Whether a message's topic (fully qualified, maybe one partition) is ``configured``, which
    may be written short (``my-topic``, ``tenant/ns/my-topic``)."""
    name = base_topic(received)
    return name == configured or name.endswith(("://" + configured, "/" + configured))


def inbound(msg: Any, retry_topic: str) -> Inbound:
    # The message id names the partition, so the base name plus the id is still unique; and a
    # retry copy's identity must not depend on which partition of the retry topic it landed on.
    topic = base_topic(msg.topic_name())
    msg_id, published = str(msg.message_id()), msg.publish_timestamp()
    if same_topic(topic, retry_topic):
        # Only our own retry copies say where they came from; anyone can set properties.
        props = msg.properties()
        topic = props.get(REAL_TOPIC) or topic
        msg_id = props.get(ORIGIN_MESSAGE_ID) or msg_id
        published = int(props.get(PUBLISHED_MS) or published)
    return Inbound(msg, msg.data(), topic, msg_id, int(published))


def letter_properties(m: Inbound, extra: Mapping[str, str]) -> dict[str, str]:
    """A retry or dead-letter copy's properties: the message's own, plus where and when its
    first copy came from, plus ``extra``."""
    props = own_properties(m.handle.properties())
    props.update({REAL_TOPIC: m.origin_topic, ORIGIN_MESSAGE_ID: m.origin_id})
    props.update({PUBLISHED_MS: str(m.published_ms), **extra})
    return props
