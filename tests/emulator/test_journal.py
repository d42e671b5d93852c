"""Jobs, queues and templates survive an emulator restart on the same data dir."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest

from .conftest import NO_BROKER, start_emulator
from .helpers import BUCKET, REGION, unique, wait_state

# Each test stops and starts emulator processes: what only processes can show (make test).
pytestmark = pytest.mark.slow


def test_restart_keeps_jobs_queues_and_templates(tmp_path: Path) -> None:
    flags = ("--pulsar-url", NO_BROKER)
    emu = start_emulator(tmp_path, *flags, "--job-delay", "0")
    try:
        client = emu.client()
        key = f"in/{unique()}.mp3"
        client.put_object(Bucket=BUCKET, Body=b"a", Key=key)
        tpl = client.ci_create_asr_template(
            Bucket=BUCKET, Name="kept", EngineModelType="16k_zh", ChannelNum=1
        )["Template"]["TemplateId"]
        qid = "p" + uuid.uuid4().hex
        client.ci_update_asr_queue(
            Bucket=BUCKET, QueueId=qid, Request={"Name": "q", "QueueID": qid, "State": "Paused"}
        )

        def create(**kw: Any) -> str:
            return str(
                client.ci_create_asr_job(
                    Bucket=BUCKET,
                    OutputBucket=BUCKET,
                    OutputRegion=REGION,
                    OutputObject=key + ".txt",
                    InputObject=key,
                    **kw,
                )["JobsDetail"]["JobId"]
            )

        done = create(TemplateId=tpl)
        paused = create(TemplateId=tpl, QueueId=qid)
        before = wait_state(client, done)
        assert before["State"] == "Success"
    finally:
        assert emu.stop() == 0

    emu = start_emulator(tmp_path, *flags, "--job-delay", "0")
    try:
        client = emu.client()
        after = client.ci_get_asr_job(Bucket=BUCKET, JobID=f"{done},{paused}")["JobsDetail"]
        assert after[0] == before
        assert after[1]["State"] == "Pause"
        listed = client.ci_list_asr_jobs(Bucket=BUCKET, Size=100, OrderByTime="Asc")
        assert [d["JobId"] for d in listed["JobsDetail"]] == [done, paused]
        assert client.ci_get_asr_queue(Bucket=BUCKET, QueueIds=qid)["QueueList"][0]["State"] == (
            "Paused"
        )
        client.ci_update_asr_queue(
            Bucket=BUCKET, QueueId=qid, Request={"Name": "q", "QueueID": qid, "State": "Active"}
        )
        assert wait_state(client, paused)["State"] == "Success"
        again = client.ci_create_asr_job(
            Bucket=BUCKET,
            OutputBucket=BUCKET,
            OutputRegion=REGION,
            OutputObject="o.txt",
            InputObject=key,
            TemplateId=tpl,
        )["JobsDetail"]
        assert again["Operation"]["TemplateName"] == "kept"
    finally:
        assert emu.stop() == 0


def test_unfinished_jobs_run_again_after_restart(tmp_path: Path) -> None:
    flags = ("--pulsar-url", NO_BROKER)
    emu = start_emulator(tmp_path, *flags, "--job-delay", "60")
    try:
        client = emu.client()
        client.put_object(Bucket=BUCKET, Body=b"a", Key="in/a.mp3")
        job_id = client.ci_create_asr_job(
            Bucket=BUCKET,
            OutputBucket=BUCKET,
            OutputRegion=REGION,
            OutputObject="o.txt",
            InputObject="in/a.mp3",
            SpeechRecognition={"EngineModelType": "16k_zh"},
        )["JobsDetail"]["JobId"]
    finally:
        assert emu.stop() == 0
    emu = start_emulator(tmp_path, *flags, "--job-delay", "0.1")
    try:
        assert wait_state(emu.client(), job_id)["State"] == "Success"
    finally:
        assert emu.stop() == 0


def test_unreadable_journal_refuses_to_start(tmp_path: Path) -> None:
    import subprocess
    import sys

    journal = tmp_path / ".asrd-emulator" / "journal.jsonl"
    journal.parent.mkdir(parents=True)
    journal.write_text('{"kind": "job", "job_id": "s1"}\n')
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "asrd.emulator",
            "--listen",
            "127.0.0.1:0",
            "--data-dir",
            str(tmp_path),
            "--key",
            "a:b",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 1
    assert r.stdout == ""
    assert "journal record" in r.stderr


def test_journal_is_compacted_at_start(tmp_path: Path) -> None:
    emu = start_emulator(tmp_path, "--job-delay", "0")
    try:
        client = emu.client()
        for _ in range(5):
            client.ci_create_asr_job(
                Bucket=BUCKET,
                OutputBucket=BUCKET,
                OutputRegion=REGION,
                OutputObject="o.txt",
                InputObject="in/none.mp3",
                SpeechRecognition={"EngineModelType": "16k_zh"},
            )
        wait_state(client, client.ci_list_asr_jobs(Bucket=BUCKET, Size=1)["JobsDetail"][0]["JobId"])
    finally:
        assert emu.stop() == 0
    journal = tmp_path / ".asrd-emulator" / "journal.jsonl"
    assert len(journal.read_text().splitlines()) == 1 + 5 * 2  # queue + (created, ended) per job
    start_emulator(tmp_path).stop()
    assert len(journal.read_text().splitlines()) == 1 + 5
