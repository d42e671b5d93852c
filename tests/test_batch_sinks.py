"""Sinks that take a batch (``deliver_many``): every record of the batch durable, or named as
failed, one record's failure never failing the others. A real directory and a real broker."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from asrd.config import FileSinkSettings, PulsarSettings, PulsarSinkSettings
from asrd.result import ResultRecord, normalise
from asrd.sinks.base import SinkError, deliver_all
from asrd.sinks.file import FileSink
from asrd.sinks.pulsar import PulsarSink

from .conftest import Broker
from .support import read_topic
from .test_callback_and_result import detail


def records(count: int) -> list[ResultRecord]:
    base = normalise(detail())
    return [replace(base, job_id=f"s{i:032x}") for i in range(count)]


def test_file_sink_batch_writes_every_format_and_fails_only_the_blocked_record(
    tmp_path: Path,
) -> None:
    sink = FileSink(
        FileSinkSettings(type="file", name="files", dir=tmp_path, formats=["json", "txt"])
    )
    batch = records(5)
    (tmp_path / f"{batch[2].job_id}.json").mkdir()  # a directory where a file must go
    failed = sink.deliver_many(batch)
    assert set(failed) == {batch[2].job_id}
    assert "cannot write to" in str(failed[batch[2].job_id])
    for r in batch[:2] + batch[3:]:
        assert json.loads((tmp_path / f"{r.job_id}.json").read_text())["job_id"] == r.job_id
        assert (tmp_path / f"{r.job_id}.txt").read_text().strip() == r.transcript
    assert not list(tmp_path.glob(".*.tmp")), "no temp file is left behind"


def test_a_blocked_json_keeps_the_other_formats_but_not_the_json(tmp_path: Path) -> None:
    sink = FileSink(FileSinkSettings(type="file", name="f", dir=tmp_path, formats=["txt", "json"]))
    (r,) = records(1)
    (tmp_path / f"{r.job_id}.txt").mkdir()
    assert set(sink.deliver_many([r])) == {r.job_id}
    # json is written last: it must not claim a job whose other formats are missing
    assert not (tmp_path / f"{r.job_id}.json").exists()


def test_deliver_all_goes_one_by_one_for_a_sink_without_batches() -> None:
    class OneByOne:
        name = "one"

        def __init__(self) -> None:
            self.seen: list[str] = []

        def deliver(self, record: ResultRecord) -> None:
            self.seen.append(record.job_id)
            if len(self.seen) == 2:
                raise SinkError("second refused", permanent=True)

        def close(self) -> None:
            return None

    sink = OneByOne()
    batch = records(3)
    failed = deliver_all(sink, batch)
    assert sink.seen == [r.job_id for r in batch]
    assert list(failed) == [batch[1].job_id] and failed[batch[1].job_id].permanent


def test_pulsar_sink_batch_is_on_the_topic_and_a_too_big_record_fails_alone(
    broker: Broker, topic: str
) -> None:
    settings = PulsarSinkSettings(type="pulsar", name="p", topic=topic, send_timeout_ms=10_000)
    sink = PulsarSink(settings, PulsarSettings(service_url=broker.service_url, topic=topic))
    try:
        batch = records(20)
        huge = replace(batch[7], transcript="x" * (6 * 1024 * 1024))  # over the 5 MiB limit
        batch[7] = huge
        failed = sink.deliver_many(batch)
        assert list(failed) == [huge.job_id]
        assert failed[huge.job_id].permanent
        assert "too big" in str(failed[huge.job_id])
        sink.deliver(batch[0])  # a single delivery is a batch of one
    finally:
        sink.close()
    on_topic = [m.properties()["job_id"] for m in read_topic(broker.service_url, topic)]
    expected = [r.job_id for r in batch if r is not huge]
    assert sorted(on_topic) == sorted([*expected, batch[0].job_id])
