"""Request validation: create-job and template bodies, queue updates, list query parameters.

Every problem raises ``ApiError`` 400 InvalidArgument, as the service answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from asrd.emulator.errors import invalid
from asrd.emulator.model import STATES, MqConfig, NotifyConfig, Queue, Template, parse_time

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

# Defaults the service fills in and echoes (docs/tencent-cloud.md §1.1, a real example).
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


def parse_mq_config(node: dict[str, Any]) -> MqConfig:
    region, mode, name = _text(node, "MqRegion"), _text(node, "MqMode"), _text(node, "MqName")
    if region not in MQ_REGIONS:
        raise invalid(f"CallBackMqConfig.MqRegion must be one of {sorted(MQ_REGIONS)}")
    if mode not in MQ_MODES:
        raise invalid("CallBackMqConfig.MqMode must be Queue or Topic")
    if not name:
        raise invalid("CallBackMqConfig.MqName is required")
    return MqConfig(region, mode, name)


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
