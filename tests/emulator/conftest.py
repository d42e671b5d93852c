"""Emulator fixtures: the emulator runs as a subprocess (``python -m asrd.emulator``) and is
driven only through the official SDK (or raw HTTP for malformed requests)."""

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

from .helpers import REGION, SECRET_ID, SECRET_KEY, TOKEN, TOKEN_ID, TOKEN_KEY


@dataclass
class Emulator:
    proc: subprocess.Popen[str]
    port: int
    data_dir: Path
    clients: list[CosS3Client] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

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


def start_emulator(data_dir: Path, *extra: str) -> Emulator:
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
        *extra,
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("asrd emulator listening on http://"):
        proc.kill()
        raise RuntimeError(f"emulator did not start: {line!r}")
    port = int(line.rsplit(":", 1)[1])
    return Emulator(proc, port, data_dir)


def stop_emulator(emu: Emulator) -> int:
    emu.proc.terminate()
    try:
        return emu.proc.wait(timeout=20)
    finally:
        if emu.proc.poll() is None:
            emu.proc.kill()


@pytest.fixture(scope="session")
def emulator(broker: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """Shared emulator: jobs finish 0.3 s after creation, callbacks go to the test broker."""
    emu = start_emulator(
        tmp_path_factory.mktemp("emu"), "--pulsar-url", broker.service_url, "--job-delay", "0.3"
    )
    yield emu
    assert stop_emulator(emu) == 0


@pytest.fixture
def make_emulator(
    broker: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Emulator]]:
    """Private emulators with extra flags (fault tests), stopped after the test."""
    started: list[Emulator] = []

    def make(*extra: str) -> Emulator:
        emu = start_emulator(
            tmp_path_factory.mktemp("emu"), "--pulsar-url", broker.service_url, *extra
        )
        started.append(emu)
        return emu

    yield make
    for emu in started:
        assert stop_emulator(emu) == 0


@pytest.fixture
def client(emulator: Emulator) -> CosS3Client:
    return emulator.client()
