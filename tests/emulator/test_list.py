"""ci_list_asr_jobs: every filter and full pagination across 250 jobs (own bucket)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from qcloud_cos import CosS3Client
from qcloud_cos.cos_exception import CosServiceError

from .conftest import Emulator
from .helpers import REGION

LIST_BUCKET = "listing-1250000000"
TIME_BUCKET = "listtime-1250000000"
Q1, Q2 = "p" + "a" * 32, "p" + "b" * 32


def create(client: CosS3Client, bucket: str, key: str, queue: str | None = None) -> str:
    return str(
        client.ci_create_asr_job(
            Bucket=bucket,
            OutputBucket=bucket,
            OutputRegion=REGION,
            OutputObject=key + ".txt",
            InputObject=key,
            QueueId=queue,
            SpeechRecognition={"EngineModelType": "8k_zh", "ChannelNum": "2"},
        )["JobsDetail"]["JobId"]
    )


@pytest.fixture(scope="module")
def jobs(emulator: Emulator) -> dict[str, Any]:
    """250 jobs: 150 in Q1 with audio (end Success), 100 in Q2 without (end Failed)."""
    client = emulator.client()
    client.put_object(Bucket=LIST_BUCKET, Body=b"a", Key="audio.mp3")
    ids: list[str] = []
    queue_of: dict[str, str] = {}
    for i in range(250):
        ok = i % 5 < 3
        job_id = create(
            client, LIST_BUCKET, "audio.mp3" if ok else f"none{i}.mp3", Q1 if ok else Q2
        )
        ids.append(job_id)
        queue_of[job_id] = Q1 if ok else Q2
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        page = client.ci_list_asr_jobs(Bucket=LIST_BUCKET, States="Submitted,Running", Size=1)
        if "JobsDetail" not in page:
            break
        time.sleep(0.1)
    return {"ids": ids, "queue_of": queue_of}


def collect(client: CosS3Client, **kwargs: Any) -> tuple[list[dict[str, Any]], int]:
    out: list[dict[str, Any]] = []
    token = ""
    pages = 0
    while True:
        r = client.ci_list_asr_jobs(Bucket=LIST_BUCKET, NextToken=token, **kwargs)
        pages += 1
        out.extend(r.get("JobsDetail", []))
        token = r.get("NextToken") or ""
        if not token:
            return out, pages
        assert pages < 1000


def test_full_pagination_desc_and_asc(emulator: Emulator, jobs: dict[str, Any]) -> None:
    client = emulator.client()
    desc, pages = collect(client, Size=100)
    assert pages == 3
    assert [d["JobId"] for d in desc] == list(reversed(jobs["ids"]))
    asc, pages = collect(client, Size=7, OrderByTime="Asc")
    assert pages == 36  # 250 = 35 * 7 + 5
    assert [d["JobId"] for d in asc] == jobs["ids"]
    default = client.ci_list_asr_jobs(Bucket=LIST_BUCKET)
    assert len(default["JobsDetail"]) == 10  # default size
    assert default["NextToken"]


def test_exact_page_boundary_has_no_next_token(emulator: Emulator, jobs: dict[str, Any]) -> None:
    client = emulator.client()
    r = client.ci_list_asr_jobs(Bucket=LIST_BUCKET, QueueId=Q2, Size=100)
    assert len(r["JobsDetail"]) == 100
    assert r["NextToken"] is None


def test_filters_queue_and_states(emulator: Emulator, jobs: dict[str, Any]) -> None:
    client = emulator.client()
    q1, _ = collect(client, QueueId=Q1, Size=100)
    assert {d["JobId"] for d in q1} == {j for j, q in jobs["queue_of"].items() if q == Q1}
    success, _ = collect(client, States="Success", Size=100)
    failed, _ = collect(client, States="Failed", Size=100)
    assert len(success) == 150 and all(d["State"] == "Success" for d in success)
    assert len(failed) == 100 and all(d["State"] == "Failed" for d in failed)
    both, _ = collect(client, States="Success,Failed", Size=100)
    assert len(both) == 250
    assert collect(client, States="All", Size=100)[0] == both
    assert collect(client, QueueId=Q1, States="Failed")[0] == []
    none = client.ci_list_asr_jobs(Bucket=LIST_BUCKET, States="Running")
    assert "JobsDetail" not in none
    other = client.ci_list_asr_jobs(Bucket="emptybucket-1250000000")
    assert "JobsDetail" not in other


def test_creation_time_window(emulator: Emulator) -> None:
    client = emulator.client()

    def created(job_id: str) -> str:
        return str(
            client.ci_get_asr_job(Bucket=TIME_BUCKET, JobID=job_id)["JobsDetail"][0]["CreationTime"]
        )

    first = [create(client, TIME_BUCKET, "a.mp3") for _ in range(3)]
    time.sleep(1.1)  # creation times have 1 s resolution
    second = [create(client, TIME_BUCKET, "a.mp3") for _ in range(2)]
    assert created(first[-1]) < created(second[0])

    def ids(**kw: Any) -> list[str]:
        r = client.ci_list_asr_jobs(Bucket=TIME_BUCKET, OrderByTime="Asc", Size=100, **kw)
        return [d["JobId"] for d in r.get("JobsDetail", [])]

    assert ids(StartCreationTime=created(second[0])) == second
    assert ids(EndCreationTime=created(first[-1])) == first
    window = ids(StartCreationTime=created(first[0]), EndCreationTime=created(second[-1]))
    assert window == first + second
    assert ids(StartCreationTime="2100-01-01T00:00:00+0800") == []
    assert ids(EndCreationTime="2000-01-01T00:00:00+0800") == []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"Size": 0},
        {"Size": 101},
        {"Size": "ten"},
        {"States": "Done"},
        {"OrderByTime": "Sideways"},
        {"NextToken": "not-a-token"},
        {"StartCreationTime": "yesterday"},
    ],
)
def test_bad_list_parameters(emulator: Emulator, kwargs: dict[str, Any]) -> None:
    with pytest.raises(CosServiceError) as err:
        emulator.client().ci_list_asr_jobs(Bucket=LIST_BUCKET, **kwargs)
    assert err.value.get_status_code() == 400
    assert err.value.get_error_code() == "InvalidArgument"
    assert err.value.get_error_msg()
