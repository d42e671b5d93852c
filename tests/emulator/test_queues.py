"""Model queues (GET /asrqueue, PUT /asrqueue/<id> NotifyConfig) and HTTP (Url) callbacks."""

from __future__ import annotations

import json
import queue
import threading
import uuid
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import xmltodict
from qcloud_cos import CosS3Client
from qcloud_cos.cos_exception import CosServiceError

from .conftest import Emulator
from .helpers import BUCKET, REGION, cmq_name, unique, wait_state


class Receiver:
    """A local webhook endpoint collecting (content type, body) of every POST."""

    def __init__(self) -> None:
        self.got: queue.Queue[tuple[str, bytes]] = queue.Queue()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.got.put((self.headers["Content-Type"], body))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/cb"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def create(client: CosS3Client, key: str, **kwargs: Any) -> str:
    client.put_object(Bucket=BUCKET, Body=b"a", Key=key)
    return str(
        client.ci_create_asr_job(
            Bucket=BUCKET,
            OutputBucket=BUCKET,
            OutputRegion=REGION,
            OutputObject=key + ".txt",
            InputObject=key,
            SpeechRecognition={"EngineModelType": "16k_en", "ChannelNum": "1"},
            **kwargs,
        )["JobsDetail"]["JobId"]
    )


def set_notify(client: CosS3Client, queue_id: str, **notify: str) -> dict[str, Any]:
    r = client.ci_update_asr_queue(
        Bucket=BUCKET,
        QueueId=queue_id,
        Request={
            "Name": "q-" + queue_id[1:7],
            "QueueID": queue_id,
            "State": "Active",
            "NotifyConfig": notify,
        },
    )
    return dict(r["Queue"][0])  # the SDK normalises Queue to a list


def test_default_queue_is_listed(emulator: Emulator) -> None:
    client = emulator.client()
    bucket = "freshbucket-1250000000"
    r = client.ci_get_asr_queue(Bucket=bucket)
    assert r["TotalCount"] == "1"
    (q,) = r["QueueList"]
    assert q["BucketId"] == bucket and q["State"] == "Active"
    assert q["NotifyConfig"]["State"] == "Off"
    job = client.ci_create_asr_job(
        Bucket=bucket,
        OutputBucket=bucket,
        OutputRegion=REGION,
        OutputObject="o.txt",
        InputObject="i.mp3",
        SpeechRecognition={"EngineModelType": "16k_zh", "ChannelNum": 1},
    )["JobsDetail"]
    assert job["QueueId"] == q["QueueId"]  # QueueId absent on create → the default queue
    only = client.ci_get_asr_queue(Bucket=bucket, QueueIds=q["QueueId"] + ",pnothere")
    assert only["NonExistPIDs"] == "pnothere"


def test_queue_notify_tdmq_applies_to_jobs_without_callback_type(
    make_emulator: Callable[..., Emulator],
) -> None:
    name = cmq_name()
    emulator = make_emulator("--cmq-default-region", "sh", "--cmq-queue", f"sh:{name}")
    client = emulator.client()
    qid = "p" + uuid.uuid4().hex
    q = set_notify(
        client,
        qid,
        State="On",
        Event="TaskFinish",
        ResultFormat="JSON",
        Type="TDMQ",
        MqMode="Queue",
        MqRegion="sh",
        MqName=name,
    )
    assert q["NotifyConfig"]["Type"] == "TDMQ" and q["NotifyConfig"]["MqName"] == name
    listed = client.ci_get_asr_queue(Bucket=BUCKET, QueueIds=qid)["QueueList"][0]
    assert listed["NotifyConfig"]["State"] == "On"
    json_job = create(client, f"in/{unique()}.mp3", QueueId=qid)
    xml_job = create(client, f"in/{unique()}.mp3", QueueId=qid, CallBackFormat="XML")
    cmq_queue = emulator.cmq().get_queue(name)
    bodies = [m.msgBody for m in cmq_queue.batch_receive_message(2, 15)]
    if len(bodies) < 2:
        bodies += [cmq_queue.receive_message(15).msgBody]
    by_format = {b[0]: b for b in bodies}
    assert json.loads(by_format["{"])["JobsDetail"]["JobId"] == json_job
    assert xmltodict.parse(by_format["<"])["Response"]["JobsDetail"]["JobId"] == xml_job


def test_url_callback_xml_and_json(emulator: Emulator, receiver: Receiver) -> None:
    client = emulator.client()
    xml_job = create(client, f"in/{unique()}.mp3", CallBack=receiver.url)
    ctype, body = receiver.got.get(timeout=30)
    assert ctype == "application/xml"
    doc = xmltodict.parse(body)["Response"]
    assert doc["EventName"] == "TaskFinish"
    assert doc["JobsDetail"]["JobId"] == xml_job
    assert doc["JobsDetail"]["State"] == "Success"
    json_job = create(client, f"in/{unique()}.mp3", CallBack=receiver.url, CallBackFormat="JSON")
    ctype, body = receiver.got.get(timeout=30)
    assert ctype == "application/json"
    assert json.loads(body)["JobsDetail"]["JobId"] == json_job


def test_queue_url_notify_and_callback_no(emulator: Emulator, receiver: Receiver) -> None:
    client = emulator.client()
    qid = "p" + uuid.uuid4().hex
    set_notify(
        client,
        qid,
        State="On",
        Event="TaskFinish",
        ResultFormat="XML",
        Type="Url",
        Url=receiver.url,
    )
    silent = create(client, f"in/{unique()}.mp3", QueueId=qid, CallBack="no")
    loud = create(client, f"in/{unique()}.mp3", QueueId=qid)
    assert wait_state(client, silent)["State"] == "Success"
    _, body = receiver.got.get(timeout=30)
    assert xmltodict.parse(body)["Response"]["JobsDetail"]["JobId"] == loud
    assert wait_state(client, loud)["State"] == "Success"
    with pytest.raises(queue.Empty):
        receiver.got.get(timeout=0.8)


@pytest.mark.parametrize(
    "notify",
    [
        {"State": "Maybe"},
        {"State": "On", "Type": "Carrier-pigeon"},
        {"State": "On", "Type": "TDMQ", "MqMode": "Queue", "MqRegion": "gz"},  # no MqName
        {"State": "On", "Type": "Url"},  # no Url
        {"State": "On", "Type": "Url", "Url": "http://x", "ResultFormat": "CSV"},
    ],
)
def test_bad_notify_config(emulator: Emulator, notify: dict[str, str]) -> None:
    with pytest.raises(CosServiceError) as err:
        set_notify(emulator.client(), "p" + uuid.uuid4().hex, **notify)
    assert err.value.get_status_code() == 400
    assert err.value.get_error_code() == "InvalidArgument"


def test_paused_queue_holds_jobs_until_active(emulator: Emulator) -> None:
    client = emulator.client()
    qid = "p" + uuid.uuid4().hex
    client.ci_update_asr_queue(
        Bucket=BUCKET, QueueId=qid, Request={"Name": "paused", "QueueID": qid, "State": "Paused"}
    )
    job_id = create(client, f"in/{unique()}.mp3", QueueId=qid)
    assert wait_state(client, job_id, states=("Success",), timeout=0.8)["State"] == "Pause"
    assert client.ci_list_asr_jobs(Bucket=BUCKET, QueueId=qid, States="Pause")["JobsDetail"]
    client.ci_update_asr_queue(
        Bucket=BUCKET, QueueId=qid, Request={"Name": "paused", "QueueID": qid, "State": "Active"}
    )
    assert wait_state(client, job_id)["State"] == "Success"
