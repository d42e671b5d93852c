"""Hostile and malformed callback messages (tests/data/bad_messages): each one is dead-lettered
with its reason or acknowledged as not ours, and the real callbacks around them are delivered
once."""

from __future__ import annotations

import json
import os
import time
import tomllib
from collections import Counter
from pathlib import Path
from typing import Any

import pulsar
import pytest

from asrd import callback, config
from asrd.ci import CiClient
from asrd.consumer import ATTEMPTS, ORIGIN_MESSAGE_ID, REAL_TOPIC, REASON

from .conftest import Broker
from .support import (
    Emulator,
    asrd,
    create_jobs,
    ledger_rows,
    read_topic,
    result_ids,
    start_daemon,
    stop_daemon,
    wait_for,
    write_config,
)

CORPUS = Path(__file__).resolve().parent / "data" / "bad_messages"
EXPECTED: dict[str, dict[str, str]] = tomllib.loads((CORPUS / "EXPECTED.toml").read_text())
MAX_ATTEMPTS = 2


def body(name: str) -> bytes:
    return (CORPUS / name).read_bytes()


def test_corpus_is_complete_and_distinct() -> None:
    files = {p.name for p in CORPUS.iterdir() if p.name != "EXPECTED.toml"}
    assert files == set(EXPECTED), "every corpus file needs an EXPECTED entry and vice versa"
    assert len(files) >= 30
    for name, e in EXPECTED.items():
        assert e["outcome"] in ("dead", "ignored"), name
        assert e["stage"] in ("parse", "ci"), name
        assert e["reason"], name
        assert (CORPUS / name).stat().st_size < 1024 * 1024, name
    # The integration test matches dead letters to files by body.
    bodies = [body(n) for n in files]
    assert len(set(bodies)) == len(bodies)
    assert {e["outcome"] for e in EXPECTED.values()} == {"dead", "ignored"}
    assert any(e["stage"] == "ci" for e in EXPECTED.values())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_parse_refuses_or_recognises_each_file(name: str) -> None:
    expected = EXPECTED[name]
    started = time.monotonic()
    if expected["outcome"] == "dead" and expected["stage"] == "parse":
        with pytest.raises(callback.BadMessage) as err:
            callback.parse(body(name))
        assert expected["reason"] in str(err.value)
        assert "\n" not in str(err.value)
    else:
        event = callback.parse(body(name))
        # "ci": well-formed ASR TaskFinish (only CI can say the job is unknown); else not ours.
        assert event.is_asr_task_finish is (expected["stage"] == "ci")
        if event.is_asr_task_finish:
            assert callback.JOB_ID.fullmatch(event.job_id)
    assert time.monotonic() - started < 2.0, "a hostile body must not cost seconds"


# -- through the real daemon -----------------------------------------------------------------


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def log_lines(path: Path) -> list[dict[str, Any]]:
    lines = []
    for raw in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            lines.append(json.loads(raw))
        except ValueError:
            lines.append({"event": raw, "unparsed": True})
    return lines


def receive_all(consumer: Any, timeout_ms: int) -> list[Any]:
    out = []
    while True:
        try:
            msg = consumer.receive(timeout_millis=timeout_ms)
        except pulsar.Timeout:
            return out
        consumer.acknowledge(msg)
        out.append(msg)


@pytest.mark.parametrize("workers", [1, 3], ids=["one-process", "3-workers-postgresql"])
def test_daemon_dead_letters_or_ignores_every_file_and_keeps_working(
    tmp_path: Path, broker: Broker, emulator: Emulator, workers: int, request: pytest.FixtureRequest
) -> None:
    home = tmp_path / "daemon"
    home.mkdir()
    ledger: dict[str, str] = {}
    if workers > 1:  # several processes share the attempt counts through PostgreSQL
        from tests import postgres as pg

        ledger = pg.ledger_config(request.getfixturevalue("postgres"))
    cfg = write_config(
        home,
        emulator,
        broker.service_url,
        extra_pulsar=f"max_attempts = {MAX_ATTEMPTS}\nretry_base_s = 0.2\nretry_max_s = 0.5\n"
        f"workers = {workers}",
        **ledger,
    )
    settings = config.load(cfg.path)
    dlq_topic = settings.pulsar.dlq_topic
    assert dlq_topic == f"{cfg.topic}-asrd-DLQ"
    ci = CiClient(settings.ci)
    ci.put_object("media/control.mp3", b"ID3 not really audio")
    ci.put_object("media/control.mp3.transcript.txt", "控制组。\nStill working.".encode())

    dead = {n for n, e in EXPECTED.items() if e["outcome"] == "dead"}
    ignored = set(EXPECTED) - dead
    by_body = {body(n): n for n in EXPECTED}

    good: list[str] = []  # the real jobs
    before = tree(home)
    log = home / "daemon.log"
    client = pulsar.Client(broker.service_url, operation_timeout_seconds=30)
    ready = "all workers subscribed" if workers > 1 else "subscribed"
    daemon = start_daemon(cfg, log, ready_event=ready)
    try:
        dlq = client.subscribe(
            dlq_topic,
            "bad-messages-test",
            initial_position=pulsar.InitialPosition.Earliest,
        )
        wait_for(
            lambda: any(line["event"] == "subscribed" for line in log_lines(log)),
            30,
            "the daemon to subscribe",
        )
        # The hostile bodies go onto the topic between real callbacks (CI's, through CMQ and
        # the intake): each half after a batch of jobs is submitted.
        producer = client.create_producer(cfg.topic, batching_enabled=False)
        names = sorted(EXPECTED)
        sent: dict[str, str] = {}
        for part in (names[::2], names[1::2]):
            good += create_jobs(cfg, 10, threads=2)
            sent |= {name: str(producer.send(body(name))) for name in part}
        producer.close()

        submitted = asrd("submit", "--config", str(cfg.path), "--input", "media/control.mp3")
        assert submitted.returncode == 0, submitted.stderr
        control = submitted.stdout.strip()
        good.append(control)

        letters: list[Any] = []

        def settled() -> bool:
            letters.extend(receive_all(dlq, 200))
            ignored_logged = sum(1 for line in log_lines(log) if line["event"] == "message ignored")
            return (
                len(letters) >= len(dead)
                and ignored_logged >= len(ignored)
                and result_ids(cfg) >= set(good)
            )

        wait_for(settled, 45, "every file dead-lettered or ignored and the control job done")
        letters.extend(receive_all(dlq, 1500))  # anything extra would arrive now
        dlq.close()
        assert daemon.poll() is None, log.read_text()[-3000:]
    finally:
        code = stop_daemon(daemon)
    assert code == 0, log.read_text()[-3000:]

    # Dead letters: each dead file exactly once, with the reason and where it came from.
    names = [by_body.get(m.data(), f"<unknown body {m.data()[:40]!r}>") for m in letters]
    assert sorted(names) == sorted(dead)
    for msg, name in zip(letters, names, strict=True):
        props = msg.properties()
        expected = EXPECTED[name]
        assert expected["reason"] in props[REASON], (name, props[REASON])
        assert props[ORIGIN_MESSAGE_ID] == sent[name], name
        assert props[REAL_TOPIC] == cfg.topic, name
        if expected["stage"] == "ci":
            assert props[ATTEMPTS] == str(MAX_ATTEMPTS), (name, props)
            assert f"gave up after {MAX_ATTEMPTS} attempts" in props[REASON]
        else:
            assert props[ATTEMPTS] == "1", (name, props)
            assert props[REASON].startswith("bad message: "), (name, props[REASON])

    # The real jobs around the hostile messages, and the control job after all of them, went
    # through the same daemon: each delivered once.
    record = json.loads((cfg.results / f"{control}.json").read_text())
    assert record["transcript"] == "控制组。\nStill working."
    for job_id in good[:-1]:
        record = json.loads((cfg.results / f"{job_id}.json").read_text())
        assert record["transcript"] == "第一句。\nsecond sentence"
    assert sorted(p.name for p in cfg.results.iterdir()) == sorted(
        f"{job_id}.{ext}" for job_id in good for ext in ("json", "txt")
    )
    assert Counter(ledger_rows(cfg)) == {(job_id, "files"): 1 for job_id in good}

    # Everything settled: nothing left on the subscription or on its retry topic.
    for topic in (cfg.topic, settings.pulsar.retry_letter_topic):
        leftover = client.subscribe(
            topic, cfg.subscription, consumer_type=pulsar.ConsumerType.Shared
        )
        with pytest.raises(pulsar.Timeout):
            msg = leftover.receive(timeout_millis=2000)
            pytest.fail(f"unacknowledged message left on {topic}: {msg.data()[:80]!r}")
        leftover.close()
    client.close()
    topic_messages = read_topic(broker.service_url, cfg.topic)

    # The log names every reason, and no body made the pipeline crash.
    lines = log_lines(log)
    assert not [line for line in lines if line.get("unparsed")], "non-JSON lines in the log"
    reasons = [str(line.get("reason", "")) for line in lines]
    for name, expected in EXPECTED.items():
        assert any(expected["reason"] in r for r in reasons), (name, expected["reason"])
    assert [line["event"] for line in lines].count("message ignored") == len(ignored)
    assert not [line for line in lines if line["event"] == "pipeline error"]
    assert not [line for line in lines if line.get("level") in ("critical", "exception")]

    # The premise: on the topic, real callbacks (moved from CMQ) came before and after hostile
    # bodies.
    order = ["real" if "CMQ_QUEUE" in m.properties() else "bad" for m in topic_messages]
    assert order.count("real") >= len(good)
    assert order.index("real") < len(order) - 1 - order[::-1].index("bad"), order

    # Nothing written outside the sink's directory and the daemon's own files.
    created = tree(home) - before
    allowed = {"results", "daemon.log"}
    stray = {
        p
        for p in created
        if p not in allowed
        and not p.startswith(f"results{os.sep}")
        and not p.startswith("ledger.db")
    }
    assert not stray, f"unexpected files: {sorted(stray)}"
    assert not Path("/tmp/asrd-pwned").exists()
