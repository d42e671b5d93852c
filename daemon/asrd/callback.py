"""A job-finished message body (XML or JSON, as CI publishes it to TDMQ) → ``CallbackEvent``.

The callback is only a hint that a job ended; the pipeline reads the job back before trusting
anything. Parsing is strict about size, entities and shape, and every refusal is a
``BadMessage`` whose text says what is wrong, for the dead-letter reason.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

import defusedxml.ElementTree as SafeET
import xmltodict
from defusedxml import DefusedXmlException

JOB_ID = re.compile(r"s[0-9a-f]{32}")
_MAX_DEPTH = 64


class BadMessage(Exception):
    """The body can never be processed; the text is the dead-letter reason."""


@dataclass(frozen=True)
class CallbackEvent:
    job_id: str
    event_name: str
    tag: str
    state: str
    body_format: str  # "xml" | "json"

    @property
    def is_asr_task_finish(self) -> bool:
        return self.event_name == "TaskFinish" and self.tag == "SpeechRecognition"


def valid_job_id(value: object) -> str:
    """The id if it has CI's job id form (safe in file names and keys); else ``BadMessage``."""
    if not isinstance(value, str) or not JOB_ID.fullmatch(value):
        shown = repr(value)[:80]
        raise BadMessage(f"JobId {shown} is not a CI job id (s + 32 hex digits)")
    return value


def _depth(node: Any, limit: int = _MAX_DEPTH) -> int:
    # Iterative, so a hostile document cannot exhaust the interpreter's stack.
    deepest = 0
    stack: list[tuple[Any, int]] = [(node, 1)]
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        if isinstance(item, dict):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, list):
            stack.extend((v, depth + 1) for v in item)
    return deepest


def _parse_xml(body: bytes) -> dict[str, Any]:
    try:
        # defusedxml refuses DTDs, entity expansion and external entities before xmltodict sees it.
        SafeET.fromstring(body, forbid_dtd=True)
        tree = xmltodict.parse(body, disable_entities=True)
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
