"""The daemon as an object in this process: built from settings and a role, started, stopped,
waited for; a worker that is not the primary builds neither the intake nor the API."""

from __future__ import annotations

import socket
from pathlib import Path

import requests
from cmq.cmq_exception import CMQServerException

from asrd import config
from asrd.daemon import Daemon, Role

from .conftest import Broker
from .support import (
    DaemonConfig,
    Emulator,
    create_jobs,
    free_port,
    official_cmq_queue,
    result_ids,
    wait_for,
    write_config,
)


def test_roles() -> None:
    assert Role.PRIMARY.primary and Role.PRIMARY.consumes
    assert Role.worker(0, 3).primary and Role.worker(0, 3).workers == 3
    assert not Role.worker(2, 3).primary and Role.worker(2, 3).consumes
    assert Role.INTAKE_ONLY.primary and not Role.INTAKE_ONLY.consumes


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _with_api(tmp_path: Path, broker: Broker, emulator: Emulator) -> tuple[DaemonConfig, int]:
    port = free_port()
    extra = f'[http]\nlisten = "127.0.0.1:{port}"\n'
    return write_config(tmp_path, emulator, broker.service_url, extra=extra), port


def test_a_primary_in_process_delivers_and_stops_on_request(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg, port = _with_api(tmp_path, broker, emulator)
    daemon = Daemon(config.load(cfg.path), Role.PRIMARY)
    daemon.start()
    try:
        base = f"http://127.0.0.1:{port}"
        wait_for(lambda: requests.get(f"{base}/readyz", timeout=5).status_code == 200, 60, "ready")
        jobs = create_jobs(cfg, 3)
        wait_for(lambda: result_ids(cfg) >= set(jobs), 60, "the jobs' results")
    finally:
        daemon.stop()
        assert daemon.wait(timeout=120)
    assert not _listening(port)
    assert daemon.wait(timeout=0)  # once stopped, it stays so


def test_a_worker_that_is_not_the_primary_serves_no_api_and_runs_no_intake(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg, port = _with_api(tmp_path, broker, emulator)
    daemon = Daemon(config.load(cfg.path), Role.worker(1, 2))
    daemon.start()
    try:
        wait_for(daemon.metrics.ready, 60, "the worker to subscribe")
        assert not _listening(port)
        # Nothing here takes CI's notifications off the queue: this test receives them.
        jobs = create_jobs(cfg, 2)
        queue = official_cmq_queue(emulator.cmq_endpoint, cfg.mq_name)
        seen: set[str] = set()

        def received() -> bool:
            try:
                message = queue.receive_message(1)
            except CMQServerException:
                return False
            seen.update(job for job in jobs if job in message.msgBody)
            return seen == set(jobs)

        wait_for(received, 60, "the jobs' notifications on the queue")
        assert not result_ids(cfg) & set(jobs)
    finally:
        daemon.stop()
        assert daemon.wait(timeout=120)
