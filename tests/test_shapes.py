"""Every documented shape of CI's callbacks and describes, end to end: the emulator sends one
shape (``--shape``), CI's notification goes through CMQ and the intake onto Pulsar, and the
daemon reads the job back and delivers the record. One emulator and one daemon per shape, one
job each."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from asrd import config
from asrd.ci import CiClient

from .conftest import Broker
from .support import (
    DaemonConfig,
    asrd,
    dead_letters,
    ledger_rows,
    read_topic,
    start_daemon,
    start_emulator,
    stop_daemon,
    wait_for,
    write_config,
)

SENTENCES = ["今天天气很好。", "The meeting starts now."]
ONE_WORD = ["Hello."]


def _result(doc: dict[str, Any]) -> Any:
    return doc["Operation"]["SpeechRecognitionResult"]


def _job(body: dict[str, Any]) -> dict[str, Any]:
    detail = body["JobsDetail"]
    return detail[0] if isinstance(detail, list) else detail


def check_jobs_array(bodies: list[dict[str, Any]], record: dict[str, Any]) -> None:
    [body] = bodies
    assert isinstance(body["JobsDetail"], list) and len(body["JobsDetail"]) == 1


def check_message_success(bodies: list[dict[str, Any]], record: dict[str, Any]) -> None:
    assert _job(bodies[0])["Message"] == "Success"
    assert record["message"] == "Success" and record["code"] == "Success"


def check_repeated_result(bodies: list[dict[str, Any]], record: dict[str, Any]) -> None:
    assert isinstance(_result(_job(bodies[0]))["Result"], list)
    described = _result(record["raw"])["Result"]
    assert isinstance(described, list) and len(described) == len(SENTENCES)
    assert [s["text"] for s in record["segments"]] == SENTENCES


def check_single_objects(bodies: list[dict[str, Any]], record: dict[str, Any]) -> None:
    detail = _result(_job(bodies[0]))["ResultDetail"]
    assert isinstance(detail, dict) and isinstance(detail["Words"], dict)
    [segment] = record["segments"]
    assert segment["text"] == "Hello." and [w["text"] for w in segment["words"]] == ["Hello."]


def check_flash(bodies: list[dict[str, Any]], record: dict[str, Any]) -> None:
    result = _result(record["raw"])
    assert "FlashResult" in result and "ResultDetail" not in result
    assert [s["text"] for s in record["segments"]] == SENTENCES
    assert all(s["words"] for s in record["segments"])  # from word_list, not the Result text
    first = record["segments"][0]
    assert first["words"][0]["start_ms"] == first["start_ms"]


def check_workflow(bodies: list[dict[str, Any]], record: dict[str, Any]) -> None:
    job = _job(bodies[0])
    assert job["Workflow"]["WorkflowName"] and job["Input"]["CosHeaders"]
    assert record["raw"]["Workflow"]["WorkflowId"] == job["Workflow"]["WorkflowId"]
    assert record["input"]["object"] == "media/shape.mp3"


def check_workflow_finish(bodies: list[dict[str, Any]], record: dict[str, Any]) -> None:
    assert sorted(b["EventName"] for b in bodies) == ["TaskFinish", "WorkflowFinish"]
    finish = next(b for b in bodies if b["EventName"] == "WorkflowFinish")
    [task] = _as_list(finish["WorkflowExecution"]["Tasks"])
    assert task["JobId"] == record["job_id"]


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


Check = Callable[[list[dict[str, Any]], dict[str, Any]], None]
CASES: list[tuple[str, str, list[str], dict[str, str], Check]] = [
    ("jobs-array", "JSON", SENTENCES, {}, check_jobs_array),
    ("message-success", "JSON", SENTENCES, {}, check_message_success),
    ("repeated-result", "JSON", SENTENCES, {}, check_repeated_result),
    (
        "single-objects",
        "JSON",
        ONE_WORD,
        {"ASRD_CI__RECOGNITION__RES_TEXT_FORMAT": "2"},
        check_single_objects,
    ),
    ("flash", "JSON", SENTENCES, {}, check_flash),
    ("workflow", "JSON", SENTENCES, {}, check_workflow),
    ("workflow-finish", "JSON", SENTENCES, {}, check_workflow_finish),
    ("workflow-finish", "XML", SENTENCES, {}, check_workflow_finish),
]


def _bodies(broker: Broker, cfg: DaemonConfig) -> list[dict[str, Any]]:
    """The callback bodies the intake put on the topic, as documents."""
    import xmltodict

    out = []
    for msg in read_topic(broker.service_url, cfg.topic):
        data = msg.data()
        doc = json.loads(data) if data.lstrip()[:1] == b"{" else xmltodict.parse(data)["Response"]
        out.append(doc)
    return out


@pytest.mark.parametrize(
    ("shape", "fmt", "sentences", "env", "check"),
    CASES,
    ids=[f"{c[0]}-{c[1]}" for c in CASES],
)
def test_each_documented_shape_comes_through_the_daemon(
    tmp_path: Path,
    broker: Broker,
    shape: str,
    fmt: str,
    sentences: list[str],
    env: dict[str, str],
    check: Check,
) -> None:
    emu = start_emulator(
        tmp_path / "emulator", broker.service_url, "--job-delay", "0.2", "--shape", shape
    )
    try:
        cfg = write_config(tmp_path / "asrd", emu, broker.service_url, callback_format=fmt)
        cfg.env.update(env)
        ci = CiClient(config.load(cfg.path).ci)
        ci.put_object("media/shape.mp3", b"ID3 not really audio")
        ci.put_object("media/shape.mp3.transcript.txt", "\n".join(sentences).encode())
        daemon = start_daemon(cfg, cfg.log)
        try:
            out = asrd("submit", "--config", str(cfg.path), "--input", "media/shape.mp3", env=env)
            assert out.returncode == 0, out.stderr
            job_id = out.stdout.strip()
            result = cfg.results / f"{job_id}.json"
            wait_for(result.exists, 60, f"the {shape} job's record")
            if shape == "workflow-finish":
                # The event that follows the job's own is consumed too (and not dead-lettered).
                wait_for(lambda: len(read_topic(broker.service_url, cfg.topic, 200)) == 2, 30, "2")
        finally:
            assert stop_daemon(daemon) == 0, cfg.log.read_text()[-3000:]
        record = json.loads(result.read_text())
        assert (record["job_id"], record["state"]) == (job_id, "Success")
        assert record["transcript"] == "\n".join(sentences)
        check(_bodies(broker, cfg), record)
        assert dead_letters(broker.service_url, cfg, timeout_ms=300) == []
        assert ledger_rows(cfg) == [(job_id, "files")]
    finally:
        assert emu.stop() == 0
