"""The webhook sink against a real HTTP server, and end to end through the real daemon."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from asrd import config
from asrd.ci import CiClient
from asrd.config import ConfigError, WebhookSinkSettings
from asrd.httppool import IdleExpiringQueue
from asrd.result import ResultRecord, normalise
from asrd.sinks import SinkError, build_routes
from asrd.sinks.webhook import WebhookSink

from .conftest import Broker
from .receiver import Received, Receiver
from .support import (
    DaemonConfig,
    Emulator,
    asrd,
    dead_letters,
    ledger_rows,
    start_daemon,
    stop_daemon,
    wait_for,
    webhook_sink,
    write_config,
)

JOB = "s886c0a7c2a6611ed847a618901112dcf"
SECRET = "s3cret-Zq9"


def record(job_id: str = JOB, text: str = "你好世界。") -> ResultRecord:
    return normalise(
        {
            "Code": "Success",
            "CreationTime": "2020-08-20T17:43:01+0800",
            "EndTime": "2020-08-20T17:43:25+0800",
            "JobId": job_id,
            "Operation": {"SpeechRecognitionResult": {"AudioTime": "3.5", "Result": text}},
            "State": "Success",
            "Tag": "SpeechRecognition",
        }
    )


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


def sink(url: str, **kw: Any) -> WebhookSink:
    return WebhookSink(WebhookSinkSettings(name="app", type="webhook", url=url, **kw))


def expected_signature(secret: str, got: Received) -> str:
    msg = got.headers["x-asrd-timestamp"].encode() + b"." + got.body
    return "sha256=" + hmac.new(secret.encode(), msg, hashlib.sha256).hexdigest()


def test_delivers_signed_json_with_idempotency_key(receiver: Receiver) -> None:
    s = sink(receiver.url(), secret=SECRET, headers={"Authorization": "Bearer abc"})
    before = int(time.time())
    s.deliver(record())
    s.close()
    (got,) = receiver.received
    assert got.path == "/asr"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["idempotency-key"] == JOB
    assert got.headers["x-asrd-job-id"] == JOB
    assert got.headers["authorization"] == "Bearer abc"
    assert before <= int(got.headers["x-asrd-timestamp"]) <= int(time.time())
    assert got.json() == json.loads(json.dumps(record().to_dict()))
    assert got.json()["transcript"] == "你好世界。"
    assert "你好".encode() in got.body  # UTF-8, not \\u escapes
    assert hmac.compare_digest(got.headers["x-asrd-signature"], expected_signature(SECRET, got))
    # The signature covers the timestamp: a replay with another timestamp does not verify.
    forged = Received(got.path, {**got.headers, "x-asrd-timestamp": "1"}, got.body, 0)
    assert expected_signature(SECRET, forged) != got.headers["x-asrd-signature"]
    assert SECRET not in json.dumps(got.headers)


def test_no_secret_no_signature(receiver: Receiver) -> None:
    s = sink(receiver.url())
    s.deliver(record())
    s.close()
    (got,) = receiver.received
    assert "x-asrd-signature" not in got.headers
    assert got.headers["idempotency-key"] == JOB


def test_secret_file_is_used(receiver: Receiver, tmp_path: Path) -> None:
    (tmp_path / "hook").write_text(SECRET + "\n")
    s = sink(receiver.url(), secret_file=str(tmp_path / "hook"))
    s.deliver(record())
    s.close()
    (got,) = receiver.received
    assert got.headers["x-asrd-signature"] == expected_signature(SECRET, got)


def test_keep_alive_connection_is_reused_without_stalls(receiver: Receiver) -> None:
    s = sink(receiver.url(), secret=SECRET)
    started = time.monotonic()
    for _ in range(60):
        s.deliver(record())
    elapsed = time.monotonic() - started
    s.close()
    assert len({r.client_port for r in receiver.received}) == 1, "a connection per request"
    # 60 requests with a 40 ms delayed-ACK stall each would take 2.4 s.
    assert elapsed < 1.5, f"60 deliveries took {elapsed:.2f}s"


def test_concurrent_deliveries_from_many_threads(receiver: Receiver) -> None:
    s = sink(receiver.url(), secret=SECRET)
    ids = [f"s{i:032x}" for i in range(64)]
    errors: list[BaseException] = []

    def work(chunk: list[str]) -> None:
        try:
            for job_id in chunk:
                s.deliver(record(job_id))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(ids[i::32],)) for i in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    s.close()
    assert not errors
    got = receiver.by_job()
    assert sorted(got) == ids
    for job_id, reqs in got.items():
        assert len(reqs) == 1
        assert reqs[0].json()["job_id"] == job_id
        assert reqs[0].headers["x-asrd-signature"] == expected_signature(SECRET, reqs[0])


def test_connections_a_burst_opened_are_closed_once_idle(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """After a backlog delivered by many threads at once (the endpoint answering again after
    timeouts) the pool must not keep every connection of the burst open for good: the soak saw
    32 more descriptors per worker after each such fault, forever."""
    burst = 12
    everyone_in = threading.Barrier(burst)

    def reply(_: Received) -> tuple[int, float]:
        # Each request of the burst waits for the others: it holds `burst` connections at once.
        if len(r.received) <= burst:
            with contextlib.suppress(threading.BrokenBarrierError):
                everyone_in.wait(timeout=30)
        return 200, 0.0

    r = Receiver(reply)
    s = sink(r.url())
    try:
        threads = [
            threading.Thread(target=s.deliver, args=(record(f"s{i:032x}"),)) for i in range(burst)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len({got.client_port for got in r.received}) == burst
        assert r.open_connections() == burst  # kept alive, as they should be for a while
        # Time passes: every connection is now idle longer than the limit.
        monkeypatch.setattr(IdleExpiringQueue, "idle_s", 0.0)
        s.deliver(record())  # the next use of the pool closes the idle ones
        wait_for(lambda: r.open_connections() <= 1, 10, "the idle connections to be closed")
        s.deliver(record())  # and what is left still works
        assert len(r.received) == burst + 2
    finally:
        s.close()
        r.close()


@pytest.mark.parametrize(
    ("status", "permanent"),
    [
        (500, False),
        (502, False),
        (503, False),
        (429, False),
        (408, False),
        (425, False),
        (400, True),
        (401, True),
        (404, True),
        (410, True),
        (422, True),
        (301, True),
    ],
)
def test_status_classification(status: int, permanent: bool) -> None:
    r = Receiver(lambda _: (status, 0.0))
    try:
        s = sink(r.url("/asr?token=querysecret"), secret=SECRET)
        with pytest.raises(SinkError) as err:
            s.deliver(record())
        s.close()
    finally:
        r.close()
    assert err.value.permanent is permanent
    text = str(err.value)
    assert f"HTTP {status}" in text
    assert f"http://127.0.0.1:{r.port}/asr" in text
    assert "querysecret" not in text and SECRET not in text
    assert len(r.received) == 1, "the sink itself must not retry"


def test_2xx_variants_are_delivered() -> None:
    for status in (200, 201, 202, 204):
        r = Receiver(lambda _, s=status: (s, 0.0))
        try:
            s = sink(r.url())
            s.deliver(record())
            s.close()
        finally:
            r.close()
        assert len(r.received) == 1


def test_connection_refused_is_transient_and_hides_userinfo() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    s = sink(f"http://user:pa55word@127.0.0.1:{port}/hook?sig=q1", secret=SECRET)
    with pytest.raises(SinkError) as err:
        s.deliver(record())
    s.close()
    assert err.value.permanent is False
    text = str(err.value)
    assert f"http://127.0.0.1:{port}/hook" in text
    assert "refused" in text.lower()
    for leaked in ("pa55word", "user", "q1", SECRET):
        assert leaked not in text


def test_receiver_gone_after_keep_alive_is_transient() -> None:
    r = Receiver()
    s = sink(r.url())
    s.deliver(record())
    r.close()  # the pooled connection is now dead, and nothing listens any more
    for _ in range(3):
        with pytest.raises(SinkError) as err:
            s.deliver(record())
        assert err.value.permanent is False
    s.close()
    assert len(r.received) == 1


def test_timeout_is_transient() -> None:
    r = Receiver(lambda _: (200, 2.0))
    try:
        s = sink(r.url(), timeout_s=0.3)
        started = time.monotonic()
        with pytest.raises(SinkError) as err:
            s.deliver(record())
        elapsed = time.monotonic() - started
        s.close()
    finally:
        r.close()
    assert err.value.permanent is False
    assert "no answer within 0.3s" in str(err.value)
    assert elapsed < 1.5


def test_reserved_or_broken_headers_are_config_errors() -> None:
    for headers in (
        {"Idempotency-Key": "x"},
        {"X-Asrd-Signature": "x"},
        {"content-type": "text/plain"},
        {"X-Ok": "a\r\nInjected: 1"},
        {"Bad Name": "x"},
    ):
        with pytest.raises(ConfigError):
            sink("http://127.0.0.1:9/x", headers=headers)


def test_config_builds_a_webhook_sink(tmp_path: Path) -> None:
    path = tmp_path / "asrd.toml"
    path.write_text(
        """
[ci]
region = "ap-guangzhou"
bucket = "b-1250000000"
secret_id = "id"
secret_key = "key"
[ci.callback]
mq_name = "q"
[pulsar]
topic = "t"
[[sinks]]
name = "app"
type = "webhook"
url = "https://hooks.example.com/asr"
secret = "s3cret"
timeout_s = 2.5
headers = { "X-Tenant" = "t1" }
"""
    )
    (route,) = build_routes(config.load(path, environ={}))
    assert isinstance(route.sink, WebhookSink)
    assert route.sink.name == "app"
    assert route.sink.url == "https://hooks.example.com/asr"
    headers = route.sink.request_headers(JOB, b"{}", "1700000000")
    assert headers["X-Tenant"] == "t1"
    expected = hmac.new(b"s3cret", b"1700000000.{}", hashlib.sha256).hexdigest()
    assert headers["X-Asrd-Signature"] == f"sha256={expected}"
    route.sink.close()


# -- end to end: emulator (CI) → broker → asrd run → webhook + file sink --------------------


def test_daemon_delivers_each_job_once_to_webhook_and_file(
    tmp_path: Path, broker: Broker, emulator: Emulator, receiver: Receiver
) -> None:
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        extra_sinks=webhook_sink(
            receiver.url(),
            f'secret = "{SECRET}"\ntimeout_s = 5.0\nheaders = {{ "X-Tenant" = "t1" }}\n',
        ),
    )
    ci = CiClient(config.load(cfg.path).ci)
    texts = {f"media/clip{i}.mp3": [f"第{i}句。", f"Sentence {i}."] for i in range(3)}
    for key, lines in texts.items():
        ci.put_object(key, b"ID3 not really audio")
        ci.put_object(f"{key}.transcript.txt", "\n".join(lines).encode())

    log = tmp_path / "daemon.log"
    daemon = start_daemon(cfg, log)
    jobs: dict[str, str] = {}
    try:
        for key in texts:
            done = asrd("submit", "--config", str(cfg.path), "--input", key)
            assert done.returncode == 0, done.stderr
            jobs[done.stdout.strip()] = key
        wait_for(
            lambda: (
                set(receiver.by_job()) >= set(jobs)
                and all((cfg.results / f"{j}.json").exists() for j in jobs)
            ),
            60,
            "every job at the webhook and in the file sink",
        )
        time.sleep(1.0)  # a duplicate delivery would show up here
        assert daemon.poll() is None, log.read_text()[-3000:]
    finally:
        assert stop_daemon(daemon) == 0, log.read_text()[-3000:]

    got = receiver.by_job()
    assert set(got) == set(jobs)
    for job_id, key in jobs.items():
        (req,) = got[job_id]
        body = req.json()
        assert req.path == "/asr"
        assert req.headers["x-asrd-job-id"] == job_id
        assert req.headers["x-tenant"] == "t1"
        assert req.headers["x-asrd-signature"] == expected_signature(SECRET, req)
        assert body["job_id"] == job_id
        assert body["state"] == "Success"
        assert body["input"]["object"] == key
        assert body["transcript"] == "\n".join(texts[key])
        on_disk = json.loads((cfg.results / f"{job_id}.json").read_text())
        assert on_disk["transcript"] == body["transcript"]
    assert SECRET not in log.read_text()


def submit_jobs(cfg: DaemonConfig, count: int) -> dict[str, str]:
    """Submit ``count`` jobs with ``asrd submit``; returns job id → transcript."""
    ci = CiClient(config.load(cfg.path).ci)
    jobs = {}
    for i in range(count):
        key = f"media/clip{i}.mp3"
        ci.put_object(key, b"ID3 not really audio")
        ci.put_object(f"{key}.transcript.txt", f"第{i}句。".encode())
        done = asrd("submit", "--config", str(cfg.path), "--input", key)
        assert done.returncode == 0, done.stderr
        jobs[done.stdout.strip()] = f"第{i}句。"
    return jobs


def webhook_table(url: str) -> str:
    return webhook_sink(url, f'secret = "{SECRET}"\n')


FAST_RETRY = "max_attempts = 5\nretry_base_s = 0.3\nretry_max_s = 0.6"


def test_daemon_retries_a_503_and_the_receiver_can_dedupe(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    seen: set[str] = set()

    def first_503(got: Received) -> tuple[int, float]:
        key = got.headers["idempotency-key"]
        if key in seen:
            return 200, 0.0
        seen.add(key)
        return 503, 0.0

    hook = Receiver(first_503)
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        extra_pulsar=FAST_RETRY,
        extra_sinks=webhook_table(hook.url()),
    )
    log = tmp_path / "daemon.log"
    daemon = start_daemon(cfg, log)
    try:
        jobs = submit_jobs(cfg, 2)
        wait_for(lambda: all(len(hook.by_job().get(j, [])) >= 2 for j in jobs), 60, "redeliveries")
        time.sleep(1.0)
        assert daemon.poll() is None
    finally:
        assert stop_daemon(daemon) == 0, log.read_text()[-3000:]
        hook.close()
    got = hook.by_job()
    assert set(got) == set(jobs)
    for job_id, text in jobs.items():
        first, second = got[job_id]  # refused once, then accepted: exactly two requests
        assert first.json()["transcript"] == second.json()["transcript"] == text
        assert second.headers["x-asrd-signature"] == expected_signature(SECRET, second)
    # The file sink was written once per job, not again on the webhook's retry.
    assert sorted(ledger_rows(cfg)) == sorted((j, s) for j in jobs for s in ("app", "files"))
    assert dead_letters(broker.service_url, cfg) == []
    assert "HTTP 503" in log.read_text()


def test_daemon_dead_letters_a_422_without_leaking_secrets(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    hook = Receiver(lambda _: (422, 0.0))
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        extra_pulsar=FAST_RETRY,
        extra_sinks=webhook_table(hook.url("/asr?token=qsecret")),
    )
    log = tmp_path / "daemon.log"
    daemon = start_daemon(cfg, log)
    try:
        (job_id,) = submit_jobs(cfg, 1)
        letters = wait_for(
            lambda: dead_letters(broker.service_url, cfg, timeout_ms=300),
            60,
            "the dead letter",
        )
        assert daemon.poll() is None
    finally:
        assert stop_daemon(daemon) == 0, log.read_text()[-3000:]
        hook.close()
    (letter,) = letters
    reason = letter.properties()["ASRD_DLQ_REASON"]
    assert f"sink app: POST http://127.0.0.1:{hook.port}/asr: HTTP 422" in reason
    assert letter.properties()["ASRD_ATTEMPTS"] == "1", "a permanent failure is not retried"
    assert len(hook.received) == 1
    # The file sink has it; only the webhook is missing, so a replay would only POST.
    assert (cfg.results / f"{job_id}.json").exists()
    assert ledger_rows(cfg) == [(job_id, "files")]
    for text in (reason, log.read_text()):
        assert "qsecret" not in text and SECRET not in text
