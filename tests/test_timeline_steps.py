"""The timeline steps no ledger change marks: a callback received and moved onto Pulsar (written
by the intake for the jobs the ledger knows, in one ledger call per batch, never failing the
move), and each failed attempt with what became of it. The console, ``asrd jobs show`` and
``GET /v1/jobs/<id>`` all read these from the ledger's ``events``."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pulsar

from asrd import config
from asrd.api import ApiContext, create_app
from asrd.ci import CiClient
from asrd.intake.forward import Forwarder
from asrd.intake.queue import QueueIntake, cmq_clients
from asrd.jobs import OWED
from asrd.ledger import JobEntry, SqliteLedger
from asrd.metrics import Metrics
from asrd.observers import MessageInfo, Observers
from asrd.pipeline import Outcome, Verdict
from asrd.settle import Action, Settlement
from asrd.timeline_observer import TimelineObserver, job_id_in

from .conftest import Broker
from .support import (
    Emulator,
    asrd,
    create_jobs,
    official_cmq_queue,
    read_topic,
    wait_for,
    write_config,
)

KNOWN = "s" + "1" * 32
UNKNOWN = "s" + "2" * 32


def _body(job_id: str) -> str:
    detail = {"JobId": job_id, "Tag": "SpeechRecognition", "State": "Success"}
    return json.dumps({"EventName": "TaskFinish", "JobsDetail": detail})


def _ledger(path: Path, *job_ids: str) -> SqliteLedger:
    ledger = SqliteLedger(path)
    now = time.time()
    for i, job_id in enumerate(job_ids):
        ledger.record_job(JobEntry(f"token-{i}", job_id, f"media/{i}.mp3", OWED, now, now + 3600))
    return ledger


class CountingLedger(SqliteLedger):
    """A real ledger that counts the timeline calls (and can be made to refuse them)."""

    def __init__(self, path: Path, refuse: bool = False) -> None:
        super().__init__(path)
        self.calls: list[int] = []
        self.refuse = refuse

    def note_job_events(self, events: Sequence[tuple[str, float, str, str]]) -> None:
        self.calls.append(len(events))
        if self.refuse:
            raise RuntimeError("disk I/O error")
        super().note_job_events(events)


def test_job_id_found_in_xml_and_json_bodies() -> None:
    assert job_id_in(_body(KNOWN).encode()) == KNOWN
    xml = f"<Response><JobsDetail><JobId>{KNOWN}</JobId></JobsDetail></Response>"
    assert job_id_in(xml.encode()) == KNOWN
    assert job_id_in(b"not a notification") == ""


def test_the_intake_writes_received_and_moved_for_known_jobs_in_one_call(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg = write_config(tmp_path, emulator, broker.service_url)
    ledger = CountingLedger(tmp_path / "ledger.db")
    ledger.record_job(JobEntry("t", KNOWN, "media/a.mp3", OWED, time.time(), time.time() + 60))
    queue = official_cmq_queue(emulator.cmq_endpoint, cfg.mq_name)
    from cmq.queue import Message

    for job_id in (KNOWN, UNKNOWN, KNOWN):  # a duplicate callback is a step of its own
        queue.send_message(Message(_body(job_id)))
    settings = config.load(cfg.path).intake.cmq
    assert settings is not None
    client = pulsar.Client(broker.service_url)
    timeline = TimelineObserver(ledger)
    metrics = Metrics()
    observers = Observers([timeline, metrics])
    intake = QueueIntake(settings, cmq_clients(settings), Forwarder(client, cfg.topic), observers)
    try:
        moved = 0
        deadline = time.monotonic() + 30
        while moved < 3 and time.monotonic() < deadline:
            moved += intake.move_once(wait_s=1).moved
        assert moved == 3
        timeline.drain()
    finally:
        intake.close()
        client.close()
    steps = [(e.stage, e.detail) for e in ledger.events(KNOWN)]
    assert steps.count(("moved onto Pulsar", cfg.topic)) == 2
    received = [d for s, d in steps if s == "callback received"]
    assert len(received) == 2 and all(d.startswith(f"CMQ queue {cfg.mq_name}") for d in received)
    assert ledger.events(UNKNOWN) == []  # not a job of this ledger
    assert sum(ledger.calls) == 6 and len(ledger.calls) <= 3  # batched, never one per message
    assert b"\nasrd_intake_lag_seconds " in metrics.exposition()


def test_a_ledger_that_refuses_timeline_steps_does_not_stop_the_move(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg = write_config(tmp_path, emulator, broker.service_url)
    ledger = CountingLedger(tmp_path / "ledger.db", refuse=True)
    from cmq.queue import Message

    official_cmq_queue(emulator.cmq_endpoint, cfg.mq_name).send_message(Message(_body(KNOWN)))
    settings = config.load(cfg.path).intake.cmq
    assert settings is not None
    client = pulsar.Client(broker.service_url)
    timeline = TimelineObserver(ledger)
    intake = QueueIntake(
        settings, cmq_clients(settings), Forwarder(client, cfg.topic), Observers([timeline])
    )
    try:
        moved = 0
        deadline = time.monotonic() + 30
        while not moved and time.monotonic() < deadline:
            moved += intake.move_once(wait_s=1).moved
        assert moved == 1
        timeline.drain()
    finally:
        intake.close()
        client.close()
    assert ledger.calls == [2]  # it was tried, refused, and the message is on Pulsar all the same
    assert [m.data() for m in read_topic(broker.service_url, cfg.topic)] == [_body(KNOWN).encode()]


def _info(attempt: int) -> MessageInfo:
    return MessageInfo("1:2:3", attempt, 0)


def test_each_failed_attempt_is_in_the_timeline_read_alike_by_cli_and_api(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg = write_config(tmp_path, emulator, broker.service_url, intake=False)
    [job] = create_jobs(cfg, 1)  # CI knows it: GET /v1/jobs/<id> answers
    ledger = _ledger(tmp_path / "ledger.db", job)  # the config's ledger
    timeline = TimelineObserver(ledger)
    failed = Verdict(Outcome.RETRY, "CI answered 503", job)
    timeline.settled(_info(1), failed, Settlement(Action.RETRY, "CI answered 503", 4.0))
    out = Verdict(Outcome.PAUSED, "sink files: disk full", job, pause="files")
    release = Settlement(Action.RELEASE, "sink files: disk full")
    for _ in range(50):  # an outage: the same message again and again, written once
        timeline.settled(_info(2), out, release)
    waiting = Verdict(Outcome.PAUSED, "sink hook paused", job, pause="hook", waiting=True)
    timeline.settled(_info(2), waiting, Settlement(Action.RELEASE, "sink hook paused"))
    dead = Settlement(Action.DEAD_LETTER, "gave up after 3 attempts in 60s: CI answered 503")
    timeline.settled(_info(3), failed, dead)
    done = Verdict(Outcome.DONE, "", job, delivered=("files",))
    timeline.settled(_info(4), done, Settlement(Action.ACK))
    timeline.drain()
    steps = [(e.stage, e.detail) for e in ledger.events(job)]
    assert steps[2:] == [  # after "submitted" and "created"
        ("retry scheduled", "attempt 1 failed: CI answered 503; retry in 4 s"),
        ("paused", "sink files: disk full (the attempt is not counted)"),
        ("dead-lettered", "attempt 3: gave up after 3 attempts in 60s: CI answered 503"),
    ]
    # The same steps through GET /v1/jobs/<id> and `asrd jobs show`.
    from fastapi.testclient import TestClient

    settings = config.load(cfg.path)
    ci = CiClient(settings.ci)
    app = create_app(ApiContext(ci, settings.ci, lambda: True, lambda: b"", ledger=ledger))
    answer = TestClient(app).get(f"/v1/jobs/{job}")
    assert answer.status_code == 200, answer.text
    assert [(e["stage"], e["detail"]) for e in answer.json()["events"]] == steps
    ledger.close()
    shown = asrd("jobs", "show", job, "--config", str(cfg.path), env=cfg.env)
    assert shown.returncode == 0, shown.stderr
    assert [(e["stage"], e["detail"]) for e in json.loads(shown.stdout)["events"]] == steps


def test_writes_from_many_threads_all_arrive(tmp_path: Path) -> None:
    ledger = _ledger(tmp_path / "ledger.db", KNOWN)
    timeline = TimelineObserver(ledger)
    failed = Verdict(Outcome.RETRY, "busy", KNOWN)

    def settle_many(first: int) -> None:
        for n in range(first, first + 50):
            timeline.settled(_info(n), failed, Settlement(Action.RETRY, "busy", 1.0))

    threads = [threading.Thread(target=settle_many, args=(i * 50,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    def retries() -> int:
        return sum(e.stage == "retry scheduled" for e in ledger.events(KNOWN))

    wait_for(lambda: retries() == 200, 30, "200 retry steps in the ledger")
    ledger.close()
