"""Emulator fixtures: the emulator runs as a subprocess, started by the shared harness
(``tests/support.py``), and is driven only through the official SDKs (COS, CMQ) or raw HTTP for
malformed requests.

No fixture here needs a broker: TDMQ callbacks go into the emulator's own CMQ queues, and the
emulators are pointed at a Pulsar address where nothing listens to prove it. Only the legacy
``--tdmq-to-pulsar`` test asks for the ``broker`` fixture itself."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from qcloud_cos import CosConfig, CosS3Client

from .. import support
from .helpers import REGION, SECRET_ID, SECRET_KEY, TOKEN, TOKEN_ID, TOKEN_KEY, cmq_account

NO_BROKER = "pulsar://127.0.0.1:9"  # discard port: a Pulsar client would fail here
KEYS = (f"{SECRET_ID}:{SECRET_KEY}", f"{TOKEN_ID}:{TOKEN_KEY}:{TOKEN}")


class Emulator(support.Emulator):
    """The harness's emulator with the official SDKs' clients on it, as these tests use them."""

    def cmq(self, secret_id: str = SECRET_ID, secret_key: str = SECRET_KEY) -> Any:
        """An official CMQ SDK ``Account`` on this emulator's CMQ endpoint."""
        return cmq_account(self.cmq_endpoint, secret_id, secret_key)

    def counters(self) -> dict[str, int]:
        """The ``stats`` counters of the ``/-/faults`` document."""
        return dict(self.stats()["stats"])

    def client(
        self,
        secret_id: str = SECRET_ID,
        secret_key: str = SECRET_KEY,
        token: str | None = None,
        retry: int = 0,
    ) -> CosS3Client:
        conf = CosConfig(
            Region=REGION,
            SecretId=secret_id,
            SecretKey=secret_key,
            Token=token,
            IP="127.0.0.1",
            Port=self.port,
            Scheme="http",
        )
        # Own session per client: the SDK's shared class-level session would mix emulators.
        return CosS3Client(conf, retry=retry, session=requests.Session())

    def faults(self, **settings: Any) -> dict[str, Any]:
        """Change fault injection (``PUT /-/faults``); the document after the change."""
        r = requests.put(f"{self.endpoint}/-/faults", data=json.dumps(settings), timeout=5)
        r.raise_for_status()
        return dict(r.json())


def start_emulator(data_dir: Path, *extra: str, cmq: bool = True) -> Emulator:
    """``asrd emulator`` through the harness, accepting this suite's keys (one with a token);
    later ``extra`` flags win, so ``--pulsar-url`` may replace the unreachable default."""
    # The SDK sends QueueId only when given one; these tests use the bucket's default queue.
    emu = support.start_emulator(
        data_dir, NO_BROKER, "--queue-id-optional", *extra, cmq=cmq, keys=KEYS
    )
    return Emulator(emu.proc, emu.endpoint, emu.data_dir, emu.cmq_endpoint)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """Shared emulator: jobs finish 0.3 s after creation; it declares no CMQ queue."""
    emu = start_emulator(tmp_path_factory.mktemp("emu"), "--job-delay", "0.3")
    yield emu
    assert emu.stop() == 0


@pytest.fixture
def make_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Emulator]]:
    """Private emulators with extra flags (CMQ declarations, faults), stopped after the test;
    each serves the CMQ API too (``emu.cmq()`` is an SDK account on it)."""
    started: list[Emulator] = []

    def make(*extra: str) -> Emulator:
        emu = start_emulator(tmp_path_factory.mktemp("emu"), *extra)
        started.append(emu)
        return emu

    yield make
    for emu in started:
        assert emu.stop() == 0


@pytest.fixture
def client(emulator: Emulator) -> CosS3Client:
    return emulator.client()
