"""Job, queue and template model; create-request validation; the in-memory job store."""

from __future__ import annotations

import hashlib
import time
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timedelta, timezone
from typing import Any

from asrd.emulator import xmlio
from asrd.emulator.errors import invalid
from asrd.emulator.journal import Journal

CST = timezone(timedelta(hours=8))  # the service prints every time in +0800
TIME_FORMAT = "%Y-%m-%dT%H:%M:%S%z"

STATES = ("Submitted", "Running", "Success", "Failed", "Pause", "Cancel")
TERMINAL = ("Success", "Failed", "Cancel")

ENGINES = frozenset(
    {
        "8k_zh",
        "8k_zh_s",
        "8k_en",
        "16k_zh",
        "16k_zh_video",
        "16k_en",
        "16k_ca",
        "16k_ja",
        "16k_zh_edu",
        "16k_en_edu",
        "16k_zh_medical",
        "16k_th",
        "16k_zh_dialect",
    }
)
FLASH_ENGINES = frozenset(
    {"8k_zh", "16k_zh", "16k_en", "16k_zh_video", "16k_zh_dialect", "16k_ms", "16k_zh-PY"}
)
FLASH_FORMATS = frozenset({"wav", "pcm", "ogg-opus", "speex", "silk", "mp3", "m4a", "aac"})
MQ_REGIONS = frozenset({"sh", "bj", "gz", "cd", "hk"})
MQ_MODES = frozenset({"Queue", "Topic"})

# Defaults the service fills in and echoes (reference §2.3, real example).
_SR_DEFAULTS = {
    "ChannelNum": "1",  # UNCONFIRMED: documented as required for non-flash; we default to mono.
    "ConvertNumMode": "0",
    "FilterDirty": "0",
    "FilterModal": "0",
    "FilterPunc": "0",
    "OutputFileType": "txt",
    "ResTextFormat": "0",
    "SpeakerDiarization": "0",
    "SpeakerNumber": "0",
}
_SR_CHOICES = {
    "ResTextFormat": {"0", "1", "2", "3"},
    "FilterDirty": {"0", "1", "2"},
    "FilterModal": {"0", "1", "2"},
    "ConvertNumMode": {"0", "1", "3"},
    "SpeakerDiarization": {"0", "1"},
    "SpeakerNumber": {str(i) for i in range(11)},
    "FilterPunc": {"0", "1", "2"},
    "OutputFileType": {"txt", "srt"},
    "FlashAsr": {"true", "false"},
    "FirstChannelOnly": {"0", "1"},
    "WordInfo": {"0", "1", "2"},
    "ChannelNum": {"1", "2"},
}
_SR_KNOWN = frozenset(
    {*_SR_CHOICES, "EngineModelType", "Format", "SentenceMaxLength", "HotVocabularyTableId"}
)


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


def _text(node: Any, name: str) -> str | None:
    """A leaf's text, None when absent or empty; containers where text is expected are errors."""
    if not isinstance(node, dict):
        return None
    value = node.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise invalid(f"{name} must be a single text value")
    value = value.strip()
    return value or None


def _container(node: Any, name: str) -> dict[str, Any] | None:
    if not isinstance(node, dict):
        return None
    value = node.get(name)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise invalid(f"{name} must be a single container element")
    return value


def effective_speech_params(sr: dict[str, Any]) -> dict[str, str]:
    """Validate SpeechRecognition and return it with defaults filled, keys sorted."""
    params: dict[str, str] = {}
    for name in sr:
        if name not in _SR_KNOWN:
            continue  # the service ignores nodes it does not know (e.g. SentenceSize)
        value = _text(sr, name)
        if value is not None:
            params[name] = value
    engine = params.get("EngineModelType")
    if engine is None:
        raise invalid("SpeechRecognition.EngineModelType is required")
    flash = params.get("FlashAsr", "false") == "true"
    for name, choices in _SR_CHOICES.items():
        if name in params and params[name] not in choices:
            raise invalid(f"invalid SpeechRecognition.{name} {params[name]!r}")
    if flash:
        if engine not in FLASH_ENGINES:
            raise invalid(f"EngineModelType {engine!r} is not supported with FlashAsr")
        if params.get("Format") not in FLASH_FORMATS:
            raise invalid("SpeechRecognition.Format is required with FlashAsr")
    else:
        if engine not in ENGINES:
            raise invalid(f"unknown EngineModelType {engine!r}")
        for name, value in _SR_DEFAULTS.items():
            params.setdefault(name, value)
        if params["ChannelNum"] == "2" and engine != "8k_zh":
            raise invalid("ChannelNum 2 is only supported by 8k_zh")
    sml = params.get("SentenceMaxLength")
    if sml is not None and not (sml.isdigit() and (int(sml) == 0 or 6 <= int(sml) <= 40)):
        raise invalid("SentenceMaxLength must be 0 or 6..40")
    return dict(sorted(params.items()))


@dataclass(frozen=True)
class MqConfig:
    region: str
    mode: str
    name: str


def parse_mq_config(node: dict[str, Any]) -> MqConfig:
    region, mode, name = _text(node, "MqRegion"), _text(node, "MqMode"), _text(node, "MqName")
    if region not in MQ_REGIONS:
        raise invalid(f"CallBackMqConfig.MqRegion must be one of {sorted(MQ_REGIONS)}")
    if mode not in MQ_MODES:
        raise invalid("CallBackMqConfig.MqMode must be Queue or Topic")
    if not name:
        raise invalid("CallBackMqConfig.MqName is required")
    return MqConfig(region, mode, name)


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


def apply_queue_update(queue: Queue, body: dict[str, Any], now: float) -> None:
    """``PUT /asrqueue/<id>``: Name, State and NotifyConfig, validated before anything changes."""
    name = _text(body, "Name")
    state = _text(body, "State")
    if state is not None and state not in ("Active", "Paused"):
        raise invalid("State must be Active or Paused")
    nc_node = _container(body, "NotifyConfig")
    notify = queue.notify
    if nc_node is not None:
        notify = NotifyConfig(
            state=_text(nc_node, "State") or "Off",
            event=_text(nc_node, "Event") or "TaskFinish",
            result_format=_text(nc_node, "ResultFormat") or "XML",
            type=_text(nc_node, "Type") or "Url",
            url=_text(nc_node, "Url") or "",
            mq_mode=_text(nc_node, "MqMode") or "",
            mq_region=_text(nc_node, "MqRegion") or "",
            mq_name=_text(nc_node, "MqName") or "",
        )
        if notify.state not in ("On", "Off"):
            raise invalid("NotifyConfig.State must be On or Off")
        if notify.result_format not in ("XML", "JSON"):
            raise invalid("NotifyConfig.ResultFormat must be XML or JSON")
        if notify.type not in ("Url", "TDMQ"):
            raise invalid("NotifyConfig.Type must be Url or TDMQ")
        if notify.state == "On" and notify.type == "TDMQ":
            parse_mq_config(
                {"MqRegion": notify.mq_region, "MqMode": notify.mq_mode, "MqName": notify.mq_name}
            )
        if notify.state == "On" and notify.type == "Url" and not notify.url:
            raise invalid("NotifyConfig.Url is required when Type is Url")
    if name is not None:
        queue.name = name
    if state is not None:
        queue.state = state
    queue.notify = notify
    queue.updated = now


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
        return {
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


@dataclass(frozen=True)
class CreateRequest:
    """A validated ``POST /asr_jobs`` body."""

    queue_id: str | None
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


def parse_create(root: str, body: Any, templates: dict[str, Template]) -> CreateRequest:
    if root != "Request" or not isinstance(body, dict):
        raise invalid("root element must be Request")
    tag = _text(body, "Tag")
    if tag != "SpeechRecognition":
        raise invalid(f"Tag must be SpeechRecognition, got {tag!r}")
    inp = _container(body, "Input")
    input_object = _text(inp, "Object")
    input_url = _text(inp, "Url")
    if input_object is None and input_url is None:
        raise invalid("Input.Object or Input.Url is required")
    op = _container(body, "Operation")
    if op is None:
        raise invalid("Operation is required")
    out = _container(op, "Output")
    out_bucket, out_region, out_object = (
        _text(out, "Bucket"),
        _text(out, "Region"),
        _text(out, "Object"),
    )
    if out_bucket is None or out_region is None or out_object is None:
        raise invalid("Operation.Output.Bucket, Region and Object are required")
    template_id = _text(op, "TemplateId")
    template: Template | None = None
    if template_id is not None:
        template = templates.get(template_id)
        if template is None:
            raise invalid(f"TemplateId {template_id} does not exist")
        params = dict(template.params)  # inline SpeechRecognition is ignored with a template
    else:
        sr = _container(op, "SpeechRecognition")
        if sr is None:
            raise invalid("Operation.TemplateId or Operation.SpeechRecognition is required")
        params = effective_speech_params(sr)
    user_data = _text(op, "UserData")
    if user_data is not None and (
        len(user_data) > 1024 or not all(32 <= ord(c) < 127 for c in user_data)
    ):
        raise invalid("UserData must be printable ASCII of at most 1024 characters")
    job_level = _text(op, "JobLevel") or "0"
    if job_level not in ("0", "1", "2"):
        raise invalid("JobLevel must be 0, 1 or 2")
    cb_format = _text(body, "CallBackFormat")
    if cb_format is not None and cb_format not in ("XML", "JSON"):
        raise invalid("CallBackFormat must be XML or JSON")
    cb_type = _text(body, "CallBackType")
    if cb_type is not None and cb_type not in ("Url", "TDMQ"):
        raise invalid("CallBackType must be Url or TDMQ")
    mq_node = _container(body, "CallBackMqConfig")
    mq: MqConfig | None = None
    if cb_type == "TDMQ" and mq_node is None:
        raise invalid("CallBackMqConfig is required when CallBackType is TDMQ")
    if mq_node is not None:
        mq = parse_mq_config(mq_node)
    return CreateRequest(
        queue_id=_text(body, "QueueId"),
        input_object=input_object,
        input_url=input_url,
        output_bucket=out_bucket,
        output_region=out_region,
        output_object=out_object,
        params=params,
        template=template,
        user_data=user_data,
        job_level=job_level,
        callback=_text(body, "CallBack"),
        callback_format=cb_format,
        callback_type=cb_type,
        mq=mq,
    )


def parse_template(root: str, body: Any) -> tuple[str, dict[str, str]]:
    if root != "Request" or not isinstance(body, dict):
        raise invalid("root element must be Request")
    if _text(body, "Tag") != "SpeechRecognition":
        raise invalid("Tag must be SpeechRecognition")
    name = _text(body, "Name")
    if name is None:
        raise invalid("Name is required")
    sr = _container(body, "SpeechRecognition")
    if sr is None:
        raise invalid("SpeechRecognition is required")
    return name, effective_speech_params(sr)


@dataclass(frozen=True)
class ListQuery:
    queue_id: str | None
    states: frozenset[str] | None  # None = All
    descending: bool
    size: int
    after_seq: int | None
    start: float | None
    end: float | None


def parse_list_query(params: dict[str, str]) -> ListQuery:
    tag = params.get("tag")
    if tag != "SpeechRecognition":
        raise invalid("tag must be SpeechRecognition")
    order = params.get("orderByTime") or "Desc"
    if order not in ("Desc", "Asc"):
        raise invalid("orderByTime must be Desc or Asc")
    raw_states = params.get("states") or "All"
    names = [s.strip() for s in raw_states.split(",") if s.strip()]
    if not names or any(s != "All" and s not in STATES for s in names):
        raise invalid(f"invalid states {raw_states!r}")
    states = None if "All" in names else frozenset(names)
    raw_size = params.get("size") or "10"
    if not raw_size.isdigit() or not 1 <= int(raw_size) <= 100:
        raise invalid("size must be an integer between 1 and 100")
    token = params.get("nextToken") or ""
    after: int | None = None
    if token:
        try:
            after = int(token, 16)
        except ValueError as exc:
            raise invalid("invalid nextToken") from exc
    start = params.get("startCreationTime")
    end = params.get("endCreationTime")
    return ListQuery(
        queue_id=params.get("queueId") or None,
        states=states,
        descending=order == "Desc",
        size=int(raw_size),
        after_seq=after,
        start=parse_time(start) if start else None,
        end=parse_time(end) if end else None,
    )


class JobStore:
    """Jobs in creation order; all access happens on the event loop thread."""

    def __init__(self, journal: Journal | None = None) -> None:
        self._jobs: dict[str, Job] = {}
        self._order: list[Job] = []
        self._seq = 0
        self.queues: dict[str, Queue] = {}
        self.templates: dict[str, Template] = {}
        self._journal = journal

    def restore(self) -> list[Job]:
        """Replay the journal; returns the jobs that had not finished (to be run again)."""
        if self._journal is None:
            return []
        jobs: dict[str, Job] = {}
        for rec in self._journal.records():
            kind = rec.pop("kind", None)
            try:
                if kind == "template":
                    t = Template(**rec)
                    self.templates[t.template_id] = t
                elif kind == "queue":
                    notify = NotifyConfig(**rec.pop("notify"))
                    q = Queue(**rec, notify=notify)
                    self.queues[q.queue_id] = q
                elif kind == "job":
                    job = Job.from_record(rec, self.templates)
                    jobs[job.job_id] = job
            except (TypeError, KeyError) as exc:
                raise ValueError(f"journal record of kind {kind!r} unreadable: {exc}") from exc
        self._order = sorted(jobs.values(), key=lambda j: j.seq)
        # seq n must sit at index n-1 (list paging relies on it); renumber after gaps.
        for i, job in enumerate(self._order, start=1):
            job.seq = i
        self._jobs = {j.job_id: j for j in self._order}
        self._seq = len(self._order)
        # Keep only the latest record per id, so the journal does not grow across restarts.
        self._journal.rewrite(
            [{"kind": "template", **asdict(t)} for t in self.templates.values()]
            + [{"kind": "queue", **asdict(q)} for q in self.queues.values()]
            + [j.to_record() for j in self._order]
        )
        return [j for j in self._order if j.state in ("Submitted", "Running")]

    def save(self, job: Job) -> None:
        """Record a job's new state (called after every change)."""
        if self._journal is not None:
            self._journal.write(job.to_record())

    def save_queue(self, queue: Queue) -> None:
        if self._journal is not None:
            rec = asdict(queue)
            self._journal.write({"kind": "queue", **rec})

    def add_template(self, template: Template) -> None:
        self.templates[template.template_id] = template
        if self._journal is not None:
            self._journal.write({"kind": "template", **asdict(template)})

    def queue(self, bucket: str, queue_id: str | None, now: float) -> Queue:
        """The job's queue; unknown ids are created on first use like buckets are."""
        qid = queue_id or default_queue_id(bucket)
        q = self.queues.get(qid)
        if q is None:
            # UNCONFIRMED: the real service rejects unknown queue ids; the emulator has no
            # queue-creation API, so any id is accepted and materialised here.
            q = Queue(qid, bucket, "queue-" + qid[1:9], created=now, updated=now)
            self.queues[qid] = q
            self.save_queue(q)
        return q

    def add(self, bucket: str, region: str, req: CreateRequest, now: float) -> Job:
        self._seq += 1
        queue = self.queue(bucket, req.queue_id, now)
        job = Job(
            job_id=new_job_id(),
            seq=self._seq,
            bucket=bucket,
            region=region,
            queue_id=queue.queue_id,
            input_object=req.input_object,
            input_url=req.input_url,
            output_bucket=req.output_bucket,
            output_region=req.output_region,
            output_object=req.output_object,
            params=req.params,
            template=req.template,
            user_data=req.user_data,
            job_level=req.job_level,
            callback=req.callback,
            callback_format=req.callback_format,
            callback_type=req.callback_type,
            mq=req.mq,
            created=now,
        )
        if queue.state == "Paused":
            job.state = "Pause"  # waits until the queue is active again
        self._jobs[job.job_id] = job
        self._order.append(job)
        self.save(job)
        return job

    def paused(self, queue_id: str) -> list[Job]:
        return [j for j in self._order if j.queue_id == queue_id and j.state == "Pause"]

    def get(self, bucket: str, job_id: str) -> Job | None:
        job = self._jobs.get(job_id)
        return job if job is not None and job.bucket == bucket else None

    def __len__(self) -> int:
        return len(self._jobs)

    def list(self, bucket: str, q: ListQuery) -> tuple[list[Job], str]:
        # seq n sits at index n-1, so a token lets the scan start right where the last page ended.
        seq_iter: Iterable[Job]
        if q.descending:
            top = len(self._order) if q.after_seq is None else max(0, q.after_seq - 1)
            seq_iter = (self._order[i] for i in range(min(top, len(self._order)) - 1, -1, -1))
        else:
            start = 0 if q.after_seq is None else max(0, q.after_seq)
            seq_iter = (self._order[i] for i in range(start, len(self._order)))
        page: list[Job] = []
        more = False
        for job in seq_iter:
            if job.bucket != bucket or (q.queue_id and job.queue_id != q.queue_id):
                continue
            if q.states is not None and job.state not in q.states:
                continue
            created = int(job.created)  # the service compares at the printed 1 s resolution
            if (q.start is not None and created < q.start) or (
                q.end is not None and created > q.end
            ):
                continue
            if len(page) == q.size:
                more = True
                break
            page.append(job)
        token = f"{page[-1].seq:016x}" if more else ""
        return page, token


def now() -> float:
    return time.time()
