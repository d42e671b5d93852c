"""Every malformed create gets the service's 4xx error document, never a 500."""

from __future__ import annotations

from typing import Any

import pytest
from qcloud_cos.cos_exception import CosServiceError

from .conftest import Emulator
from .helpers import BUCKET, REGION, create_job_raw, error_fields, signed_request

SR = {"EngineModelType": "16k_zh", "ChannelNum": "1"}


def sdk_args(**override: Any) -> dict[str, Any]:
    args: dict[str, Any] = {
        "Bucket": BUCKET,
        "OutputBucket": BUCKET,
        "OutputRegion": REGION,
        "OutputObject": "out/x.txt",
        "InputObject": "in/x.mp3",
        "SpeechRecognition": SR,
    }
    args.update(override)
    return {k: v for k, v in args.items() if v is not None}


@pytest.mark.parametrize(
    "override",
    [
        {"InputObject": None},  # no Input.Object nor Input.Url: <Input></Input>
        {"TemplateId": "t1" + "0" * 32},  # template not known
        {"SpeechRecognition": None},  # neither TemplateId nor SpeechRecognition
        {"SpeechRecognition": {"EngineModelType": "48k_klingon", "ChannelNum": "1"}},
        {"SpeechRecognition": {"ChannelNum": "1"}},  # EngineModelType missing
        {"SpeechRecognition": {"EngineModelType": "16k_zh", "ChannelNum": "2"}},
        {"SpeechRecognition": {**SR, "ResTextFormat": "9"}},
        {"SpeechRecognition": {**SR, "OutputFileType": "doc"}},
        {"SpeechRecognition": {**SR, "FlashAsr": True}},  # flash needs Format
        {"SpeechRecognition": {**SR, "SentenceMaxLength": "3"}},
        {"OutputObject": ""},
        {"OutputBucket": "Not_A_Bucket"},
        {"CallBackFormat": "YAML"},
    ],
)
def test_sdk_create_validation(emulator: Emulator, override: dict[str, Any]) -> None:
    with pytest.raises(CosServiceError) as err:
        emulator.client().ci_create_asr_job(**sdk_args(**override))
    assert err.value.get_status_code() == 400
    assert err.value.get_error_code() == "InvalidArgument"
    assert err.value.get_error_msg()
    assert err.value.get_request_id()
    assert err.value.get_resource_location().endswith("/asr_jobs")


def raw(**override: Any) -> dict[str, Any]:
    req: dict[str, Any] = {
        "Tag": "SpeechRecognition",
        "Input": {"Object": "in/x.mp3"},
        "Operation": {
            "SpeechRecognition": SR,
            "Output": {"Region": REGION, "Bucket": BUCKET, "Object": "out/x.txt"},
        },
    }
    for k, v in override.items():
        if k.startswith("Operation."):
            req["Operation"][k.split(".", 1)[1]] = v
        elif v is None:
            req.pop(k, None)
        else:
            req[k] = v
    return req


MQ = {"MqRegion": "gz", "MqMode": "Queue", "MqName": "x"}


@pytest.mark.parametrize(
    "override",
    [
        {"CallBackType": "TDMQ"},  # without CallBackMqConfig
        {"CallBackType": "Kafka", "CallBackMqConfig": MQ},
        {"CallBackType": "TDMQ", "CallBackMqConfig": {**MQ, "MqRegion": "mars"}},
        {"CallBackType": "TDMQ", "CallBackMqConfig": {**MQ, "MqMode": "Pipe"}},
        {"CallBackType": "TDMQ", "CallBackMqConfig": {"MqRegion": "gz", "MqMode": "Queue"}},
        {"Tag": "Transcode"},
        {"Tag": None},
        {"Operation": None},
        {"Operation.UserData": "x" * 1025},
        {"Operation.UserData": "tab\there"},
        {"Operation.JobLevel": "7"},
    ],
)
def test_raw_create_validation(emulator: Emulator, override: dict[str, Any]) -> None:
    with pytest.raises(CosServiceError) as err:
        create_job_raw(emulator.client(), raw(**override))
    assert err.value.get_status_code() == 400
    assert err.value.get_error_code() == "InvalidArgument"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"<Request><Tag>SpeechRecognition</Tag>",
        b"not xml at all",
        b'<?xml version="1.0"?><!DOCTYPE r [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;">]>'
        b"<Request><Tag>&b;</Tag></Request>",
        b'<!DOCTYPE r [<!ENTITY x SYSTEM "file:///etc/passwd">]><Request>&x;</Request>',
    ],
)
def test_malformed_xml(emulator: Emulator, body: bytes) -> None:
    r = signed_request(emulator.client(), emulator.endpoint, "POST", "/asr_jobs", body)
    assert r.status_code == 400
    assert error_fields(r)["Code"] == "MalformedXML"


def test_wrong_root_and_wrong_method(emulator: Emulator) -> None:
    client = emulator.client()
    r = signed_request(client, emulator.endpoint, "POST", "/asr_jobs", b"<Job><Tag>x</Tag></Job>")
    assert r.status_code == 400 and error_fields(r)["Code"] == "InvalidArgument"
    r = signed_request(client, emulator.endpoint, "DELETE", "/asr_jobs")
    assert r.status_code == 405 and error_fields(r)["Code"] == "MethodNotAllowed"
    r = signed_request(client, emulator.endpoint, "POST", "/asr_jobs/s123")
    assert r.status_code == 405


def test_unsigned_and_garbled_authorization(emulator: Emulator) -> None:
    import requests

    host = {"Host": f"{BUCKET}.cos.{REGION}.myqcloud.com"}
    r = requests.get(f"{emulator.endpoint}/asr_jobs/s1", headers=host, timeout=5)
    assert r.status_code == 403 and error_fields(r)["Code"] == "AccessDenied"
    r = requests.get(
        f"{emulator.endpoint}/asr_jobs/s1", headers={**host, "Authorization": "garbage"}, timeout=5
    )
    assert r.status_code == 403 and error_fields(r)["Code"] == "AccessDenied"


def test_ci_route_without_bucket_in_host(emulator: Emulator) -> None:
    client = emulator.client()
    # Domain-style access (Host 127.0.0.1:port) does not name a bucket.
    from qcloud_cos import CosConfig, CosS3Client

    conf = CosConfig(
        Region=REGION,
        SecretId=client._conf._secret_id,
        SecretKey=client._conf._secret_key,
        Domain=f"127.0.0.1:{emulator.port}",
        Scheme="http",
    )
    with pytest.raises(CosServiceError) as err:
        CosS3Client(conf, retry=0).ci_get_asr_job(Bucket=BUCKET, JobID="s1")
    assert err.value.get_status_code() == 404
    assert err.value.get_error_code() == "NoSuchBucket"
