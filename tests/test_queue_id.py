"""QueueId: the ``/asr_jobs`` documents make it required on create and list; the emulator refuses
both without it, and asrd, with ``[ci] queue_id`` empty, looks the bucket's ASR queue up once
and sends it everywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from qcloud_cos import CosConfig, CosS3Client
from qcloud_cos.cos_exception import CosServiceError

from asrd import config, queueid
from asrd.ci import CiClient

from .conftest import Broker
from .support import BUCKET, REGION, SECRET_ID, SECRET_KEY, Emulator, asrd, write_config


def _sdk(emulator: Emulator) -> CosS3Client:
    conf = CosConfig(
        Region=REGION,
        SecretId=SECRET_ID,
        SecretKey=SECRET_KEY,
        IP="127.0.0.1",
        Port=emulator.port,
        Scheme="http",
    )
    return CosS3Client(conf, retry=0, session=requests.Session())


def test_the_emulator_refuses_create_and_list_without_queue_id(emulator: Emulator) -> None:
    client = _sdk(emulator)
    with pytest.raises(CosServiceError) as created:
        client.ci_create_asr_job(
            Bucket=BUCKET,
            InputObject="in/a.mp3",
            OutputBucket=BUCKET,
            OutputRegion=REGION,
            OutputObject="out/a.txt",
            SpeechRecognition={"EngineModelType": "16k_zh", "ChannelNum": "1"},
        )
    assert created.value.get_status_code() == 400
    assert created.value.get_error_code() == "InvalidArgument"
    assert "QueueId is required" in created.value.get_error_msg()
    with pytest.raises(CosServiceError) as listed:
        client.ci_list_asr_jobs(Bucket=BUCKET)
    assert listed.value.get_status_code() == 400
    assert "queueId is required" in listed.value.get_error_msg()
    # The queue description call answers without one, and names the bucket's queue.
    queues = client.ci_get_asr_queue(Bucket=BUCKET)["QueueList"]
    assert len(queues) == 1 and str(queues[0]["QueueId"]).startswith("p")


def test_asrd_looks_the_queue_up_and_uses_it_everywhere(tmp_path: Path, emulator: Emulator) -> None:
    cfg = write_config(tmp_path, emulator, "pulsar://127.0.0.1:1", intake=False)
    ci = CiClient(config.load(cfg.path).ci)
    expected = queueid.lookup(ci)
    ci.put_object("media/q.mp3", b"not audio")
    submitted = asrd("submit", "--config", str(cfg.path), "--input", "media/q.mp3")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    detail = ci.get_job(job_id)
    assert detail is not None and detail["QueueId"] == expected
    listed = asrd("list", "--config", str(cfg.path))
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout
    reconciled = asrd("reconcile", "--config", str(cfg.path), "--lookback", "600")
    assert reconciled.returncode == 0, reconciled.stderr


def test_check_connect_prints_the_queue_and_refuses_a_guess(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg = write_config(tmp_path, emulator, broker.service_url)
    expected = queueid.lookup(CiClient(config.load(cfg.path).ci))
    out = asrd("check", "--config", str(cfg.path), "--connect")
    assert out.returncode == 0, out.stderr
    assert f"queue {expected} (the bucket's ASR queue, looked up)" in out.stdout
    configured = "p" + "7" * 32
    out = asrd(
        "check", "--config", str(cfg.path), "--connect", env={"ASRD_CI__QUEUE_ID": configured}
    )
    assert out.returncode == 0, out.stderr
    assert f"queue {configured} (configured)" in out.stdout
    # A second ASR queue on the bucket: asrd does not guess which one jobs go to.
    second = "p" + "8" * 32
    _sdk(emulator).ci_update_asr_queue(
        Bucket=BUCKET, QueueId=second, Request={"Name": "two", "QueueID": second, "State": "Active"}
    )
    out = asrd("check", "--config", str(cfg.path), "--connect")
    assert out.returncode == 78
    assert out.stderr.count("\n") == 1
    assert "ci.queue_id" in out.stderr and expected in out.stderr and second in out.stderr
