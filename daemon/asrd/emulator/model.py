"""The service's data model: jobs, queues (NotifyConfig), templates, time and id formats."""

from __future__ import annotations

import hashlib
import time
import uuid
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any

from asrd.emulator import xmlio
from asrd.emulator.errors import invalid

CST = timezone(timedelta(hours=8))  # the service prints every time in +0800
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"

STATES = ("Submitted", "Running", "Success", "Failed", "Pause", "Cancel")
TERMINAL = ("Success", "Failed", "Cancel")


def fmt_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, CST).strftime(TIME_FORMAT)


def parse_time(value: str) -> float:
    try:
        return datetime.strptime(value, TIME_FORMAT).timestamp()
    except ValueError as exc:
        raise invalid(f"invalid time {value!r}, expected YYYY-MM-DDTHH:MM:SS+0800") from exc


def new_job_id() -> str:
    return "s" + uuid.uuid1().hex


def default_queue_id(bucket: str) -> str:
    return "p" + hashlib.md5(bucket.encode()).hexdigest()  # noqa: S324 - just an id


@dataclass(frozen=True)
class MqConfig:
    region: str
    mode: str
    name: str


@dataclass
class NotifyConfig:
    state: str = "Off"
    event: str = "TaskFinish"
    result_format: str = "XML"
    type: str = "Url"
    url: str = ""
    mq_mode: str = ""
    mq_region: str = ""
    mq_name: str = ""

    def to_xml_dict(self) -> dict[str, Any]:
        return {
            "Event": self.event or None,
            "MqMode": self.mq_mode or None,
            "MqName": self.mq_name or None,
            "MqRegion": self.mq_region or None,
            "ResultFormat": self.result_format or None,
            "State": self.state,
            "Type": self.type or None,
            "Url": self.url or None,
        }


@dataclass
class Queue:
    queue_id: str
    bucket: str
    name: str
    created: float
    updated: float
    state: str = "Active"
    notify: NotifyConfig = field(default_factory=NotifyConfig)

    def to_xml_dict(self) -> dict[str, Any]:
        return {
            "BucketId": self.bucket,
            "Category": "Speeching",
            "CreateTime": fmt_time(self.created),
            "MaxConcurrent": "10",
            "MaxSize": "10000",
            "Name": self.name,
            "NotifyConfig": self.notify.to_xml_dict(),
            "QueueId": self.queue_id,
            "State": self.state,
            "UpdateTime": fmt_time(self.updated),
        }


@dataclass
class Template:
    template_id: str
    name: str
    bucket: str
    params: dict[str, str]
    created: float

    def to_xml_dict(self) -> dict[str, Any]:
        return {
            "BucketId": self.bucket,
            "Category": "Custom",
            "CreateTime": fmt_time(self.created),
            "Name": self.name,
            "SpeechRecognition": self.params,
            "Tag": "SpeechRecognition",
            "TemplateId": self.template_id,
            "UpdateTime": fmt_time(self.created),
        }


@dataclass
class Job:
    job_id: str
    seq: int
    bucket: str
    region: str
    queue_id: str
    input_object: str | None
    input_url: str | None
    output_bucket: str
    output_region: str
    output_object: str
    params: dict[str, str]
    template: Template | None
    user_data: str | None
    job_level: str
    callback: str | None
    callback_format: str | None
    callback_type: str | None
    mq: MqConfig | None
    created: float
    started: float | None = None
    ended: float | None = None
    state: str = "Submitted"
    code: str = "Success"
    message: str = ""
    result: dict[str, Any] | None = None
    # Only for jobs that look triggered by a workflow (the "workflow" shape).
    workflow: dict[str, str] | None = None
    cos_headers: list[dict[str, str]] | None = None
    _cache: bytes | None = field(default=None, repr=False)

    def set_state(self, state: str, now: float) -> None:
        self.state = state
        if state == "Running":
            self.started = now
        elif state in TERMINAL:
            self.started = self.started or now
            self.ended = now
        self._cache = None

    def detail(self) -> dict[str, Any]:
        """``JobsDetail`` as the service renders it (alphabetical order like its examples)."""
        inp: dict[str, Any] = {"BucketId": self.bucket}
        if self.input_object is not None:
            inp["Object"] = self.input_object
        inp["Region"] = self.region
        if self.input_url is not None and self.input_object is None:
            inp["Url"] = self.input_url
        if self.cos_headers:
            inp["CosHeaders"] = self.cos_headers
        op: dict[str, Any] = {
            "JobLevel": self.job_level,
            "Output": {
                "Bucket": self.output_bucket,
                "Object": self.output_object,
                "Region": self.output_region,
            },
            "SpeechRecognition": self.params,
        }
        if self.result is not None:
            op["SpeechRecognitionResult"] = self.result
        if self.template is not None:
            op["TemplateId"] = self.template.template_id
            op["TemplateName"] = self.template.name
        if self.user_data is not None:
            op["UserData"] = self.user_data
        detail: dict[str, Any] = {
            "Code": self.code,
            "CreationTime": fmt_time(self.created),
            "EndTime": fmt_time(self.ended),
            "Input": inp,
            "JobId": self.job_id,
            "Message": self.message or None,
            "Operation": op,
            "QueueId": self.queue_id,
            "StartTime": fmt_time(self.started),
            "State": self.state,
            "Tag": "SpeechRecognition",
        }
        if self.workflow:
            detail["Workflow"] = self.workflow
        return detail

    def to_record(self) -> dict[str, Any]:
        rec = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "_cache"}
        rec["template"] = self.template.template_id if self.template else None
        rec["mq"] = asdict(self.mq) if self.mq else None
        return {"kind": "job", **rec}

    @classmethod
    def from_record(cls, rec: dict[str, Any], templates: dict[str, Template]) -> Job:
        values = {f.name: rec[f.name] for f in fields(cls) if f.name in rec}
        values["template"] = templates.get(rec["template"]) if rec.get("template") else None
        values["mq"] = MqConfig(**rec["mq"]) if rec.get("mq") else None
        return cls(**values)

    def detail_xml(self) -> bytes:
        """Rendered ``<JobsDetail>`` fragment, cached until the job changes (hot get path)."""
        if self._cache is None:
            self._cache = xmlio.fragment("JobsDetail", self.detail())
        return self._cache


def now() -> float:
    return time.time()
