"""Pulsar, COS and plugin sinks, each against its real counterpart, through the real daemon."""

from __future__ import annotations

import json
from pathlib import Path

from asrd import config
from asrd.ci import CiClient

from .conftest import Broker
from .support import (
    Emulator,
    asrd,
    create_jobs,
    read_topic,
    result_ids,
    start_daemon,
    stop_daemon,
    wait_for,
    write_config,
)


def test_pulsar_cos_and_plugin_sinks(
    tmp_path: Path, broker: Broker, emulator: Emulator, topic: str
) -> None:
    lines = tmp_path / "plugin.txt"
    sinks = f"""
[[sinks]]
name = "bus"
type = "pulsar"
topic = "{topic}"

[[sinks]]
name = "archive"
type = "cos"
prefix = "records/"
formats = ["json", "srt"]

[[sinks]]
name = "mine"
type = "plugin"
factory = "tests.plugin_sink:make"
options = {{ path = "{lines}" }}
"""
    cfg = write_config(tmp_path, emulator, broker.service_url, extra_sinks=sinks)
    daemon = start_daemon(cfg, tmp_path / "daemon.log")
    try:
        jobs = create_jobs(cfg, 3)
        wait_for(lambda: result_ids(cfg) >= set(jobs), 30, "the file sink")
        wait_for(lambda: lines.exists() and len(lines.read_text().splitlines()) >= 3, 10, "plugin")
    finally:
        assert stop_daemon(daemon) == 0

    published = read_topic(broker.service_url, topic)
    assert sorted(m.properties()["job_id"] for m in published) == sorted(jobs)
    for m in published:
        record = json.loads(m.data())
        assert record["job_id"] == m.properties()["job_id"] == m.partition_key()
        assert record["transcript"] == "第一句。\nsecond sentence"

    ci = CiClient(config.load(cfg.path).ci)
    for job_id in jobs:
        stored = json.loads(ci.get_object(f"records/{job_id}.json"))
        assert stored["job_id"] == job_id
        assert b"-->" in ci.get_object(f"records/{job_id}.srt")
    assert sorted(lines.read_text().split()) == sorted([*jobs, *["Success"] * 3])


def test_plugin_that_cannot_load_is_a_config_error(tmp_path: Path) -> None:
    sinks = '[[sinks]]\nname = "x"\ntype = "plugin"\nfactory = "no_such_module:make"\n'
    cfg = write_config(tmp_path, "http://127.0.0.1:1", "pulsar://127.0.0.1:6650", extra_sinks=sinks)
    out = asrd("run", "--config", str(cfg.path))
    assert out.returncode == 78
    assert "sinks.x.factory: cannot load no_such_module:make" in out.stderr
