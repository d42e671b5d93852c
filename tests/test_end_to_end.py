"""The walking skeleton, every part real and in its own process: the emulator (CI), the broker,
``asrd submit`` and ``asrd run``."""

from __future__ import annotations

import json
from pathlib import Path

import pulsar
import pytest

from asrd import config
from asrd.ci import CiClient

from .conftest import Broker
from .support import (
    Emulator,
    asrd,
    start_daemon,
    stop_daemon,
    wait_for,
    write_config,
)

SENTENCES = ["今天天气很好。", "我们去公园散步吧。", "The end."]


@pytest.mark.parametrize("callback_format", ["JSON", "XML"])
def test_submit_callback_get_sink_ack(
    tmp_path: Path, broker: Broker, emulator: Emulator, callback_format: str
) -> None:
    cfg = write_config(tmp_path, emulator, broker.service_url, callback_format)
    ci = CiClient(config.load(cfg.path).ci)
    ci.put_object("media/meeting.mp3", b"ID3 not really audio")
    ci.put_object("media/meeting.mp3.transcript.txt", "\n".join(SENTENCES).encode())

    daemon = start_daemon(cfg, tmp_path / "daemon.log")
    try:
        submitted = asrd("submit", "--config", str(cfg.path), "--input", "media/meeting.mp3")
        assert submitted.returncode == 0, submitted.stderr
        job_id = submitted.stdout.strip()
        assert job_id.startswith("s") and len(job_id) == 33

        result = cfg.results / f"{job_id}.json"
        wait_for(result.exists, 60, f"{result}")
        record = json.loads(result.read_text())
        assert record["schema_version"] == 1
        assert record["job_id"] == job_id
        assert record["state"] == "Success"
        assert record["code"] == "Success"
        assert record["input"]["object"] == "media/meeting.mp3"
        assert record["output"]["bucket"] == "asrd-test-1250000000"
        assert record["transcript"] == "\n".join(SENTENCES)
        assert [s["text"] for s in record["segments"]] == SENTENCES
        ends = [s["end_ms"] for s in record["segments"]]
        assert ends == sorted(ends) and ends[-1] <= record["audio_time"] * 1000 + 1
        assert record["raw"]["JobId"] == job_id
        assert (cfg.results / f"{job_id}.txt").read_text() == "\n".join(SENTENCES) + "\n"
        assert not list(cfg.results.glob(".*.tmp")), "temporary files left behind"
    finally:
        assert stop_daemon(daemon) == 0, (tmp_path / "daemon.log").read_text()[-3000:]

    # Acknowledged: a fresh consumer on the same subscription gets nothing.
    client = pulsar.Client(broker.service_url)
    try:
        consumer = client.subscribe(
            cfg.topic, cfg.subscription, consumer_type=pulsar.ConsumerType.Shared
        )
        with pytest.raises(pulsar.Timeout):
            consumer.receive(timeout_millis=3000)
        consumer.close()
    finally:
        client.close()


def test_check_connect_reaches_ci_and_broker(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg = write_config(tmp_path, emulator, broker.service_url)
    ok = asrd("check", "--config", str(cfg.path), "--connect")
    assert ok.returncode == 0, ok.stderr
    assert "CI reachable" in ok.stdout and "Pulsar reachable" in ok.stdout
    wrong_key = asrd(
        "check", "--config", str(cfg.path), "--connect", env={"ASRD_CI__SECRET_KEY": "Zx9notTheKey"}
    )
    assert wrong_key.returncode == 1
    assert "SignatureDoesNotMatch" in wrong_key.stderr
    assert "Zx9notTheKey" not in wrong_key.stderr + wrong_key.stdout


def test_get_and_list_commands(tmp_path: Path, broker: Broker, emulator: Emulator) -> None:
    cfg = write_config(tmp_path, emulator, broker.service_url)
    ci = CiClient(config.load(cfg.path).ci)
    ci.put_object("media/a.mp3", b"x")
    ci.put_object("media/a.mp3.transcript.txt", b"hello there")
    job_id = asrd("submit", "--config", str(cfg.path), "--input", "media/a.mp3").stdout.strip()

    def finished() -> bool:
        out = asrd("get", "--config", str(cfg.path), job_id)
        return out.returncode == 0 and json.loads(out.stdout)["state"] == "Success"

    wait_for(finished, 30, "the job to finish")
    got = json.loads(asrd("get", "--config", str(cfg.path), job_id).stdout)
    assert got["job_id"] == job_id and got["transcript"] == "hello there"
    listed = asrd("list", "--config", str(cfg.path), "--states", "Success")
    assert listed.returncode == 0
    assert any(line.startswith(f"{job_id}\tSuccess\t") for line in listed.stdout.splitlines())
    unknown = asrd("get", "--config", str(cfg.path), "s" + "0" * 32)
    assert unknown.returncode == 1 and "no job" in unknown.stderr
