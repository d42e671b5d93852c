"""Build and send the create-job request: every job asks CI to notify a TDMQ-CMQ queue or topic
(``[ci.callback] type = "tdmq"``, the default) or to POST to a URL (``type = "url"``)."""

from __future__ import annotations

from typing import Any

from .ci import CiClient, JobsDetail
from .config import CiSettings

_MAX_USER_DATA = 1024


def build_request(
    settings: CiSettings,
    input_object: str | None = None,
    input_url: str | None = None,
    output_object: str | None = None,
    user_data: str | None = None,
    job_level: int | None = None,
) -> dict[str, Any]:
    """The ``<Request>`` body as a dict, in the element order the SDK itself uses."""
    if bool(input_object) == bool(input_url):
        raise ValueError("give exactly one of an input object or an input URL")
    if user_data is not None and (
        len(user_data) > _MAX_USER_DATA or not all(32 <= ord(c) < 127 for c in user_data)
    ):
        raise ValueError(
            f"user data must be printable ASCII of at most {_MAX_USER_DATA} characters"
        )
    if job_level is not None and job_level not in (0, 1, 2):
        raise ValueError("job level must be 0, 1 or 2")
    rec = settings.recognition
    if output_object is None:
        name = input_object or (input_url or "").rstrip("/").rsplit("/", 1)[-1] or "input"
        output_object = f"{settings.output_prefix}{name}.{rec.output_file_type}"
    operation: dict[str, Any] = {
        "Output": {"Bucket": settings.bucket, "Region": settings.region, "Object": output_object}
    }
    if settings.template_id:
        operation["TemplateId"] = settings.template_id
    else:
        operation["SpeechRecognition"] = {
            "EngineModelType": rec.engine_model_type,
            "ChannelNum": str(rec.channel_num),
            "ResTextFormat": str(rec.res_text_format),
            "SpeakerDiarization": str(rec.speaker_diarization),
            "FilterDirty": str(rec.filter_dirty),
            "FilterModal": str(rec.filter_modal),
            "ConvertNumMode": str(rec.convert_num_mode),
            "OutputFileType": rec.output_file_type,
        }
    if user_data:
        operation["UserData"] = user_data
    if job_level is not None:
        operation["JobLevel"] = str(job_level)
    cb = settings.callback
    request: dict[str, Any] = {
        "Input": {"Object": input_object} if input_object else {"Url": input_url},
        "Tag": "SpeechRecognition",
        "Operation": operation,
    }
    if settings.queue_id:
        request["QueueId"] = settings.queue_id
    if cb.type == "url":
        request.update({"CallBack": cb.url, "CallBackFormat": cb.format, "CallBackType": "Url"})
        return request
    request["CallBackFormat"] = cb.format
    request["CallBackType"] = "TDMQ"
    request["CallBackMqConfig"] = {
        "MqRegion": cb.mq_region,
        "MqMode": cb.mq_mode,
        "MqName": cb.mq_name,
    }
    return request


def submit(client: CiClient, settings: CiSettings, **kwargs: Any) -> JobsDetail:
    """Create one job; returns CI's ``JobsDetail`` (with ``JobId``)."""
    return client.create_job(build_request(settings, **kwargs))
