"""TaskFinish notifications received from the real broker, in both formats, field by field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pulsar
import pytest
import xmltodict
from qcloud_cos import CosS3Client

from .conftest import Emulator
from .helpers import BUCKET, REGION, create_job_raw, unique, wait_state

SENTENCES = ["今天天气很好。", "We walk in the park."]


@pytest.fixture(scope="module")
def pulsar_client(broker: Any) -> Iterator[pulsar.Client]:
    client = pulsar.Client(broker.service_url, operation_timeout_seconds=10)
    yield client
    client.close()


def subscribe(pulsar_client: pulsar.Client, topic: str) -> pulsar.Consumer:
    return pulsar_client.subscribe(
        topic,
        "test",
        consumer_type=pulsar.ConsumerType.Shared,
        initial_position=pulsar.InitialPosition.Earliest,
    )


def put_audio(client: CosS3Client, sentences: list[str] | None = None) -> str:
    key = f"in/{unique('audio')}.mp3"
    client.put_object(Bucket=BUCKET, Body=b"ID3 fake audio", Key=key)
    if sentences is not None:
        client.put_object(
            Bucket=BUCKET, Body="\n".join(sentences).encode(), Key=key + ".transcript.txt"
        )
    return key


def tdmq_request(key: str, mq_name: str, fmt: str | None) -> dict[str, Any]:
    req: dict[str, Any] = {
        "Tag": "SpeechRecognition",
        "Input": {"Object": key},
        "Operation": {
            "SpeechRecognition": {"EngineModelType": "16k_zh", "ResTextFormat": "2"},
            "Output": {"Region": REGION, "Bucket": BUCKET, "Object": key + ".result.txt"},
            "UserData": "order=42",
            "JobLevel": "1",
        },
        "CallBackType": "TDMQ",
        "CallBackMqConfig": {"MqRegion": "gz", "MqMode": "Queue", "MqName": mq_name},
    }
    if fmt is not None:
        req["CallBackFormat"] = fmt
    return req


def mq_name(topic: str) -> str:
    return topic.rsplit("/", 1)[1]


def check_common(detail: dict[str, Any], got: dict[str, Any], key: str) -> None:
    """The message's JobsDetail says what get says once the job is finished."""
    assert detail["JobId"] == got["JobId"]
    for name in ("State", "Code", "Tag", "QueueId", "CreationTime", "StartTime", "EndTime"):
        assert detail[name] == got[name], name
    assert detail["State"] == "Success" and detail["Code"] == "Success"
    assert detail["Input"] == {"BucketId": BUCKET, "Object": key, "Region": REGION}
    op = detail["Operation"]
    assert op["UserData"] == "order=42"
    assert op["JobLevel"] == "1"
    assert op["Output"] == {"Bucket": BUCKET, "Object": key + ".result.txt", "Region": REGION}
    assert op["SpeechRecognition"]["EngineModelType"] == "16k_zh"
    assert op["SpeechRecognition"]["ResTextFormat"] == "2"
    res = op["SpeechRecognitionResult"]
    lines = res["Result"].split("\n")
    assert [line.split("] ", 1)[1] for line in lines] == SENTENCES
    assert lines[0].startswith("[0:0.160,")
    assert res["ObjectName"] == key + ".result.txt"
    assert res["DetailObjectName"] == key + ".result.txt.detail"
    details = res["ResultDetail"]
    assert [d["FinalSentence"] for d in details] == SENTENCES
    assert float(res["AudioTime"]) * 1000 >= int(details[-1]["EndMs"])
    assert res == got["Operation"]["SpeechRecognitionResult"]


def test_tdmq_callback_xml(
    emulator: Emulator, client: CosS3Client, pulsar_client: pulsar.Client, topic: str
) -> None:
    consumer = subscribe(pulsar_client, topic)
    key = put_audio(client, SENTENCES)
    created = create_job_raw(client, tdmq_request(key, mq_name(topic), None))
    job_id = created["JobsDetail"]["JobId"]
    msg = consumer.receive(timeout_millis=30000)
    consumer.acknowledge(msg)
    props = msg.properties()
    assert props["MqRegion"] == "gz" and props["MqMode"] == "Queue"
    assert props["JobId"] == job_id
    body = msg.data().decode()
    assert body.startswith("<?xml")
    doc = xmltodict.parse(body)["Response"]
    assert doc["EventName"] == "TaskFinish"
    detail = doc["JobsDetail"]
    assert detail["Message"] is None  # <Message/> on success
    got = wait_state(client, job_id)
    check_common(detail, got, key)
    words = detail["Operation"]["SpeechRecognitionResult"]["ResultDetail"][0]["Words"]
    assert [w["Word"] for w in words] == ["今", "天", "天", "气", "很", "好。"]
    assert words[1]["OffsetStartMs"] == "320"
    consumer.close()


def test_tdmq_callback_json(
    emulator: Emulator, client: CosS3Client, pulsar_client: pulsar.Client, topic: str
) -> None:
    consumer = subscribe(pulsar_client, topic)
    key = put_audio(client, SENTENCES)
    created = create_job_raw(client, tdmq_request(key, mq_name(topic), "JSON"))
    job_id = created["JobsDetail"]["JobId"]
    msg = consumer.receive(timeout_millis=30000)
    consumer.acknowledge(msg)
    assert msg.properties()["JobId"] == job_id
    doc = json.loads(msg.data())
    assert doc["EventName"] == "TaskFinish"
    detail = doc["JobsDetail"]
    assert isinstance(detail, dict)
    assert "Message" not in detail  # empty elements are omitted in the JSON form
    got = wait_state(client, job_id)
    check_common(detail, got, key)

    def leaves(node: Any) -> Iterator[Any]:
        if isinstance(node, dict):
            for v in node.values():
                yield from leaves(v)
        elif isinstance(node, list):
            for v in node:
                yield from leaves(v)
        else:
            yield node

    assert all(isinstance(v, str) for v in leaves(doc))
    consumer.close()


def test_without_callbacktype_tdmq_nothing_is_published(
    emulator: Emulator, client: CosS3Client, pulsar_client: pulsar.Client, topic: str
) -> None:
    consumer = subscribe(pulsar_client, topic)
    key = put_audio(client)
    # The SDK accepts CallBackType but never sends it: the job gets the default (Url).
    created = client.ci_create_asr_job(
        Bucket=BUCKET,
        OutputBucket=BUCKET,
        OutputRegion=REGION,
        OutputObject=key + ".txt",
        InputObject=key,
        SpeechRecognition={"EngineModelType": "16k_en", "ChannelNum": "1"},
        CallBackFormat="JSON",
        CallBackType="TDMQ",
        CallBackMqConfig={"MqRegion": "gz", "MqMode": "Queue", "MqName": mq_name(topic)},
    )
    job_id = created["JobsDetail"]["JobId"]
    assert wait_state(client, job_id)["State"] == "Success"
    # A raw create with the same settings minus CallBackType publishes nothing either.
    req = tdmq_request(key, mq_name(topic), "XML")
    del req["CallBackType"]
    raw_id = create_job_raw(client, req)["JobsDetail"]["JobId"]
    assert wait_state(client, raw_id)["State"] == "Success"
    with pytest.raises(pulsar.Timeout):
        consumer.receive(timeout_millis=1500)
    consumer.close()
