"""Processes the integration tests run for real: the emulator, the daemon, and their config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
ASRD = [sys.executable, "-m", "asrd.cli"]
SECRET_ID = "AKIDasrdtest0000000000000000000000"
SECRET_KEY = "asrdtestsecretkey000000000000000"
BUCKET = "asrd-test-1250000000"
REGION = "ap-guangzhou"


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Emulator:
    proc: subprocess.Popen[str]
    endpoint: str
    data_dir: Path

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)


def start_emulator(data_dir: Path, pulsar_url: str, *extra: str) -> Emulator:
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "emulator.log").open("w")
    proc = subprocess.Popen(
        [
            *ASRD,
            "emulator",
            "--listen",
            "127.0.0.1:0",
            "--pulsar-url",
            pulsar_url,
            "--data-dir",
            str(data_dir),
            "--key",
            f"{SECRET_ID}:{SECRET_KEY}",
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    if "listening on" not in line:
        proc.kill()
        raise AssertionError(f"emulator did not start: {line!r}; see {data_dir / 'emulator.log'}")
    return Emulator(proc, line.rsplit(" ", 1)[1], data_dir)


@dataclass
class DaemonConfig:
    path: Path
    topic: str
    subscription: str
    results: Path
    mq_name: str
    env: dict[str, str] = field(default_factory=dict)


def write_config(
    tmp: Path,
    endpoint: str,
    pulsar_url: str,
    callback_format: str = "JSON",
    extra_pulsar: str = "",
    extra_sinks: str = "",
) -> DaemonConfig:
    mq_name = f"asr-{uuid.uuid4().hex[:10]}"
    topic = f"persistent://public/default/{mq_name}"
    results = tmp / "results"
    path = tmp / "asrd.toml"
    path.write_text(
        f"""
[ci]
region = "{REGION}"
bucket = "{BUCKET}"
secret_id = "{SECRET_ID}"
secret_key_file = "{tmp / "secret_key"}"
endpoint = "{endpoint}"

[ci.callback]
format = "{callback_format}"
mq_name = "{mq_name}"

[pulsar]
service_url = "{pulsar_url}"
topic = "{topic}"
subscription = "asrd"
nack_delay_ms = 1000
{extra_pulsar}

[ledger]
url = "sqlite:///{tmp / "ledger.db"}"

[log]
level = "info"

[[sinks]]
name = "files"
type = "file"
dir = "{results}"
formats = ["json", "txt"]
{extra_sinks}
"""
    )
    (tmp / "secret_key").write_text(SECRET_KEY + "\n")
    return DaemonConfig(path, topic, "asrd", results, mq_name)


def start_daemon(cfg: DaemonConfig, log_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, **cfg.env}
    return subprocess.Popen(
        [*ASRD, "run", "--config", str(cfg.path)],
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("ab"),
        env=env,
    )


def asrd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ASRD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )
