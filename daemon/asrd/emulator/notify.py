"""TaskFinish notifications: bodies (XML/JSON), URL POSTs, and the legacy TDMQ → Pulsar path."""

from __future__ import annotations

import json
import logging
import threading
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from asrd.emulator import xmlio
from asrd.emulator.shapes import json_shape, workflow_finish

log = logging.getLogger("asrd.emulator.notify")


def _prune(node: Any) -> Any:
    """JSON form: empty XML elements are omitted, leaves stay strings
    (docs/tencent-cloud.md §2.2)."""
    if isinstance(node, dict):
        out = {k: _prune(v) for k, v in node.items() if v is not None}
        return {k: v for k, v in out.items() if v is not None}
    if isinstance(node, list):
        return [_prune(v) for v in node if v is not None]
    return node


def callback_body(
    detail: dict[str, Any], fmt: str, shapes: frozenset[str] = frozenset()
) -> tuple[bytes, str]:
    """``(body, content type)`` of the TaskFinish message for one job."""
    if fmt == "JSON":
        # UNCONFIRMED: JobsDetail as an object (some doc examples show an array of one, which
        # the jobs-array shape sends).
        doc = json_shape({"EventName": "TaskFinish", "JobsDetail": _prune(detail)}, shapes)
        return json.dumps(doc, ensure_ascii=False).encode(), "application/json"
    body = xmlio.document("Response", {"EventName": "TaskFinish", "JobsDetail": detail})
    return body, "application/xml"


def workflow_finish_body(detail: dict[str, Any], fmt: str) -> tuple[bytes, str]:
    """``(body, content type)`` of the WorkflowFinish event that follows a workflow's job."""
    doc = workflow_finish(detail)
    if fmt == "JSON":
        return json.dumps(_prune(doc), ensure_ascii=False).encode(), "application/json"
    return xmlio.document("Response", doc), "application/xml"


@dataclass(frozen=True)
class Delivery:
    """Where one notification goes: a CMQ queue/topic (TDMQ) or a URL."""

    kind: str  # "TDMQ" | "Url"
    target: str  # MqName or URL
    fmt: str
    properties: dict[str, str]


class Notifier:
    """One long-lived Pulsar client, one producer per topic (batching off), URL POSTs.

    Blocking client calls run on a small thread pool so the event loop never waits on them.
    """

    def __init__(self, pulsar_url: str, topic_template: str, url_timeout: float = 10.0) -> None:
        self.pulsar_url = pulsar_url
        self.topic_template = topic_template
        self.url_timeout = url_timeout
        self.pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="notify")
        self._lock = threading.Lock()
        self._client: Any = None
        self._producers: dict[str, Any] = {}
        self.used_pulsar = False
        # Closed client objects stay referenced: their C++ destructors must not run on
        # an arbitrary thread (see cli.main).
        self._closed: list[Any] = []
        # Callbacks go straight to the URL the job named, never through an environment proxy.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def topic_for(self, mq_name: str) -> str:
        return self.topic_template.format(MqName=mq_name)

    def _producer(self, topic: str) -> Any:
        with self._lock:
            producer = self._producers.get(topic)
            if producer is None:
                import pulsar  # imported lazily: only emulators with TDMQ jobs need the C++ client

                if self._client is None:
                    self.used_pulsar = True
                    plog = logging.getLogger("pulsar")
                    plog.setLevel(logging.WARNING)
                    self._client = pulsar.Client(
                        self.pulsar_url, logger=plog, operation_timeout_seconds=10
                    )
                producer = self._client.create_producer(
                    topic, batching_enabled=False, send_timeout_millis=30000
                )
                self._producers[topic] = producer
            return producer

    def deliver(self, delivery: Delivery, body: bytes, content_type: str) -> None:
        """Blocking; raises on failure (the caller counts and retries)."""
        if delivery.kind == "TDMQ":  # only with --tdmq-to-pulsar
            topic = self.topic_for(delivery.target)
            self._producer(topic).send(body, properties=delivery.properties)
            return
        req = urllib.request.Request(  # noqa: S310 - the job owner chose this URL
            delivery.target, data=body, method="POST", headers={"Content-Type": content_type}
        )
        with self._opener.open(req, timeout=self.url_timeout) as resp:
            resp.read()

    def close(self) -> None:
        """Flush and close producers and the client (the caller drained deliveries first)."""
        # A send still blocked on an unreachable broker fails once its producer is closed.
        self.pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for producer in self._producers.values():
                try:
                    producer.flush()
                    producer.close()
                except Exception as exc:  # noqa: BLE001 - shutting down anyway
                    log.warning("closing producer failed: %s", exc)
                self._closed.append(producer)
            self._producers.clear()
            if self._client is not None:
                try:
                    self._client.close()
                except Exception as exc:  # noqa: BLE001
                    log.warning("closing pulsar client failed: %s", exc)
                self._closed.append(self._client)
                self._client = None
