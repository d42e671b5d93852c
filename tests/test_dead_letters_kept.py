"""Dead letters survive a broker restart: Pulsar keeps a topic's messages only for its
subscriptions (no retention is set here, as on a fresh namespace), so the daemon makes the
dead-letter topic's subscription before it parks anything there."""

from __future__ import annotations

from pathlib import Path

import requests

from .conftest import Broker
from .support import (
    dead_letters,
    quiet_client,
    start_daemon,
    stop_daemon,
    wait_for,
    write_config,
)


def test_dead_letters_survive_a_broker_restart(tmp_path: Path, broker: Broker) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:1", broker.service_url, intake=False)
    daemon = start_daemon(cfg, cfg.log)
    try:
        client = quiet_client(broker.service_url)
        try:
            producer = client.create_producer(cfg.topic)
            for i in range(3):
                producer.send(f"not a callback {i}".encode())
        finally:
            client.close()
        wait_for(
            lambda: cfg.log.read_text().count('"message dead-lettered"') == 3,
            60,
            "three dead letters",
        )
    finally:
        assert stop_daemon(daemon) == 0
    assert len(dead_letters(broker.service_url, cfg)) == 3
    broker.restart()  # closes the ledger they are in
    # What the broker does on its own within minutes: drop ledgers no subscription needs.
    name = f"{cfg.topic}-asrd-DLQ".removeprefix("persistent://")
    requests.post(f"{broker.admin_url}/admin/v2/persistent/{name}/trim", timeout=30)
    kept = dead_letters(broker.service_url, cfg, timeout_ms=5000)
    assert sorted(m.data() for m in kept) == [f"not a callback {i}".encode() for i in range(3)]
