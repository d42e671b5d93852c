"""The real production wiring, every part in its own process: ``asrd submit`` (CallBackType=TDMQ)
→ the emulator's CI writes the TaskFinish message into its TDMQ-CMQ queue or topic → the asrd
intake moves it onto the Pulsar topic → ``asrd run`` → sinks. And the other real path:
CallBackType=Url → ``POST /v1/callbacks/<token>`` → Pulsar → sinks."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from asrd import config
from asrd.ci import CiClient

from .conftest import Broker
from .receiver import Receiver
from .support import (
    ASRD,
    DaemonConfig,
    Emulator,
    asrd,
    create_jobs,
    dead_letters,
    free_port,
    ledger_rows,
    official_cmq_queue,
    read_topic,
    readyz,
    result_ids,
    start_daemon,
    stop_daemon,
    wait_for,
    webhook_sink,
    write_config,
)

SENTENCES = ["今天天气很好。", "我们去公园散步吧。", "The end."]
TOKEN = "cb-token-0123456789abcdef"


def put_audio(cfg: DaemonConfig, key: str, sentences: list[str]) -> CiClient:
    ci = CiClient(config.load(cfg.path).ci)
    ci.put_object(key, b"ID3 not really audio")
    ci.put_object(f"{key}.transcript.txt", "\n".join(sentences).encode())
    return ci


def submit(cfg: DaemonConfig, key: str, env: dict[str, str] | None = None) -> str:
    out = asrd("submit", "--config", str(cfg.path), "--input", key, env={**cfg.env, **(env or {})})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def queue_is_empty(emulator: Emulator, name: str) -> bool:
    """Nothing visible, nothing invisible: called after the visibility timeout has passed."""
    from cmq.cmq_exception import CMQServerException

    try:
        official_cmq_queue(emulator.cmq_endpoint, name).receive_message(1)
    except CMQServerException as exc:
        return int(exc.code) == 7000
    return False


@pytest.mark.parametrize(
    ("callback_format", "mq_mode"),
    [("JSON", "Queue"), ("XML", "Queue"), ("JSON", "Topic"), ("XML", "Topic")],
)
def test_tdmq_callbacks_come_through_cmq_and_the_intake(
    tmp_path: Path, broker: Broker, emulator: Emulator, callback_format: str, mq_mode: str
) -> None:
    cfg = write_config(tmp_path, emulator, broker.service_url, callback_format)
    if mq_mode == "Topic":
        # CI publishes to a CMQ topic; its queue subscription is the queue the intake reads.
        topic_name = f"topic-{cfg.mq_name}"
        emulator.declare_topic(topic_name, [cfg.mq_name])
        cfg.env.update(
            {"ASRD_CI__CALLBACK__MQ_MODE": "Topic", "ASRD_CI__CALLBACK__MQ_NAME": topic_name}
        )
    put_audio(cfg, "media/meeting.mp3", SENTENCES)
    daemon = start_daemon(cfg, tmp_path / "daemon.log")
    try:
        job_id = submit(cfg, "media/meeting.mp3")
        result = cfg.results / f"{job_id}.json"
        wait_for(result.exists, 60, f"{result}")
        record = json.loads(result.read_text())
        assert (record["job_id"], record["state"]) == (job_id, "Success")
        assert record["transcript"] == "\n".join(SENTENCES)
    finally:
        assert stop_daemon(daemon) == 0, (tmp_path / "daemon.log").read_text()[-3000:]
    # The message on Pulsar is CI's body as it was, traced back to its CMQ origin.
    [message] = read_topic(broker.service_url, cfg.topic)
    assert message.properties()["CMQ_QUEUE"] == cfg.mq_name
    body = message.data()
    assert body.lstrip()[:1] == (b"{" if callback_format == "JSON" else b"<")
    assert job_id.encode() in body
    assert queue_is_empty(emulator, cfg.mq_name)
    steps = timeline(cfg, job_id)
    assert steps.index("callback received") < steps.index("moved onto Pulsar")
    assert steps.index("moved onto Pulsar") < steps.index("delivered")


def timeline(cfg: DaemonConfig, job_id: str) -> list[str]:
    """The job's timeline steps as ``asrd jobs show`` prints them."""
    out = asrd("jobs", "show", job_id, "--config", str(cfg.path), env=cfg.env)
    assert out.returncode == 0, out.stderr
    return [event["stage"] for event in json.loads(out.stdout)["events"]]


def test_sigkill_while_moving_1000_callbacks(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    hook = Receiver()
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        extra_sinks=webhook_sink(hook.url()),
    )
    # One message per round, so moving the backlog takes long enough to be cut short.
    cfg.env["ASRD_INTAKE__CMQ__BATCH_SIZE"] = "1"
    jobs = create_jobs(cfg, 1000)
    wait_for(lambda: emulator.callbacks_sent() >= 1000, 60, "the 1000 TaskFinish messages in CMQ")
    stats_url = f"{broker.admin_url}/admin/v2/persistent/{cfg.topic.removeprefix('persistent://')}"

    def on_pulsar() -> int:
        r = requests.get(f"{stats_url}/stats", timeout=5)
        return int(r.json()["msgInCounter"]) if r.status_code == 200 else 0

    log = tmp_path / "daemon.log"
    daemon = start_daemon(cfg, log)
    kills_mid_move = 0
    try:
        for pause in (0.3, 0.8, 0.5, 1.2, 0.4):
            time.sleep(pause)
            moved = on_pulsar()
            daemon.kill()  # SIGKILL: no drain, no delete of what was received
            daemon.wait()
            kills_mid_move += 0 < moved < 1000
            daemon = start_daemon(cfg, log, wait_subscribed=False)
        wait_for(lambda: result_ids(cfg) >= set(jobs), 240, "all 1000 results after the kills")
        wait_for(lambda: set(hook.by_job()) >= set(jobs), 60, "all 1000 webhook deliveries")
    finally:
        assert stop_daemon(daemon) == 0
        hook.close()
    assert kills_mid_move >= 2, "the kills did not land while the intake was moving"
    assert result_ids(cfg) == set(jobs)
    rows = ledger_rows(cfg)
    assert sorted(rows) == sorted({(j, s) for j in jobs for s in ("files", "app")})
    # The webhook's effect is once per idempotency key: every key is a job, every job is there.
    assert set(hook.by_job()) == set(jobs)
    time.sleep(6)  # past the queue's 5 s visibility timeout: anything undeleted is visible again
    assert queue_is_empty(emulator, cfg.mq_name)


def test_callback_too_big_for_the_queue_is_delivered_by_the_reconciler(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    interval = 4.0
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        queue_attrs={"visibility": 5, "maxsize": 1024},
        extra=f"[reconcile]\ninterval_s = {interval}\ngrace_s = 0\nlookback_s = 3600\n",
    )
    long_talk = [f"第{i}句话这是一段很长的录音内容。" for i in range(60)]
    put_audio(cfg, "media/long.mp3", long_talk)
    daemon = start_daemon(cfg, tmp_path / "daemon.log")
    try:
        started = time.monotonic()
        job_id = submit(cfg, "media/long.mp3")
        result = cfg.results / f"{job_id}.json"
        wait_for(result.exists, 60, "the reconciler to deliver the job")
        took = time.monotonic() - started
    finally:
        assert stop_daemon(daemon) == 0
    counts = emulator.stats().get("stats", {})
    assert counts.get("cmq_callbacks_oversize", 0) >= 1, counts
    # Job delay 0.2 s, then at most one interval until the next pass, plus the pass itself.
    assert took <= interval + 0.2 + 3.0, f"delivered after {took:.1f}s, interval {interval}s"
    assert json.loads(result.read_text())["transcript"] == "\n".join(long_talk)
    assert ledger_rows(cfg) == [(job_id, "files")]
    assert read_topic(broker.service_url, cfg.topic) == []  # it never came through the queue


def test_a_body_that_is_not_a_task_finish_is_moved_and_dead_lettered(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    from cmq.queue import Message

    cfg = write_config(tmp_path, emulator, broker.service_url)
    official_cmq_queue(emulator.cmq_endpoint, cfg.mq_name).send_message(
        Message("hello, not a callback")
    )
    daemon = start_daemon(cfg, tmp_path / "daemon.log")
    try:
        wait_for(lambda: dead_letters(broker.service_url, cfg, 500), 60, "the dead letter")
    finally:
        assert stop_daemon(daemon) == 0
    [parked] = dead_letters(broker.service_url, cfg, 2000)
    assert parked.data() == b"hello, not a callback"
    assert "neither XML nor JSON" in parked.properties()["ASRD_DLQ_REASON"]
    assert parked.properties()["CMQ_QUEUE"] == cfg.mq_name


def test_url_callbacks_and_cmq_push_reach_the_sinks(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    port = free_port()
    callback_url = f"http://127.0.0.1:{port}/v1/callbacks/{TOKEN}"
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        extra=f'[http]\nlisten = "127.0.0.1:{port}"\n[intake.url]\ntoken = "{TOKEN}"\n',
    )
    cfg.env.update({"ASRD_CI__CALLBACK__TYPE": "url", "ASRD_CI__CALLBACK__URL": callback_url})
    put_audio(cfg, "media/a.mp3", SENTENCES)
    daemon = start_daemon(cfg, tmp_path / "daemon.log")
    try:
        job_id = submit(cfg, "media/a.mp3")
        wait_for((cfg.results / f"{job_id}.json").exists, 60, "the URL-callback job's result")

        # A job whose URL callback went nowhere, then arrives in a CMQ topic's push envelope.
        emulator.set_faults(callback_drop_rate=1.0)
        lost = submit(cfg, "media/a.mp3")
        wait_for(lambda: asrd_state(cfg, lost) == "Success", 30, "the second job to finish")
        emulator.set_faults(callback_drop_rate=0.0)
        inner = json.dumps(
            {"EventName": "TaskFinish", "JobsDetail": {"JobId": lost, "Tag": "SpeechRecognition"}}
        )
        envelope = {"TopicOwner": 1, "topicName": "asr", "msgId": "9", "msgBody": inner}
        pushed = requests.post(
            callback_url,
            data=json.dumps(envelope),
            headers={"Content-Type": "text/plain", "x-cmq-message-id": "9"},
            timeout=10,
        )
        assert pushed.status_code == 200
        wait_for((cfg.results / f"{lost}.json").exists, 60, "the pushed job's result")

        wrong = requests.post(callback_url.replace(TOKEN, "x" * len(TOKEN)), data=b"{}", timeout=5)
        assert wrong.status_code == 404
        big = requests.post(callback_url, data=b"<" * (4 * 1024 * 1024 + 1), timeout=10)
        assert big.status_code == 413
    finally:
        assert stop_daemon(daemon) == 0
    assert {m.properties()["ASRD_SOURCE"] for m in read_topic(broker.service_url, cfg.topic)} == {
        "url",
        "cmq-push",
    }
    for job in (job_id, lost):
        assert {"callback received", "moved onto Pulsar"} <= set(timeline(cfg, job))


def asrd_state(cfg: DaemonConfig, job_id: str) -> str:
    out = asrd("get", "--config", str(cfg.path), job_id)
    return str(json.loads(out.stdout)["state"]) if out.returncode == 0 else ""


def test_url_callback_answers_503_when_the_broker_cannot_take_it(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    port = free_port()
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        extra=f'[http]\nlisten = "127.0.0.1:{port}"\n[intake.url]\ntoken = "{TOKEN}"\n',
    )
    # A tenant that does not exist: the broker refuses the producer (and the subscription).
    cfg.env["ASRD_PULSAR__TOPIC"] = "persistent://no-such-tenant/default/asr"
    daemon = start_daemon(cfg, tmp_path / "daemon.log", wait_subscribed=False)
    try:
        url = f"http://127.0.0.1:{port}/v1/callbacks/{TOKEN}"
        wait_for(lambda: readyz(port) == 503, 30, "the API")
        answer = requests.post(url, data=b'{"EventName":"TaskFinish"}', timeout=60)
        assert answer.status_code == 503
        assert answer.json() == {"error": "broker unavailable, retry later"}
    finally:
        assert stop_daemon(daemon) == 0


def test_check_connect_names_the_failing_cmq_step(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg = write_config(tmp_path, emulator, broker.service_url)
    ok = asrd("check", "--config", str(cfg.path), "--connect")
    assert ok.returncode == 0, ok.stderr
    assert f"CMQ reachable: queue {cfg.mq_name}" in ok.stdout
    missing = asrd(
        "check", "--config", str(cfg.path), "--connect",
        env={"ASRD_INTAKE__CMQ__QUEUE": "no-such-queue",
             "ASRD_CI__CALLBACK__MQ_NAME": "no-such-queue"},
    )  # fmt: skip
    assert missing.returncode == 1
    assert "queue 'no-such-queue' does not exist" in missing.stderr
    assert "4440" in missing.stderr
    bad_key = asrd(
        "check", "--config", str(cfg.path), "--connect",
        env={"ASRD_INTAKE__CMQ__SECRET_ID": "AKIDother", "ASRD_INTAKE__CMQ__SECRET_KEY": "Qq7nope"},
    )  # fmt: skip
    assert bad_key.returncode == 1 and "refused the key (code 4100)" in bad_key.stderr
    assert "Qq7nope" not in bad_key.stdout + bad_key.stderr
    unreachable = asrd(
        "check", "--config", str(cfg.path), "--connect",
        env={"ASRD_INTAKE__CMQ__ENDPOINT": f"http://127.0.0.1:{free_port()}"},
    )  # fmt: skip
    assert unreachable.returncode == 1 and "cannot reach" in unreachable.stderr


def test_asrd_intake_alone_moves_reports_and_stops_promptly(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    port = free_port()
    cfg = write_config(
        tmp_path, emulator, broker.service_url, extra=f'[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    jobs = create_jobs(cfg, 20)
    log = (tmp_path / "intake.log").open("ab")
    intake = subprocess.Popen(
        [*ASRD, "intake", "--config", str(cfg.path)], stdout=subprocess.DEVNULL, stderr=log
    )
    try:
        wait_for(lambda: len(read_topic(broker.service_url, cfg.topic, 500)) >= 20, 60, "moves")
        assert readyz(port) == 200
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert metric(metrics, "asrd_intake_messages_moved_total") == 20
        age = metric(metrics, "asrd_intake_seconds_since_last_poll")
        assert 0 <= age < 10
        time.sleep(1)  # in the middle of a long poll
        started = time.monotonic()
        intake.send_signal(signal.SIGTERM)
        assert intake.wait(timeout=10) == 0
        assert time.monotonic() - started < 2.0
    finally:
        if intake.poll() is None:
            intake.kill()
    bodies = {m.data() for m in read_topic(broker.service_url, cfg.topic)}
    assert all(any(j.encode() in b for b in bodies) for j in jobs)
    assert queue_is_empty(emulator, cfg.mq_name)


def test_readyz_fails_while_cmq_is_unreachable(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    port = free_port()
    cfg = write_config(
        tmp_path, emulator, broker.service_url, extra=f'[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    cfg.env.update(
        {
            "ASRD_INTAKE__CMQ__ENDPOINT": f"http://127.0.0.1:{free_port()}",
            "ASRD_INTAKE__CMQ__UNREACHABLE_AFTER_S": "2",
        }
    )
    daemon = start_daemon(cfg, tmp_path / "daemon.log")
    try:
        wait_for(lambda: readyz(port) == 503, 30, "/readyz to fail")
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        assert metric(metrics, "asrd_intake_receive_errors_total") >= 1
    finally:
        assert stop_daemon(daemon) == 0


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {name} in /metrics")
