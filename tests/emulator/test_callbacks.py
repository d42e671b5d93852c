"""TaskFinish notifications of ``CallBackType=TDMQ`` jobs, read from the emulator's TDMQ-CMQ
queues with the official CMQ SDK, in both formats and both MqModes, field by field; callbacks
CMQ refuses (too big, no such queue) are lost and counted; the legacy Pulsar path."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import pulsar
import pytest
import xmltodict
from cmq.cmq_exception import CMQServerException
from qcloud_cos import CosS3Client

from .conftest import Emulator
from .helpers import BUCKET, REGION, cmq_name, create_job_raw, unique, wait_state

MakeEmulator = Callable[..., Emulator]
SENTENCES = ["今天天气很好。", "We walk in the park."]


def put_audio(client: CosS3Client, sentences: list[str] | None = None) -> str:
    key = f"in/{unique('audio')}.mp3"
    client.put_object(Bucket=BUCKET, Body=b"ID3 fake audio", Key=key)
    if sentences is not None:
        client.put_object(
            Bucket=BUCKET, Body="\n".join(sentences).encode(), Key=key + ".transcript.txt"
        )
    return key


def tdmq_request(
    key: str, mq_name: str, fmt: str | None, region: str = "gz", mode: str = "Queue"
) -> dict[str, Any]:
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
        "CallBackMqConfig": {"MqRegion": region, "MqMode": mode, "MqName": mq_name},
    }
    if fmt is not None:
        req["CallBackFormat"] = fmt
    return req


def receive(emu: Emulator, queue: str, wait: int = 15) -> str:
    """One message body from a CMQ queue (long poll), deleted once read."""
    q = emu.cmq().get_queue(queue)
    msg = q.receive_message(wait)
    q.delete_message(msg.receiptHandle)
    return str(msg.msgBody)


def assert_empty(emu: Emulator, queue: str, wait: int = 0) -> None:
    with pytest.raises(CMQServerException) as err:
        emu.cmq().get_queue(queue).receive_message(wait)
    assert err.value.code == 7000


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


def check_xml(body: str, job_id: str, client: CosS3Client, key: str) -> None:
    assert body.startswith("<?xml")
    doc = xmltodict.parse(body)["Response"]
    assert doc["EventName"] == "TaskFinish"
    detail = doc["JobsDetail"]
    assert detail["JobId"] == job_id
    assert detail["Message"] is None  # <Message/> on success
    check_common(detail, wait_state(client, job_id), key)
    words = detail["Operation"]["SpeechRecognitionResult"]["ResultDetail"][0]["Words"]
    assert [w["Word"] for w in words] == ["今", "天", "天", "气", "很", "好。"]
    assert words[1]["OffsetStartMs"] == "320"


def check_json(body: str, job_id: str, client: CosS3Client, key: str) -> None:
    doc = json.loads(body)
    assert doc["EventName"] == "TaskFinish"
    detail = doc["JobsDetail"]
    assert isinstance(detail, dict)
    assert detail["JobId"] == job_id
    assert "Message" not in detail  # empty elements are omitted in the JSON form
    check_common(detail, wait_state(client, job_id), key)

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


def depth(emu: Emulator, region: str, queue: str) -> int:
    """Messages in a queue, whatever their state (the admin view, any region)."""
    for q in emu.cmq_state()["queues"]:
        if (q["region"], q["name"]) == (region, queue):
            return int(q["active"] + q["inactive"] + q["delayed"])
    raise AssertionError(f"no queue {region}:{queue}")


def job(client: CosS3Client, request: dict[str, Any]) -> str:
    return str(create_job_raw(client, request)["JobsDetail"]["JobId"])


@pytest.mark.parametrize("fmt", ["XML", "JSON"])
def test_tdmq_callback_into_a_queue(make_emulator: MakeEmulator, fmt: str) -> None:
    q = cmq_name()
    # The SDK's requests name no region (a bare IP), so they go to the default region: sh here.
    # A queue of the same name in gz shows that the job's MqRegion picks the queue.
    emu = make_emulator(
        *("--job-delay", "0.2", "--cmq-default-region", "sh"),
        *("--cmq-queue", f"sh:{q}", "--cmq-queue", f"gz:{q}"),
    )
    client = emu.client()
    key = put_audio(client, SENTENCES)
    job_id = job(client, tdmq_request(key, q, None if fmt == "XML" else fmt, region="sh"))
    body = receive(emu, q)
    (check_xml if fmt == "XML" else check_json)(body, job_id, client, key)
    assert depth(emu, "gz", q) == 0 and depth(emu, "sh", q) == 0
    stats = emu.counters()
    assert stats["cmq_callbacks_sent"] == 1 and stats["callback_sent_tdmq"] == 1


@pytest.mark.parametrize("fmt", ["XML", "JSON"])
def test_tdmq_callback_into_a_topic(make_emulator: MakeEmulator, fmt: str) -> None:
    a, b, topic = cmq_name(), cmq_name(), cmq_name("t")
    emu = make_emulator(
        "--job-delay",
        "0.2",
        *("--cmq-queue", f"gz:{a}", "--cmq-queue", f"gz:{b}", "--cmq-topic", f"gz:{topic}:{a},{b}"),
    )
    client = emu.client()
    key = put_audio(client, SENTENCES)
    job_id = job(client, tdmq_request(key, topic, fmt, mode="Topic"))
    first, second = receive(emu, a), receive(emu, b)
    assert first == second  # the raw body, fanned out unchanged (SIMPLIFIED)
    (check_xml if fmt == "XML" else check_json)(first, job_id, client, key)


def test_queue_and_topic_names_are_separate(make_emulator: MakeEmulator) -> None:
    """MqMode decides where MqName is looked up: a queue named like a topic is not the topic."""
    q, topic = cmq_name(), cmq_name("t")
    emu = make_emulator(
        *("--job-delay", "0", "--cmq-queue", f"gz:{q}", "--cmq-topic", f"gz:{topic}:{q}")
    )
    client = emu.client()
    key = put_audio(client)
    job(client, tdmq_request(key, q, None, mode="Topic"))  # no topic of that name
    job(client, tdmq_request(key, topic, None, mode="Queue"))  # no queue of that name
    job(client, tdmq_request(key, q, None, region="bj"))  # the queue lives in gz, not bj
    deadline = time.monotonic() + 10
    while emu.counters().get("cmq_callbacks_no_queue", 0) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    stats = emu.counters()
    assert stats["cmq_callbacks_no_queue"] == 3
    assert "cmq_callbacks_sent" not in stats and "callback_sent_tdmq" not in stats
    assert_empty(emu, q)


def test_too_big_callback_is_lost_and_counted(make_emulator: MakeEmulator) -> None:
    """CMQ's default 64 KiB limit: the notification of long word-level output never arrives."""
    q, small = cmq_name(), cmq_name()
    emu = make_emulator(
        *("--job-delay", "0", "--cmq-queue", f"gz:{q}", "--cmq-queue", f"gz:{small}:maxsize=1024")
    )
    client = emu.client()
    long_talk = [f"第{i}句话今天天气很好我们去公园散步。" for i in range(200)]
    big = put_audio(client, long_talk)
    big_id = job(client, tdmq_request(big, q, "JSON"))
    normal = put_audio(client, SENTENCES)
    small_id = job(client, tdmq_request(normal, small, None))  # a few KB over a 1 KiB queue
    fits_id = job(client, tdmq_request(normal, q, None))
    assert xmltodict.parse(receive(emu, q))["Response"]["JobsDetail"]["JobId"] == fits_id
    assert wait_state(client, big_id)["State"] == "Success"
    assert wait_state(client, small_id)["State"] == "Success"
    assert_empty(emu, q, 1)
    assert_empty(emu, small)
    stats = emu.counters()
    assert stats["cmq_callbacks_oversize"] == 2 and stats["cmq_callbacks_sent"] == 1
    # What was lost: the job's detail alone is over the limit.
    detail = client.ci_get_asr_job(Bucket=BUCKET, JobID=big_id)["JobsDetail"][0]
    assert len(json.dumps(detail, ensure_ascii=False).encode()) > 65536


def test_without_callbacktype_tdmq_nothing_is_delivered(make_emulator: MakeEmulator) -> None:
    q = cmq_name()
    emu = make_emulator("--job-delay", "0.1", "--cmq-queue", f"gz:{q}")
    client = emu.client()
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
        CallBackMqConfig={"MqRegion": "gz", "MqMode": "Queue", "MqName": q},
    )
    job_id = created["JobsDetail"]["JobId"]
    assert wait_state(client, job_id)["State"] == "Success"
    # A raw create with the same settings minus CallBackType delivers nothing either.
    req = tdmq_request(key, q, "XML")
    del req["CallBackType"]
    assert wait_state(client, job(client, req))["State"] == "Success"
    assert_empty(emu, q, 1)
    assert "cmq_callbacks_sent" not in emu.counters()


def test_legacy_tdmq_to_pulsar(make_emulator: MakeEmulator, broker: Any, topic: str) -> None:
    """--tdmq-to-pulsar: the old direct publish, for setups that forward CMQ to Pulsar."""
    emu = make_emulator(
        *("--job-delay", "0.1", "--tdmq-to-pulsar", "--pulsar-url", broker.service_url)
    )
    pc = pulsar.Client(broker.service_url, operation_timeout_seconds=10)
    try:
        consumer = pc.subscribe(topic, "t", initial_position=pulsar.InitialPosition.Earliest)
        client = emu.client()
        key = put_audio(client, SENTENCES)
        job_id = job(client, tdmq_request(key, topic.rsplit("/", 1)[1], "JSON", region="bj"))
        msg = consumer.receive(timeout_millis=30000)
        consumer.acknowledge(msg)
        props = msg.properties()
        assert (props["MqRegion"], props["MqMode"], props["JobId"]) == ("bj", "Queue", job_id)
        check_json(msg.data().decode(), job_id, client, key)
        assert emu.counters()["callback_sent_tdmq"] == 1
        assert "cmq_callbacks_no_queue" not in emu.counters()
        consumer.close()
    finally:
        pc.close()
