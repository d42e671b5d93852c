"""Tracing end to end, every part in its own process as in production: the emulator (CI and its
CMQ queue), the broker, ``asrd submit`` and ``asrd run`` (intake and consumer), exporting over
OTLP/HTTP to a small receiver in the test. Every job has exactly one trace, from the submit in one
process to each sink in another."""

from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

from asrd import config
from asrd.ci import CiClient

from . import otlp_receiver
from .conftest import Broker
from .otlp_receiver import Span
from .support import asrd, start_daemon, start_emulator, stop_daemon, wait_for, write_config

JOBS = 3
SINKS = ("files", "archive")
# The chain every job's trace must hold: (span, its parent's name).
CHAIN = {
    "ci.create": "asrd.submit",
    "ci.job": "asrd.submit",
    "cmq.move": "ci.job",
    "pulsar.consume": "cmq.move",
}
# One span per batch: in the first job's trace under its consume span; the others' consume spans
# link to the first of them.
BATCH_SPANS = ("ci.describe", *(f"sink.{s}" for s in SINKS), "ledger.commit")


def otel_env(endpoint: str, service: str) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
        "OTEL_SERVICE_NAME": service,
        "OTEL_BSP_SCHEDULE_DELAY": "200",  # export within a fraction of a second
    }


def traces_of(spans: list[Span]) -> dict[str, set[str]]:
    """Job id -> the trace ids of the spans that name it."""
    out: dict[str, set[str]] = defaultdict(set)
    for s in spans:
        job = s.attributes.get("asrd.job_id")
        if job:
            out[str(job)].add(s.trace_id)
    return out


def complete(spans: list[Span], jobs: list[str]) -> bool:
    traces = traces_of(spans)
    for job in jobs:
        if len(traces.get(job, ())) != 1:
            return False
        [trace] = traces[job]
        names = {s.name for s in spans if s.trace_id == trace}
        if not names >= {"asrd.submit", *CHAIN}:
            return False
    return {s.name for s in spans} >= set(BATCH_SPANS)


def test_every_job_has_one_trace_from_submit_to_each_sink(tmp_path: Path, broker: Broker) -> None:
    # Jobs take 2 s in CI, so the time inside CI shows in the trace (CI reports whole seconds).
    emulator = start_emulator(tmp_path / "emulator", broker.service_url, "--job-delay", "2")
    receiver = otlp_receiver.start()
    archive = tmp_path / "archive"
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        extra_sinks=f'[[sinks]]\nname = "archive"\ntype = "file"\ndir = "{archive}"\n',
    )
    cfg.env.update(otel_env(receiver.endpoint, "asrd-run"))
    ci = CiClient(config.load(cfg.path).ci)
    ci.put_object("media/a.mp3", b"not audio")
    ci.put_object("media/a.mp3.transcript.txt", "第一句。\nsecond sentence".encode())
    daemon = start_daemon(cfg, tmp_path / "daemon.log")
    try:
        jobs = []
        for i in range(JOBS):
            out = asrd(
                "submit",
                "--config",
                str(cfg.path),
                "--input",
                "media/a.mp3",
                "--output",
                f"out/{i}.txt",
                env=otel_env(receiver.endpoint, "asrd-submit"),
            )
            assert out.returncode == 0, out.stderr
            jobs.append(out.stdout.strip())
        for job in jobs:
            wait_for((cfg.results / f"{job}.json").exists, 60, f"job {job} delivered")
        try:
            wait_for(lambda: complete(receiver.snapshot(), jobs), 60, "every job's spans exported")
        except AssertionError:
            got = sorted((s.trace_id[-6:], s.service, s.name) for s in receiver.snapshot())
            raise AssertionError(f"spans received: {got}") from None
        shown = asrd("jobs", "--config", str(cfg.path), "show", jobs[0])
    finally:
        assert stop_daemon(daemon) == 0, (tmp_path / "daemon.log").read_text()[-3000:]
        receiver.close()
        emulator.stop()

    spans = receiver.snapshot()
    by_id = {s.span_id: s for s in spans}
    traces = traces_of(spans)
    assert len({t for j in jobs for t in traces[j]}) == JOBS  # one each, none shared
    for job in jobs:
        [trace] = traces[job]
        mine = [s for s in spans if s.trace_id == trace]
        [submit] = [s for s in mine if s.name == "asrd.submit"]
        assert submit.parent_id == "" and submit.service == "asrd-submit"
        assert submit.attributes["asrd.job_id"] == job
        for name, parent in CHAIN.items():
            found = [s for s in mine if s.name == name]
            assert found, f"{job}: no {name} span"
            for s in found:
                assert by_id[s.parent_id].name == parent, f"{job}: {name} under {parent}?"
        # Across processes: the submit's spans in one, the rest in the daemon.
        assert {s.service for s in mine if s.name in ("asrd.submit", "ci.create")} == {
            "asrd-submit"
        }
        consume = [s for s in mine if s.name == "pulsar.consume"]
        assert {s.service for s in consume} == {"asrd-run"}
        c = consume[0]
        assert c.attributes["messaging.system"] == "pulsar"
        assert c.attributes["messaging.destination.name"] == cfg.topic
        assert c.attributes["asrd.attempt"] == 1
        # Linked once per batch, to its first span: the others are next to it.
        linked = {span_id for s in consume for _, span_id in s.links}
        batches = {by_id[b].parent_id for b in linked if b in by_id}
        for name in BATCH_SPANS:
            assert any(
                (b.trace_id == trace and by_id[b.parent_id].name == "pulsar.consume")
                or b.parent_id in batches
                for b in spans
                if b.name == name
            ), f"{job}: no {name} in or linked from its trace"
        ci_job = next(s for s in mine if s.name == "ci.job")
        assert 1e9 <= ci_job.end_ns - ci_job.start_ns <= 4e9  # CI's own times, whole seconds
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["trace_id"] == next(iter(traces[jobs[0]]))

    picture = os.environ.get("ASRD_TRACE_PICTURE")  # docs/trace.svg is made this way
    first = next(iter(traces[jobs[0]]))
    mine = [s for s in spans if s.trace_id == first]
    linked = {span_id for s in mine for _, span_id in s.links}
    batches = {by_id[b].parent_id for b in linked if b in by_id}
    mine += [s for s in spans if s.parent_id in batches and s.trace_id != first]
    title = "One job's trace: asrd submit → CI → CMQ → Pulsar → sinks"
    svg = otlp_receiver.waterfall_svg(mine, title)
    assert all(f">{name}" in svg for name in (*CHAIN, *BATCH_SPANS))
    if picture:
        Path(picture).write_text(svg, encoding="utf-8")
