"""Fault injection (flags and the /-/faults admin API), counters, and clean shutdown."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable, Iterator
from typing import Any

import pulsar
import pytest
import requests
from qcloud_cos.cos_exception import CosServiceError

from .conftest import Emulator
from .helpers import BUCKET, REGION, create_job_raw, unique, wait_state

MakeEmulator = Callable[..., Emulator]


@pytest.fixture(scope="module")
def pulsar_client(broker: Any) -> Iterator[pulsar.Client]:
    client = pulsar.Client(broker.service_url, operation_timeout_seconds=10)
    yield client
    client.close()


def tdmq_job(emu: Emulator, topic: str) -> str:
    client = emu.client()
    key = f"in/{unique()}.mp3"
    client.put_object(Bucket=BUCKET, Body=b"a", Key=key)
    req = {
        "Tag": "SpeechRecognition",
        "Input": {"Object": key},
        "Operation": {
            "SpeechRecognition": {"EngineModelType": "16k_zh", "ChannelNum": "1"},
            "Output": {"Region": REGION, "Bucket": BUCKET, "Object": key + ".txt"},
        },
        "CallBackType": "TDMQ",
        "CallBackMqConfig": {"MqRegion": "bj", "MqMode": "Topic", "MqName": topic.split("/")[-1]},
    }
    return str(create_job_raw(client, req)["JobsDetail"]["JobId"])


def consumer_for(pulsar_client: pulsar.Client, topic: str) -> pulsar.Consumer:
    return pulsar_client.subscribe(topic, "t", initial_position=pulsar.InitialPosition.Earliest)


def test_flags_are_reported_and_latency_applies(make_emulator: MakeEmulator) -> None:
    emu = make_emulator("--fault-latency-ms", "150:200", "--fault-seed", "7", "--job-delay", "0")
    state = emu.state()
    assert state["faults"]["latency_ms"] == 150 and state["faults"]["latency_max_ms"] == 200
    client = emu.client()
    t0 = time.monotonic()
    client.ci_get_asr_job(Bucket=BUCKET, JobID="s" + "1" * 32)
    assert 0.15 <= time.monotonic() - t0 < 1.5
    assert emu.state()["counts"]["latency"] == 1
    emu.faults(latency_ms=0, latency_max_ms=0)
    t0 = time.monotonic()
    client.ci_get_asr_job(Bucket=BUCKET, JobID="s" + "1" * 32)
    assert time.monotonic() - t0 < 0.15
    assert emu.state()["counts"]["latency"] == 1
    health = requests.get(f"{emu.url}/-/healthz", timeout=5)
    assert health.status_code == 200 and health.json()["status"] == "ok"


def test_injected_5xx_and_sdk_retry(make_emulator: MakeEmulator) -> None:
    emu = make_emulator("--job-delay", "0")
    emu.faults(error_rate=1.0, error_code="InternalError")
    with pytest.raises(CosServiceError) as err:
        emu.client(retry=0).ci_get_asr_job(Bucket=BUCKET, JobID="s1")
    assert err.value.get_status_code() == 500
    assert err.value.get_error_code() == "InternalError"
    assert err.value.get_request_id()
    emu.faults(error_code="ServiceUnavailable")
    with pytest.raises(CosServiceError) as err:
        emu.client(retry=1).put_object(Bucket=BUCKET, Body=b"x", Key="k")
    assert err.value.get_status_code() == 503
    assert err.value.get_error_code() == "ServiceUnavailable"
    counts = emu.state()["counts"]
    assert counts["error"] == 3  # one plain call + one retried call (two attempts)
    assert counts["error_InternalError"] == 1 and counts["error_ServiceUnavailable"] == 2
    emu.faults(error_rate=0.0)
    emu.client().put_object(Bucket=BUCKET, Body=b"x", Key="k")
    reset = emu.faults(reset_counts=True)
    assert reset["counts"] == {}


def test_throttling_answers_slowdown(make_emulator: MakeEmulator) -> None:
    emu = make_emulator("--fault-throttle-rps", "5", "--job-delay", "0")
    client = emu.client(retry=0)
    statuses = []
    for _ in range(20):
        try:
            client.ci_get_asr_job(Bucket=BUCKET, JobID="s1")
            statuses.append("ok")
        except CosServiceError as exc:
            assert (exc.get_status_code(), exc.get_error_code()) == (503, "SlowDown")
            statuses.append("slow")
    assert statuses.count("slow") >= 5
    assert emu.state()["counts"]["throttled"] == statuses.count("slow")


def test_jobs_fail_with_given_code(
    make_emulator: MakeEmulator, pulsar_client: pulsar.Client, topic: str
) -> None:
    emu = make_emulator(
        "--job-delay", "0.1", "--fault-job-fail-rate", "1", "--fault-job-fail-code", "AudioBroken"
    )
    consumer = consumer_for(pulsar_client, topic)
    job_id = tdmq_job(emu, topic)
    done = wait_state(emu.client(), job_id)
    assert (done["State"], done["Code"], done["Message"]) == (
        "Failed",
        "AudioBroken",
        "injected failure",
    )
    msg = consumer.receive(timeout_millis=30000)
    import xmltodict

    detail = xmltodict.parse(msg.data())["Response"]["JobsDetail"]
    assert (detail["JobId"], detail["State"], detail["Code"]) == (job_id, "Failed", "AudioBroken")
    assert emu.state()["counts"]["job_failed"] == 1
    consumer.close()


def test_callback_dropped(
    make_emulator: MakeEmulator, pulsar_client: pulsar.Client, topic: str
) -> None:
    emu = make_emulator("--job-delay", "0.1", "--fault-callback-drop-rate", "1")
    consumer = consumer_for(pulsar_client, topic)
    job_id = tdmq_job(emu, topic)
    assert wait_state(emu.client(), job_id)["State"] == "Success"
    with pytest.raises(pulsar.Timeout):
        consumer.receive(timeout_millis=1500)
    assert emu.state()["counts"]["callback_dropped"] == 1
    consumer.close()


def test_callback_duplicated(
    make_emulator: MakeEmulator, pulsar_client: pulsar.Client, topic: str
) -> None:
    emu = make_emulator("--job-delay", "0.1")
    emu.faults(callback_duplicate_rate=1.0)
    consumer = consumer_for(pulsar_client, topic)
    job_id = tdmq_job(emu, topic)
    first = consumer.receive(timeout_millis=30000)
    second = consumer.receive(timeout_millis=30000)
    assert first.properties()["JobId"] == second.properties()["JobId"] == job_id
    assert first.data() == second.data()
    assert first.message_id() != second.message_id()
    assert emu.state()["counts"]["callback_duplicated"] == 1
    consumer.close()


def test_callback_delayed(
    make_emulator: MakeEmulator, pulsar_client: pulsar.Client, topic: str
) -> None:
    emu = make_emulator("--job-delay", "0")
    emu.faults(callback_delay_rate=1.0, callback_delay_s=1.2)
    consumer = consumer_for(pulsar_client, topic)
    job_id = tdmq_job(emu, topic)
    assert wait_state(emu.client(), job_id)["State"] == "Success"
    visible = time.monotonic()
    with pytest.raises(pulsar.Timeout):
        consumer.receive(timeout_millis=500)
    msg = consumer.receive(timeout_millis=30000)
    assert msg.properties()["JobId"] == job_id
    assert time.monotonic() - visible >= 0.9
    assert emu.state()["counts"]["callback_delayed"] == 1
    consumer.close()


def test_callback_before_job_is_visible(
    make_emulator: MakeEmulator, pulsar_client: pulsar.Client, topic: str
) -> None:
    emu = make_emulator(
        "--job-delay", "0.1", "--fault-callback-early-rate", "1", "--fault-callback-early-s", "1.5"
    )
    consumer = consumer_for(pulsar_client, topic)
    job_id = tdmq_job(emu, topic)
    msg = consumer.receive(timeout_millis=30000)
    import xmltodict

    announced = xmltodict.parse(msg.data())["Response"]["JobsDetail"]
    assert announced["State"] == "Success"
    now = emu.client().ci_get_asr_job(Bucket=BUCKET, JobID=job_id)["JobsDetail"][0]
    assert now["State"] == "Running" and now["EndTime"] == "-"
    final = wait_state(emu.client(), job_id)
    assert final["State"] == "Success"
    assert final["EndTime"] == announced["EndTime"]
    assert emu.state()["counts"]["callback_early"] == 1
    consumer.close()


def test_admin_api_rejects_bad_settings(make_emulator: MakeEmulator) -> None:
    emu = make_emulator()
    url = f"{emu.url}/-/faults"
    for bad in ({"nope": 1}, {"error_rate": 2}, {"error_code": "Teapot"}, {"latency_ms": "x"}):
        r = requests.put(url, data=json.dumps(bad), timeout=5)
        assert r.status_code == 400 and r.json()["error"]
    assert requests.put(url, data=b"[1]", timeout=5).status_code == 400
    assert requests.get(f"{emu.url}/-/nothing", timeout=5).status_code == 404
    assert emu.state()["faults"]["error_rate"] == 0


def test_sigint_after_publishing_exits_zero(
    make_emulator: MakeEmulator, pulsar_client: pulsar.Client, topic: str
) -> None:
    emu = make_emulator("--job-delay", "0")
    consumer = consumer_for(pulsar_client, topic)
    tdmq_job(emu, topic)
    consumer.receive(timeout_millis=30000)
    emu.proc.send_signal(signal.SIGINT)
    assert emu.proc.wait(timeout=15) == 0
    assert emu.proc.stdout is not None
    assert emu.proc.stdout.read() == ""  # the ready line was the only stdout output
    consumer.close()
