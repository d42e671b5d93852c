"""An intake outage longer than the queue's max unacknowledged time: TDMQ-CMQ drops the
undeleted notification, and the reconciler delivers the job instead (docs/production.md)."""

from __future__ import annotations

import json
from pathlib import Path

from asrd import config
from asrd.ci import CiClient

from .conftest import Broker
from .support import (
    Emulator,
    asrd,
    read_topic,
    start_daemon,
    stop_daemon,
    wait_for,
    write_config,
)


def test_a_notification_the_queue_dropped_is_left_to_the_reconciler(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg = write_config(
        tmp_path, emulator, broker.service_url, queue_attrs={"visibility": 5, "max_unacked": 2}
    )
    cfg.env.update({"ASRD_INTAKE__CMQ__MAX_UNACKED_S": "30", "ASRD_RECONCILE__LOOKBACK_S": "20"})
    check = asrd("check", "--config", str(cfg.path), env=cfg.env)
    assert check.returncode == 0, check.stderr
    assert "warning: reconcile.lookback_s = 20 is shorter than" in check.stdout

    ci = CiClient(config.load(cfg.path).ci)
    ci.put_object("media/outage.mp3", b"not audio")
    out = asrd("submit", "--config", str(cfg.path), "--input", "media/outage.mp3")
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.strip()

    def dropped() -> bool:  # no intake runs: CMQ acknowledges the notification for nobody
        queue = next(q for q in emulator.cmq_state()["queues"] if q["name"] == cfg.mq_name)
        return bool(queue["auto_acked"] == 1 and queue["active"] == 0)

    wait_for(dropped, 30, "the queue to drop the undeleted notification")
    cfg.env.update(
        {
            "ASRD_RECONCILE__INTERVAL_S": "1",
            "ASRD_RECONCILE__GRACE_S": "0",
            "ASRD_RECONCILE__LOOKBACK_S": "600",
        }
    )
    daemon = start_daemon(cfg, cfg.log)
    try:
        result = cfg.results / f"{job_id}.json"
        wait_for(result.exists, 60, "the reconciler to deliver the job")
    finally:
        assert stop_daemon(daemon) == 0
    assert json.loads(result.read_text())["state"] == "Success"
    # Not by its callback: nothing ever reached the Pulsar topic.
    assert read_topic(broker.service_url, cfg.topic, timeout_ms=500) == []
