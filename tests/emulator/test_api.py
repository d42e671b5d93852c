"""asr_jobs create/get and COS objects through the official SDK, plus signature failures."""

from __future__ import annotations

import re
import time
from unittest import mock

import pytest
import requests
from qcloud_cos import CosS3Client
from qcloud_cos.cos_auth import CosS3Auth
from qcloud_cos.cos_exception import CosServiceError

from .conftest import Emulator
from .helpers import (
    BUCKET,
    REGION,
    TOKEN,
    TOKEN_ID,
    TOKEN_KEY,
    create_job_raw,
    error_fields,
    unique,
    wait_state,
)

TIME_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+0800$")
SR = {"EngineModelType": "16k_zh", "ChannelNum": "1"}


def put(client: CosS3Client, key: str, data: bytes = b"fake audio") -> None:
    client.put_object(Bucket=BUCKET, Body=data, Key=key)


def create(client: CosS3Client, key: str, **kwargs: object) -> dict[str, object]:
    args: dict[str, object] = {
        "Bucket": BUCKET,
        "OutputBucket": BUCKET,
        "OutputRegion": REGION,
        "OutputObject": key + ".txt",
        "InputObject": key,
        "SpeechRecognition": SR,
    }
    args.update(kwargs)
    return dict(client.ci_create_asr_job(**args)["JobsDetail"])


def test_create_answers_submitted_job_with_defaults_echoed(client: CosS3Client) -> None:
    key = f"in/{unique()}.mp3"
    put(client, key)
    d = create(client, key, QueueId="p" + "1" * 32, CallBack="no", CallBackFormat="JSON")
    assert re.fullmatch(r"s[0-9a-f]{32}", str(d["JobId"]))
    assert d["State"] == "Submitted" and d["Code"] == "Success" and d["Message"] is None
    assert d["StartTime"] == "-" and d["EndTime"] == "-"
    assert TIME_RE.match(str(d["CreationTime"]))
    assert d["QueueId"] == "p" + "1" * 32
    assert d["Tag"] == "SpeechRecognition"
    assert d["Input"] == {"BucketId": BUCKET, "Object": key, "Region": REGION}
    op = d["Operation"]
    assert isinstance(op, dict)
    assert op["Output"] == {"Bucket": BUCKET, "Object": key + ".txt", "Region": REGION}
    assert op["JobLevel"] == "0"
    assert op["SpeechRecognition"] == {
        "ChannelNum": "1",
        "ConvertNumMode": "0",
        "EngineModelType": "16k_zh",
        "FilterDirty": "0",
        "FilterModal": "0",
        "FilterPunc": "0",
        "OutputFileType": "txt",
        "ResTextFormat": "0",
        "SpeakerDiarization": "0",
        "SpeakerNumber": "0",
    }
    assert "SpeechRecognitionResult" not in op


def test_lifecycle_result_object_and_default_queue(client: CosS3Client) -> None:
    key = f"in/{unique()}.wav"
    put(client, key)
    d = create(client, key)
    assert re.fullmatch(r"p[0-9a-f]{32}", str(d["QueueId"]))
    job_id = str(d["JobId"])
    done = wait_state(client, job_id)
    assert done["State"] == "Success"
    assert TIME_RE.match(done["StartTime"]) and TIME_RE.match(done["EndTime"])
    res = done["Operation"]["SpeechRecognitionResult"]
    stem = key.rsplit("/", 1)[1].rsplit(".", 1)[0].replace("-", " ")
    assert res["Result"].split("\n")[0].endswith(f"] This is the recording {stem}.")
    assert res["ResultDetail"] is None  # ResTextFormat 0: <ResultDetail/>
    assert res["ObjectName"] == key + ".txt"
    body = client.get_object(Bucket=BUCKET, Key=key + ".txt")["Body"].get_raw_stream().read()
    assert body.decode() == res["Result"]


def test_url_input_template_and_srt(client: CosS3Client) -> None:
    tpl = client.ci_create_asr_template(
        Bucket=BUCKET,
        Name=unique("tpl"),
        EngineModelType="16k_en",
        ChannelNum=1,
        ResTextFormat=1,
        OutputFileType="srt",
    )["Template"]
    assert re.fullmatch(r"t1[0-9a-f]{32}", tpl["TemplateId"])
    out = f"out/{unique()}.srt"
    d = client.ci_create_asr_job(
        Bucket=BUCKET,
        OutputBucket=BUCKET,
        OutputRegion=REGION,
        OutputObject=out,
        Url="https://example.com/media/hello-world.mp3",
        TemplateId=tpl["TemplateId"],
        SpeechRecognition={"EngineModelType": "16k_zh"},  # ignored: the template wins
    )["JobsDetail"]
    assert d["Input"]["Url"] == "https://example.com/media/hello-world.mp3"
    assert d["Operation"]["TemplateId"] == tpl["TemplateId"]
    assert d["Operation"]["TemplateName"] == tpl["Name"]
    assert d["Operation"]["SpeechRecognition"]["EngineModelType"] == "16k_en"
    done = wait_state(client, d["JobId"])
    assert done["State"] == "Success"
    res = done["Operation"]["SpeechRecognitionResult"]
    # ResTextFormat 1: word details without punctuation
    assert res["ResultDetail"][0]["FinalSentence"] == "This is the recording hello world"
    srt = client.get_object(Bucket=BUCKET, Key=out)["Body"].get_raw_stream().read().decode()
    assert srt.startswith("1\n00:00:00,160 --> 00:00:")


def test_missing_input_object_fails_the_job(client: CosS3Client) -> None:
    d = create(client, f"in/{unique()}-absent.mp3")
    done = wait_state(client, str(d["JobId"]))
    assert done["State"] == "Failed"
    assert done["Code"] == "InputFileNotExist" and done["Message"]
    assert "SpeechRecognitionResult" not in done["Operation"]


def test_user_data_and_job_level_round_trip(client: CosS3Client) -> None:
    key = f"in/{unique()}.mp3"
    put(client, key)
    created = create_job_raw(
        client,
        {
            "Tag": "SpeechRecognition",
            "Input": {"Object": key},
            "Operation": {
                "SpeechRecognition": SR,
                "Output": {"Region": REGION, "Bucket": BUCKET, "Object": key + ".txt"},
                "UserData": "user data 1",
                "JobLevel": "2",
            },
        },
    )["JobsDetail"]
    got = wait_state(client, created["JobId"])
    assert got["Operation"]["UserData"] == "user data 1"
    assert got["Operation"]["JobLevel"] == "2"


def test_get_several_ids_with_unknown_ones(client: CosS3Client) -> None:
    ids = []
    for _ in range(3):
        key = f"in/{unique()}.mp3"
        put(client, key)
        ids.append(str(create(client, key)["JobId"]))
    unknown = "s" + "0" * 32
    r = client.ci_get_asr_job(Bucket=BUCKET, JobID=",".join([*ids, unknown]))
    assert [d["JobId"] for d in r["JobsDetail"]] == ids
    assert r["NonExistJobIds"] == unknown
    r2 = client.ci_get_asr_job(Bucket=BUCKET, JobID=unknown + ",snope")
    assert "JobsDetail" not in r2
    assert r2["NonExistJobIds"] == [unknown, "snope"]


def test_objects_put_get_head_delete(client: CosS3Client) -> None:
    key = f"dir/{unique()} name.bin"
    data = bytes(range(256)) * 10
    put_resp = client.put_object(Bucket=BUCKET, Body=data, Key=key)
    head = client.head_object(Bucket=BUCKET, Key=key)
    assert head["ETag"] == put_resp["ETag"]
    assert int(head["Content-Length"]) == len(data)
    assert client.get_object(Bucket=BUCKET, Key=key)["Body"].get_raw_stream().read() == data
    client.delete_object(Bucket=BUCKET, Key=key)
    with pytest.raises(CosServiceError) as err:
        client.get_object(Bucket=BUCKET, Key=key)
    assert err.value.get_status_code() == 404
    assert err.value.get_error_code() == "NoSuchKey"
    with pytest.raises(CosServiceError) as err:
        client.head_object(Bucket=BUCKET, Key=key)
    assert err.value.get_status_code() == 404  # HEAD: status only, no error body


def test_objects_live_in_the_data_dir_and_traversal_is_refused(emulator: Emulator) -> None:
    client = emulator.client()
    client.put_object(Bucket=BUCKET, Body=b"x", Key="a/b.txt")
    assert (emulator.data_dir / BUCKET / "a" / "b.txt").read_bytes() == b"x"
    (emulator.data_dir / "secret.txt").write_bytes(b"outside the bucket")
    host = f"{BUCKET}.cos.{REGION}.myqcloud.com"
    for method, key in [
        ("GET", "a/../../secret.txt"),
        ("PUT", "../other-1250000000/x.txt"),
        ("GET", "a/./b.txt"),
        ("GET", "a//b.txt"),
    ]:
        # Dots percent-encoded so no client-side URL normalisation removes them.
        url = emulator.endpoint + "/" + key.replace(".", "%2E")
        prepared = requests.Request(method, url, data=b"y", headers={"Host": host}).prepare()
        CosS3Auth(client._conf, key)(prepared)
        with requests.Session() as s:
            r = s.send(prepared, timeout=5)
        assert r.status_code == 400, (method, key, r.status_code)
        assert error_fields(r)["Code"] == "InvalidArgument"
    assert not (emulator.data_dir / "other-1250000000").exists()


def test_signature_failures(emulator: Emulator) -> None:
    key = f"in/{unique()}.mp3"
    cases = [
        (emulator.client(secret_id="AKIDunknown"), 403, "InvalidAccessKeyId"),
        (emulator.client(secret_key="wrong"), 403, "SignatureDoesNotMatch"),
    ]
    for cli, status, code in cases:
        with pytest.raises(CosServiceError) as err:
            cli.put_object(Bucket=BUCKET, Body=b"x", Key=key)
        assert err.value.get_status_code() == status
        assert err.value.get_error_code() == code
        assert err.value.get_request_id()
        with pytest.raises(CosServiceError) as err:
            cli.ci_get_asr_job(Bucket=BUCKET, JobID="s" + "1" * 32)
        assert err.value.get_error_code() == code


def test_expired_signature(emulator: Emulator) -> None:
    # The SDK signs with key time [now - 60, now + 10000]; back-date its clock by more than that.
    client = emulator.client()
    clock = time.time() - 20000
    with (
        mock.patch("qcloud_cos.cos_auth.time.time", return_value=clock),
        pytest.raises(CosServiceError) as err,
    ):
        client.ci_get_asr_job(Bucket=BUCKET, JobID="s" + "1" * 32)
    assert err.value.get_status_code() == 403
    assert err.value.get_error_code() == "AccessDenied"
    assert err.value.get_error_msg() == "Request has expired"
    assert err.value.get_request_id()
    # Signed for the future is refused the same way.
    clock = time.time() + 3600
    with (
        mock.patch("qcloud_cos.cos_auth.time.time", return_value=clock),
        pytest.raises(CosServiceError) as err,
    ):
        client.ci_get_asr_job(Bucket=BUCKET, JobID="s" + "1" * 32)
    assert err.value.get_error_code() == "AccessDenied"


def test_temporary_credentials(emulator: Emulator) -> None:
    ok = emulator.client(secret_id=TOKEN_ID, secret_key=TOKEN_KEY, token=TOKEN)
    key = f"in/{unique()}.mp3"
    ok.put_object(Bucket=BUCKET, Body=b"x", Key=key)
    assert ok.ci_get_asr_job(Bucket=BUCKET, JobID="s" + "2" * 32)["NonExistJobIds"]
    bad = emulator.client(secret_id=TOKEN_ID, secret_key=TOKEN_KEY, token="stolen")
    with pytest.raises(CosServiceError) as err:
        bad.ci_get_asr_job(Bucket=BUCKET, JobID="s" + "2" * 32)
    assert err.value.get_status_code() == 403
    missing = emulator.client(secret_id=TOKEN_ID, secret_key=TOKEN_KEY)
    with pytest.raises(CosServiceError):
        missing.get_object(Bucket=BUCKET, Key=key)
