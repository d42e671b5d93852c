"""A job-finished message body (XML or JSON, as CI publishes it to TDMQ) → ``CallbackEvent``.

The callback is only a hint that a job ended; the pipeline reads the job back before trusting
anything. Parsing is strict about size, entities and shape, and every refusal is a
``BadMessage`` whose text says what is wrong, for the dead-letter reason.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from xml.sax.handler import ContentHandler

import defusedxml.sax as defused_sax
import xmltodict
from defusedxml import DefusedXmlException

from .vocabulary import JOB_ID as JOB_ID
from .vocabulary import BadMessage as BadMessage
from .vocabulary import valid_job_id as valid_job_id

_MAX_DEPTH = 64


@dataclass(frozen=True)
class CallbackEvent:
    job_id: str
    event_name: str
    tag: str
    state: str
    body_format: str  # "xml" | "json"

    @property
    def is_asr_task_finish(self) -> bool:
        # A missing Tag is given the benefit of the doubt: get-job only knows ASR jobs, so a
        # foreign id ends in the dead-letter topic, never in a sink.
        return self.event_name == "TaskFinish" and self.tag in ("SpeechRecognition", "")


def _depth(node: Any, limit: int = _MAX_DEPTH) -> int:
    """Nesting depth of ``node``, stopping at ``limit + 1``; iterative, memory O(depth)."""
    deepest = 1
    stack: list[Iterator[Any]] = [iter((node,))]
    while stack:
        for item in stack[-1]:
            deepest = max(deepest, len(stack))
            if deepest > limit:
                return deepest
            if isinstance(item, dict):
                children: Iterable[Any] = item.values()
            elif isinstance(item, list):
                children = item
            else:
                continue
            stack.append(iter(children))
            break
        else:
            stack.pop()
    return deepest


class _XmlGuard(ContentHandler):
    """Streams the document once, keeping nothing: refuses deep nesting before any tree exists."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0

    def startElement(self, name: str, attrs: Any) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise BadMessage(f"body nested deeper than {_MAX_DEPTH} levels")

    def endElement(self, name: str) -> None:
        self.depth -= 1


def _parse_xml(body: bytes) -> dict[str, Any]:
    try:
        # defusedxml refuses DTDs, entity expansion and external entities before xmltodict sees it.
        defused_sax.parseString(body, _XmlGuard(), forbid_dtd=True)
        tree = xmltodict.parse(body, disable_entities=True)
    except BadMessage:
        raise
    except DefusedXmlException as exc:
        raise BadMessage(f"XML body refused: {type(exc).__name__}") from None
    except Exception as exc:  # noqa: BLE001 - expat raises several unrelated types
        raise BadMessage(f"XML body not well-formed: {_first_line(exc)}") from None
    if not isinstance(tree, dict) or "Response" not in tree:
        raise BadMessage("XML body has no <Response> root")
    root = tree["Response"]
    if not isinstance(root, dict):
        raise BadMessage("XML <Response> is empty")
    return root


def _parse_json(body: bytes) -> dict[str, Any]:
    try:
        tree = json.loads(body)
    except RecursionError:
        raise BadMessage("JSON body nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadMessage(f"JSON body not valid: {_first_line(exc)}") from None
    if not isinstance(tree, dict):
        raise BadMessage("JSON body is not an object")
    return tree


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [type(exc).__name__])[0][:200]


def _text(node: dict[str, Any], key: str) -> str:
    value = node.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise BadMessage(f"{key} is not a text value")
    return value


def parse(body: bytes, max_bytes: int = 5 * 1024 * 1024) -> CallbackEvent:
    """Parse a TaskFinish body. Raises ``BadMessage`` with the reason."""
    if len(body) > max_bytes:
        raise BadMessage(f"body of {len(body)} bytes exceeds the {max_bytes}-byte limit")
    body = body.removeprefix(b"\xef\xbb\xbf")  # a UTF-8 byte order mark is harmless
    head = body.lstrip()[:1]
    if head == b"<":
        root, fmt = _parse_xml(body), "xml"
    elif head in (b"{", b"["):
        root, fmt = _parse_json(body), "json"
    elif not head:
        raise BadMessage("empty body")
    else:
        raise BadMessage("body is neither XML nor JSON")
    if _depth(root) > _MAX_DEPTH:
        raise BadMessage(f"body nested deeper than {_MAX_DEPTH} levels")
    wrapped = root.get("Response")
    if fmt == "json" and isinstance(wrapped, dict) and "JobsDetail" not in root:
        root = wrapped  # a JSON body wrapped in a top-level Response, as the XML is
    detail = root.get("JobsDetail")
    # Some CI examples wrap JobsDetail in a one-element array.
    if isinstance(detail, list):
        if len(detail) != 1:
            raise BadMessage(f"JobsDetail holds {len(detail)} jobs, expected one")
        detail = detail[0]
    event_name = _text(root, "EventName")
    if not isinstance(detail, dict):
        if event_name and event_name != "TaskFinish":
            # Other events (WorkflowFinish) have another shape; the pipeline ignores them.
            return CallbackEvent("", event_name, "", "", fmt)
        raise BadMessage("no JobsDetail in the message")
    tag = _text(detail, "Tag")
    job_id = _text(detail, "JobId")
    if tag and tag != "SpeechRecognition":
        return CallbackEvent(job_id, event_name, tag, _text(detail, "State"), fmt)
    if not event_name:
        raise BadMessage("no EventName in the message")
    return CallbackEvent(valid_job_id(job_id), event_name, tag, _text(detail, "State"), fmt)
