"""The documented shapes CI's describes and callbacks take (``--shape``), so a client can be
exercised against each one and not only against the emulator's default rendering.

Default (no shape): JSON ``JobsDetail`` as an object, empty ``Message``, one ``Result`` string,
``ResultDetail``/``Words`` as arrays, no flash results, no workflow nodes. Each shape below is
one variant the reference shows (``docs/tencent-cloud.md`` §1.5, §2.2):

- ``jobs-array``: JSON callbacks carry ``JobsDetail`` as an array of one.
- ``message-success``: a successful job says ``Message=Success`` (describes and callbacks).
- ``repeated-result``: ``Result`` is repeated, one element per segment line.
- ``single-objects``: JSON callbacks render a one-element array as an object (``ResultDetail``,
  ``Words``...), as CI's XML-to-JSON conversion does.
- ``flash``: every job is answered as a Flash ASR job: ``FlashResult`` (snake_case nodes) in
  place of ``ResultDetail``. Jobs created with ``FlashAsr=true`` get it without the shape.
- ``workflow``: jobs look triggered by a workflow: ``Input.CosHeaders`` and ``Workflow``.
- ``workflow-finish``: after each TaskFinish, a ``WorkflowFinish`` event (no ``JobsDetail``,
  a ``WorkflowExecution``) goes to the same target.
"""

from __future__ import annotations

import hashlib
from typing import Any

from asrd.emulator import transcript

__all__ = [
    "SHAPES",
    "cos_headers",
    "flash_result",
    "json_shape",
    "workflow_finish",
    "workflow_node",
]

SHAPES = (
    "jobs-array",
    "message-success",
    "repeated-result",
    "single-objects",
    "flash",
    "workflow",
    "workflow-finish",
)


def flash_result(tr: transcript.Transcript) -> list[dict[str, Any]]:
    """``FlashResult``: one entry per channel (one here), times in ms from the audio start."""
    sentences = [
        {
            "end_time": str(s.end_ms),
            "speaker_id": str(s.speaker),
            "start_time": str(s.start_ms),
            "text": s.text,
            "word_list": [
                {
                    "end_time": str(s.start_ms + w.end_ms),
                    "start_time": str(s.start_ms + w.start_ms),
                    "word": w.text,
                }
                for w in s.words
            ],
        }
        for s in tr.segments
    ]
    text = "".join(s.text for s in tr.segments)
    return [{"channel_id": "0", "sentence_list": sentences, "text": text}]


def _ids(job_id: str) -> tuple[str, str]:
    digest = hashlib.sha1(job_id.encode()).hexdigest()  # noqa: S324 - just stable ids
    return "w" + digest[:32], "i" + digest[8:40]


def workflow_node(job_id: str) -> dict[str, str]:
    workflow_id, run_id = _ids(job_id)
    return {
        "Name": "SpeechRecognition_1581665960537",
        "RunId": run_id,
        "WorkflowId": workflow_id,
        "WorkflowName": "asr-on-upload",
    }


def cos_headers(size: int) -> list[dict[str, str]]:
    return [
        {"Key": "Content-Type", "Value": "audio/mpeg"},
        {"Key": "EventName", "Value": "cos:ObjectCreated:Put"},
        {"Key": "Size", "Value": str(size)},
        {"Key": "x-cos-request-id", "Value": "NjQ1YjQ5ZjBfNjA0ZTNhMDlfYjM0Y18x"},
    ]


def workflow_finish(detail: dict[str, Any]) -> dict[str, Any]:
    """The ``WorkflowFinish`` event for a workflow-triggered job (no ``JobsDetail``)."""
    node = detail.get("Workflow") or workflow_node(str(detail.get("JobId", "")))
    task = {
        "Code": detail.get("Code"),
        "EndTime": detail.get("EndTime"),
        "JobId": detail.get("JobId"),
        "Message": detail.get("Message"),
        "StartTime": detail.get("StartTime"),
        "State": detail.get("State"),
        "Type": "SpeechRecognition",
    }
    execution = {
        "CreateTime": detail.get("CreationTime"),
        "Object": (detail.get("Input") or {}).get("Object"),
        "RunId": node["RunId"],
        "State": detail.get("State"),
        "Tasks": [task],
        "WorkflowId": node["WorkflowId"],
        "WorkflowName": node["WorkflowName"],
    }
    return {"EventName": "WorkflowFinish", "WorkflowExecution": execution}


def _singles(node: Any) -> Any:
    if isinstance(node, dict):
        return {k: _singles(v) for k, v in node.items()}
    if isinstance(node, list):
        items = [_singles(v) for v in node]
        return items[0] if len(items) == 1 else items
    return node


def json_shape(doc: dict[str, Any], shapes: frozenset[str]) -> dict[str, Any]:
    """The JSON callback document in the selected shapes."""
    if "single-objects" in shapes:
        doc = _singles(doc)
    if "jobs-array" in shapes and isinstance(doc.get("JobsDetail"), dict):
        doc = {**doc, "JobsDetail": [doc["JobsDetail"]]}
    return doc
