"""Topics as TDMQ for Pulsar makes them, on the real broker: the topic, its retry-letter and its
dead-letter topic partitioned (4 partitions), topic and subscription auto-creation off in the
namespace, the subscriptions created beforehand through the admin API. A job whose sink always
fails is tried exactly ``max_attempts`` times and dead-lettered; ``retry_window_s`` holds;
``asrd dlq list/replay`` work on the partitioned dead-letter topic; ``asrd check --connect``
names a subscription missing on the topic or on the retry-letter topic."""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

import requests

from .conftest import Broker
from .receiver import Receiver
from .support import (
    DaemonConfig,
    Emulator,
    asrd,
    create_jobs,
    result_ids,
    start_daemon,
    stop_daemon,
    wait_for,
    webhook_sink,
    write_config,
)

PARTITIONS = 4


class Admin:
    """The broker's admin REST API, as a TDMQ console or its cloud API would be used."""

    def __init__(self, url: str) -> None:
        self.url = f"{url}/admin/v2"

    def _ok(self, r: requests.Response) -> None:
        assert r.status_code in (200, 204), f"{r.request.method} {r.url}: {r.status_code} {r.text}"

    def namespace_like_tdmq(self) -> str:
        """A namespace where nothing is created by using it: topics and subscriptions only by
        the admin API."""
        ns = f"public/tdmq-{uuid.uuid4().hex[:8]}"
        self._ok(requests.put(f"{self.url}/namespaces/{ns}", timeout=30))
        off = {"allowAutoTopicCreation": False}
        self._ok(
            requests.post(f"{self.url}/namespaces/{ns}/autoTopicCreation", json=off, timeout=30)
        )
        self._ok(
            requests.post(
                f"{self.url}/namespaces/{ns}/autoSubscriptionCreation",
                json={"allowAutoSubscriptionCreation": False},
                timeout=30,
            )
        )
        return ns

    def partitioned_topic(self, topic: str, partitions: int = PARTITIONS) -> None:
        path = topic.removeprefix("persistent://")
        self._ok(
            requests.put(f"{self.url}/persistent/{path}/partitions", json=partitions, timeout=30)
        )

    def subscription(self, topic: str, name: str) -> None:
        path = topic.removeprefix("persistent://")
        self._ok(requests.put(f"{self.url}/persistent/{path}/subscription/{name}", timeout=30))


def tdmq_like(
    tmp_path: Path, broker: Broker, emulator: Emulator, extra_pulsar: str, hook: str
) -> DaemonConfig:
    """The daemon's config with its topic in a TDMQ-like namespace, every topic partitioned and
    the subscriptions (the daemon's, and the dead-letter tool's) made first."""
    admin = Admin(broker.admin_url)
    ns = admin.namespace_like_tdmq()
    cfg = write_config(
        tmp_path, emulator, broker.service_url, extra_pulsar=extra_pulsar, extra_sinks=hook
    )
    topic = f"persistent://{ns}/{cfg.mq_name}"
    for name, subscription in (("", "asrd"), ("-asrd-RETRY", "asrd"), ("-asrd-DLQ", "asrd-dlq")):
        admin.partitioned_topic(topic + name)
        admin.subscription(topic + name, subscription)
    return dataclasses.replace(cfg, topic=topic, env={**cfg.env, "ASRD_PULSAR__TOPIC": topic})


def failing_hook() -> Receiver:
    return Receiver(lambda _: (500, 0.0))


def posts(hook: Receiver, job: str) -> int:
    return len(hook.by_job().get(job, []))


def dlq_list(cfg: DaemonConfig) -> str:
    listed = asrd("dlq", "list", "--config", str(cfg.path), env=cfg.env)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


def test_failing_sink_tried_max_attempts_then_dead_lettered_and_replayed(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    hook = failing_hook()
    cfg = tdmq_like(
        tmp_path,
        broker,
        emulator,
        # Every job fails on its own here (the breaker, which would call that an outage of the
        # sink, is off).
        "max_attempts = 3\nretry_base_s = 0.2\nretry_max_s = 0.5\nbatch_size = 1\n"
        "sink_breaker_failures = 0",
        webhook_sink(hook.url(), "timeout_s = 5"),
    )
    daemon = start_daemon(cfg, cfg.log)
    try:
        jobs = create_jobs(cfg, 8)
        wait_for(
            lambda: dlq_list(cfg).startswith(f"{len(jobs)} message(s)"), 120, "every dead letter"
        )
        listed = dlq_list(cfg)
        # Every job was tried exactly three times, on whichever partitions its copies landed.
        assert {job: posts(hook, job) for job in jobs} == {job: 3 for job in jobs}
        for job in jobs:
            assert job in listed
        assert listed.count("gave up after 3 attempts") == len(jobs)
        assert result_ids(cfg) == set(jobs)  # the file sink had them; the webhook held them back

        hook.reply = lambda _: (200, 0.0)
        replayed = asrd("dlq", "replay", "--config", str(cfg.path), "--all", env=cfg.env)
        assert replayed.returncode == 0, replayed.stderr
        assert f"{len(jobs)} message(s) put back" in replayed.stdout
        wait_for(lambda: all(posts(hook, j) == 4 for j in jobs), 60, "the replayed deliveries")
        assert dlq_list(cfg).startswith("0 message(s)")
    finally:
        assert stop_daemon(daemon) == 0
        hook.close()
    # Nothing came back after the dead letters: still one try more than the three, each.
    assert {job: posts(hook, job) for job in jobs} == {job: 4 for job in jobs}


def test_retry_window_holds_across_partitions(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    hook = failing_hook()
    cfg = tdmq_like(
        tmp_path,
        broker,
        emulator,
        "max_attempts = 1000\nretry_window_s = 4\nretry_base_s = 0.5\nretry_max_s = 0.5",
        webhook_sink(hook.url(), "timeout_s = 5"),
    )
    daemon = start_daemon(cfg, cfg.log)
    try:
        jobs = create_jobs(cfg, 3)
        wait_for(lambda: dlq_list(cfg).startswith("3 message(s)"), 120, "every dead letter")
    finally:
        assert stop_daemon(daemon) == 0
        hook.close()
    listed = dlq_list(cfg)
    for job in jobs:
        # Within a 4 s window, about 0.5 s apart: a few tries, not one per copy forever.
        assert 2 <= posts(hook, job) <= 12, posts(hook, job)
        assert job in listed
    assert listed.count("gave up after") == 3


def test_check_connect_names_a_missing_subscription(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    admin = Admin(broker.admin_url)
    cfg = tdmq_like(tmp_path, broker, emulator, "", "")
    ok = asrd("check", "--connect", "--config", str(cfg.path), env=cfg.env)
    assert ok.returncode == 0, ok.stderr
    assert "subscription 'asrd' open" in ok.stdout

    # Another subscription name, the same (existing) retry-letter and dead-letter topics.
    env = {
        **cfg.env,
        "ASRD_PULSAR__SUBSCRIPTION": "other",
        "ASRD_PULSAR__RETRY_TOPIC": f"{cfg.topic}-asrd-RETRY",
        "ASRD_PULSAR__DEAD_LETTER_TOPIC": f"{cfg.topic}-asrd-DLQ",
    }
    missing = asrd("check", "--connect", "--config", str(cfg.path), env=env)
    assert missing.returncode == 1
    lines = missing.stderr.strip().splitlines()
    assert len(lines) == 2, missing.stderr
    assert f"subscription 'other' on {cfg.topic} could not be opened" in lines[0]
    assert f"subscription 'other' on {cfg.topic}-asrd-RETRY could not be opened" in lines[1]

    admin.subscription(cfg.topic, "other")
    retry_only = asrd("check", "--connect", "--config", str(cfg.path), env=env)
    assert retry_only.returncode == 1
    [line] = retry_only.stderr.strip().splitlines()
    assert f"subscription 'other' on {cfg.topic}-asrd-RETRY could not be opened" in line
