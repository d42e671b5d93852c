"""Replaying dead letters is bounded, on the real broker: a body no consumer can parse is
dead-lettered again as soon as it is replayed, and ``asrd dlq replay --all`` still stops after
the messages that were parked when it started; a message replayed ``[dlq] max_replays`` times
is refused with one line and stays parked."""

from __future__ import annotations

from pathlib import Path

from .conftest import Broker
from .support import (
    Emulator,
    asrd,
    dead_letters,
    quiet_client,
    start_daemon,
    stop_daemon,
    wait_for,
    write_config,
)

MAX_REPLAYS = 2


def parked(cfg_path: Path, env: dict[str, str]) -> str:
    listed = asrd("dlq", "list", "--config", str(cfg_path), env=env)
    assert listed.returncode == 0, listed.stderr
    return listed.stdout


def test_replay_stops_and_refuses_after_max_replays(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg = write_config(
        tmp_path, emulator, broker.service_url, extra=f"\n[dlq]\nmax_replays = {MAX_REPLAYS}\n"
    )
    daemon = start_daemon(cfg, cfg.log)
    try:
        client = quiet_client(broker.service_url)
        producer = client.create_producer(cfg.topic, batching_enabled=False)
        producer.send(b"{this is not a callback")
        client.close()
        wait_for(lambda: "replays=0" in parked(cfg.path, cfg.env), 60, "the dead letter")

        for n in range(1, MAX_REPLAYS + 1):
            replayed = asrd("dlq", "replay", "--config", str(cfg.path), "--all", env=cfg.env)
            assert replayed.returncode == 0, replayed.stderr
            # Dead-lettered again at once, yet only the one parked at the start went back.
            assert "1 message(s) put back" in replayed.stdout, replayed.stdout
            wait_for(lambda n=n: f"replays={n}" in parked(cfg.path, cfg.env), 60, f"replay {n}")

        refused = asrd("dlq", "replay", "--config", str(cfg.path), "--all", env=cfg.env)
        assert refused.returncode == 1, refused.stdout
        assert "0 message(s) put back" in refused.stdout
        assert f"refused: replayed {MAX_REPLAYS} times already (dlq.max_replays = " in (
            refused.stderr
        )
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        listed = parked(cfg.path, cfg.env)
        assert listed.startswith("1 message(s)"), listed
    finally:
        assert stop_daemon(daemon) == 0
    # The original and one copy per replay: nothing looped.
    assert len(dead_letters(broker.service_url, cfg)) == 1 + MAX_REPLAYS
