"""Faults for submitting at scale (a create whose answer is lost, a job that never ends) and
the COS bucket listing, driven through the official SDK."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from qcloud_cos import CosS3Client
from qcloud_cos.cos_exception import CosClientError, CosServiceError

from .conftest import Emulator
from .helpers import BUCKET, REGION, unique, wait_state

MakeEmulator = Callable[..., Emulator]


def create(client: CosS3Client, key: str) -> dict[str, Any]:
    return dict(
        client.ci_create_asr_job(
            Bucket=BUCKET,
            OutputBucket=BUCKET,
            OutputRegion=REGION,
            OutputObject=key + ".txt",
            InputObject=key,
            SpeechRecognition={"EngineModelType": "16k_zh", "ChannelNum": "1"},
        )
    )


def jobs_for(client: CosS3Client, key: str) -> list[dict[str, Any]]:
    page = client.ci_list_asr_jobs(Bucket=BUCKET, Size=100)
    return [d for d in page.get("JobsDetail") or [] if d["Input"].get("Object") == key]


def test_create_answer_lost_yet_the_job_exists(make_emulator: MakeEmulator) -> None:
    emu = make_emulator("--job-delay", "0.2", "--fault-create-response-drop-rate", "1")
    assert emu.stats()["faults"]["create_response_drop_mode"] == "mixed"
    client = emu.client(retry=0)
    emu.faults(create_response_drop_mode="close")
    closed = unique("in/closed") + ".mp3"
    with pytest.raises(CosClientError):  # the connection closed without an answer
        create(client, closed)
    emu.faults(create_response_drop_mode="error")
    errored = unique("in/errored") + ".mp3"
    with pytest.raises(CosServiceError) as err:
        create(client, errored)
    assert (err.value.get_status_code(), err.value.get_error_code()) == (500, "InternalError")
    # Both jobs were made, and run to their end like any other.
    for key in (closed, errored):
        [job] = jobs_for(client, key)
        assert wait_state(client, job["JobId"])["State"] in ("Success", "Failed")
    emu.faults(create_response_drop_rate=0)
    ok = unique("in/ok") + ".mp3"
    assert create(client, ok)["JobsDetail"]["State"] == "Submitted"
    state = emu.stats()
    assert state["counts"]["create_response_dropped"] == 2
    assert state["counts"]["create_response_dropped_close"] == 1
    assert state["counts"]["create_response_dropped_error"] == 1
    assert state["stats"]["jobs_created"] == 3
    bad = emu.faults  # a mode that does not exist is refused, nothing applied
    with pytest.raises(Exception, match="400"):
        bad(create_response_drop_mode="sometimes")


def test_a_stalled_job_runs_for_ever(make_emulator: MakeEmulator) -> None:
    emu = make_emulator("--job-delay", "0.2", "--fault-job-stall-rate", "1")
    client = emu.client()
    stuck = create(client, unique("in/stuck") + ".mp3")["JobsDetail"]["JobId"]
    emu.faults(job_stall_rate=0)  # decided at create: the first job stays stuck
    done = create(client, unique("in/done") + ".mp3")["JobsDetail"]["JobId"]
    assert wait_state(client, done)["State"] in ("Success", "Failed")  # no input: Failed
    time.sleep(0.5)
    assert wait_state(client, stuck, timeout=0)["State"] == "Running"
    assert emu.stats()["counts"]["job_stalled"] == 1


def test_bucket_listing_pages_by_marker(emulator: Emulator, client: CosS3Client) -> None:
    base = unique("listing") + "/"
    keys = sorted([f"{base}a/{i:02d}.mp3" for i in range(25)] + [f"{base}b.wav", f"{base}c/d"])
    for key in keys:
        client.put_object(Bucket=BUCKET, Body=b"x" * 3, Key=key)
    seen: list[str] = []
    marker = ""
    pages = 0
    while True:
        page = client.list_objects(Bucket=BUCKET, Prefix=base, Marker=marker, MaxKeys=10)
        pages += 1
        seen += [c["Key"] for c in page.get("Contents", [])]
        assert all(c["Size"] == "3" and c["ETag"].strip('"') for c in page.get("Contents", []))
        if page["IsTruncated"] != "true":
            break
        marker = page["NextMarker"]
    assert seen == keys and pages == 3
    folded = client.list_objects(Bucket=BUCKET, Prefix=base, Delimiter="/")
    assert [c["Key"] for c in folded["Contents"]] == [f"{base}b.wav"]
    assert [p["Prefix"] for p in folded["CommonPrefixes"]] == [f"{base}a/", f"{base}c/"]
    assert "Contents" not in client.list_objects(Bucket=BUCKET, Prefix=unique("none"))
