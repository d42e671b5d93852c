"""Emulator fixtures: the emulator runs as a subprocess (``python -m asrd.emulator``) and is
driven only through the official SDKs (COS, CMQ) or raw HTTP for malformed requests.

No fixture here needs a broker: TDMQ callbacks go into the emulator's own CMQ queues, and the
emulators are pointed at a Pulsar address where nothing listens to prove it. Only the legacy
``--tdmq-to-pulsar`` test asks for the ``broker`` fixture itself."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import requests
from qcloud_cos import CosConfig, CosS3Client

from .helpers import REGION, SECRET_ID, SECRET_KEY, TOKEN, TOKEN_ID, TOKEN_KEY, cmq_account

NO_BROKER = "pulsar://127.0.0.1:9"  # discard port: a Pulsar client would fail here


@dataclass
class Emulator:
    proc: subprocess.Popen[str]
    port: int
    data_dir: Path
    cmq_port: int | None = None
    clients: list[CosS3Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def cmq_url(self) -> str:
        """The CMQ endpoint, as an operator copies it from the console (``http://host:port``)."""
        assert self.cmq_port is not None, "started without --cmq-listen"
        return f"http://127.0.0.1:{self.cmq_port}"

    def cmq(self, secret_id: str = SECRET_ID, secret_key: str = SECRET_KEY) -> Any:
        """An official CMQ SDK ``Account`` on this emulator's CMQ endpoint."""
        return cmq_account(self.cmq_url, secret_id, secret_key)

    def cmq_state(self) -> dict[str, Any]:
        return dict(requests.get(f"{self.url}/-/cmq", timeout=5).json())

    def stats(self) -> dict[str, int]:
        return dict(self.state()["stats"])

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
        r = requests.put(f"{self.url}/-/faults", data=json.dumps(settings), timeout=5)
        r.raise_for_status()
        return dict(r.json())

    def state(self) -> dict[str, Any]:
        return dict(requests.get(f"{self.url}/-/faults", timeout=5).json())


def start_emulator(data_dir: Path, *extra: str, cmq: bool = True) -> Emulator:
    """Start ``python -m asrd.emulator``; with ``cmq`` (default) also its CMQ endpoint."""
    cmd = [
        sys.executable,
        "-m",
        "asrd.emulator",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        str(data_dir),
        "--key",
        f"{SECRET_ID}:{SECRET_KEY}",
        "--key",
        f"{TOKEN_ID}:{TOKEN_KEY}:{TOKEN}",
        *(["--cmq-listen", "127.0.0.1:0"] if cmq else []),
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("asrd emulator listening on http://"):
        proc.kill()
        raise RuntimeError(f"emulator did not start: {line!r}")
    port = int(line.rsplit(":", 1)[1])
    cmq_port = None
    if cmq:
        line = proc.stdout.readline()
        if not line.startswith("asrd emulator CMQ listening on http://"):
            proc.kill()
            raise RuntimeError(f"emulator CMQ endpoint did not start: {line!r}")
        cmq_port = int(line.rsplit(":", 1)[1])
    return Emulator(proc, port, data_dir, cmq_port)


def stop_emulator(emu: Emulator) -> int:
    emu.proc.terminate()
    try:
        return emu.proc.wait(timeout=20)
    finally:
        if emu.proc.poll() is None:
            emu.proc.kill()


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """Shared emulator: jobs finish 0.3 s after creation; it declares no CMQ queue."""
    emu = start_emulator(
        tmp_path_factory.mktemp("emu"), "--pulsar-url", NO_BROKER, "--job-delay", "0.3"
    )
    yield emu
    assert stop_emulator(emu) == 0


@pytest.fixture
def make_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Emulator]]:
    """Private emulators with extra flags (CMQ declarations, faults), stopped after the test;
    each serves the CMQ API too (``emu.cmq()`` is an SDK account on it)."""
    started: list[Emulator] = []

    def make(*extra: str) -> Emulator:
        emu = start_emulator(tmp_path_factory.mktemp("emu"), "--pulsar-url", NO_BROKER, *extra)
        started.append(emu)
        return emu

    yield make
    for emu in started:
        assert stop_emulator(emu) == 0


@pytest.fixture
def client(emulator: Emulator) -> CosS3Client:
    return emulator.client()
