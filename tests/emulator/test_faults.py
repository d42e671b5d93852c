"""Fault injection (flags and the /-/faults admin API), counters, and clean shutdown."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest
import requests
import xmltodict
from cmq.cmq_exception import CMQServerException
from qcloud_cos.cos_exception import CosServiceError

from .conftest import Emulator
from .helpers import BUCKET, REGION, create_job_raw, unique, wait_state

MakeEmulator = Callable[..., Emulator]
# Callbacks go to a CMQ topic in bj that pushes into one queue; the SDK reads bj by default.
CMQ = ("--cmq-default-region", "bj", "--cmq-queue", "bj:cb", "--cmq-topic", "bj:cb-topic:cb")


def tdmq_job(emu: Emulator) -> str:
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
        "CallBackMqConfig": {"MqRegion": "bj", "MqMode": "Topic", "MqName": "cb-topic"},
    }
    return str(create_job_raw(client, req)["JobsDetail"]["JobId"])


def receive(emu: Emulator, wait: int = 15) -> Any:
    """The next callback in the CMQ queue (deleted), as the SDK's Message."""
    queue = emu.cmq().get_queue("cb")
    msg = queue.receive_message(wait)
    queue.delete_message(msg.receiptHandle)
    return msg


def assert_nothing(emu: Emulator, wait: int) -> None:
    with pytest.raises(CMQServerException) as err:
        emu.cmq().get_queue("cb").receive_message(wait)
    assert err.value.code == 7000


def test_flags_are_reported_and_latency_applies(make_emulator: MakeEmulator) -> None:
    emu = make_emulator("--fault-latency-ms", "150:200", "--fault-seed", "7", "--job-delay", "0")
    state = emu.stats()
    assert state["faults"]["latency_ms"] == 150 and state["faults"]["latency_max_ms"] == 200
    client = emu.client()
    t0 = time.monotonic()
    client.ci_get_asr_job(Bucket=BUCKET, JobID="s" + "1" * 32)
    assert 0.15 <= time.monotonic() - t0 < 1.5
    assert emu.stats()["counts"]["latency"] == 1
    emu.faults(latency_ms=0, latency_max_ms=0)
    t0 = time.monotonic()
    client.ci_get_asr_job(Bucket=BUCKET, JobID="s" + "1" * 32)
    assert time.monotonic() - t0 < 0.15
    assert emu.stats()["counts"]["latency"] == 1
    health = requests.get(f"{emu.endpoint}/-/healthz", timeout=5)
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
    counts = emu.stats()["counts"]
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
    assert emu.stats()["counts"]["throttled"] == statuses.count("slow")


def test_jobs_fail_with_given_code(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(
        "--job-delay", "0.1", "--fault-job-fail-rate", "1", "--fault-job-fail-code", "AudioBroken",
        *CMQ,
    )  # fmt: skip
    job_id = tdmq_job(emu)
    done = wait_state(emu.client(), job_id)
    assert (done["State"], done["Code"], done["Message"]) == (
        "Failed",
        "AudioBroken",
        "injected failure",
    )
    detail = xmltodict.parse(receive(emu).msgBody)["Response"]["JobsDetail"]
    assert (detail["JobId"], detail["State"], detail["Code"]) == (job_id, "Failed", "AudioBroken")
    assert emu.stats()["counts"]["job_failed"] == 1


def test_callback_dropped(make_emulator: MakeEmulator) -> None:
    emu = make_emulator("--job-delay", "0.1", "--fault-callback-drop-rate", "1", *CMQ)
    job_id = tdmq_job(emu)
    assert wait_state(emu.client(), job_id)["State"] == "Success"
    assert_nothing(emu, 1)
    assert emu.stats()["counts"]["callback_dropped"] == 1
    assert "cmq_callbacks_sent" not in emu.counters()


def test_callback_duplicated(make_emulator: MakeEmulator) -> None:
    emu = make_emulator("--job-delay", "0.1", *CMQ)
    emu.faults(callback_duplicate_rate=1.0)
    job_id = tdmq_job(emu)
    first, second = receive(emu), receive(emu)
    assert first.msgBody == second.msgBody
    assert xmltodict.parse(first.msgBody)["Response"]["JobsDetail"]["JobId"] == job_id
    assert first.msgId != second.msgId
    assert emu.stats()["counts"]["callback_duplicated"] == 1
    assert emu.counters()["cmq_callbacks_sent"] == 2


def test_callback_delayed(make_emulator: MakeEmulator) -> None:
    emu = make_emulator("--job-delay", "0", *CMQ)
    emu.faults(callback_delay_rate=1.0, callback_delay_s=1.5)
    job_id = tdmq_job(emu)
    assert wait_state(emu.client(), job_id)["State"] == "Success"
    visible = time.monotonic()
    assert_nothing(emu, 0)
    msg = receive(emu)  # the long poll ends when the delayed callback arrives
    assert xmltodict.parse(msg.msgBody)["Response"]["JobsDetail"]["JobId"] == job_id
    assert time.monotonic() - visible >= 1.0
    assert emu.stats()["counts"]["callback_delayed"] == 1


def test_callback_before_job_is_visible(make_emulator: MakeEmulator) -> None:
    emu = make_emulator(
        "--job-delay", "0.1", "--fault-callback-early-rate", "1", "--fault-callback-early-s", "1.5",
        *CMQ,
    )  # fmt: skip
    job_id = tdmq_job(emu)
    announced = xmltodict.parse(receive(emu).msgBody)["Response"]["JobsDetail"]
    assert announced["State"] == "Success"
    now = emu.client().ci_get_asr_job(Bucket=BUCKET, JobID=job_id)["JobsDetail"][0]
    assert now["State"] == "Running" and now["EndTime"] == "-"
    final = wait_state(emu.client(), job_id)
    assert final["State"] == "Success"
    assert final["EndTime"] == announced["EndTime"]
    assert emu.stats()["counts"]["callback_early"] == 1


def test_admin_api_rejects_bad_settings(make_emulator: MakeEmulator) -> None:
    emu = make_emulator()
    url = f"{emu.endpoint}/-/faults"
    for bad in ({"nope": 1}, {"error_rate": 2}, {"error_code": "Teapot"}, {"latency_ms": "x"}):
        r = requests.put(url, data=json.dumps(bad), timeout=5)
        assert r.status_code == 400 and r.json()["error"]
    assert requests.put(url, data=b"[1]", timeout=5).status_code == 400
    assert requests.get(f"{emu.endpoint}/-/nothing", timeout=5).status_code == 404
    assert emu.stats()["faults"]["error_rate"] == 0


@pytest.mark.slow  # a signal to the process
def test_sigint_after_delivering_exits_zero(make_emulator: MakeEmulator) -> None:
    emu = make_emulator("--job-delay", "0", *CMQ)
    tdmq_job(emu)
    receive(emu)
    emu.proc.send_signal(signal.SIGINT)
    assert emu.proc.wait(timeout=15) == 0
    assert emu.proc.stdout is not None
    assert emu.proc.stdout.read() == ""  # the two ready lines were the only stdout output
