"""systemd/asrd.service under a real systemd 252 (Debian bookworm booted by systemd-nspawn),
installed as docs/operations.md says; the broker and the CI emulator run on the host."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from asrd import config
from asrd.ci import CiClient

from ..conftest import Broker
from ..support import (
    SECRET_ID,
    SECRET_KEY,
    DaemonConfig,
    Emulator,
    free_port,
    start_emulator,
    wait_for,
    write_config,
)
from .build import Machine
from .conftest import doc_block

UNIT = "asrd.service"


@dataclass
class Installed:
    machine: Machine
    cfg: DaemonConfig
    port: int
    # ASRD_* overrides in /etc/asrd/asrd.env: the test config's host paths become the unit's.
    env: dict[str, str]

    def write_config(self, text: str | None = None) -> None:
        staged = self.cfg.path.parent / "staged.toml"
        staged.write_text(self.cfg.path.read_text() if text is None else text)
        env = "".join(f"{k}={v}\n" for k, v in self.env.items())
        (self.cfg.path.parent / "asrd.env").write_text(env)
        src = self.cfg.path.parent
        self.machine.sh(
            f"install -m 0640 -g asrd {src}/staged.toml /etc/asrd/asrd.toml\n"
            f"install -m 0644 {src}/asrd.env /etc/asrd/asrd.env\n"
            f"printf '%s' {shlex.quote(SECRET_ID)} > /etc/asrd/credentials/secret_id\n"
            f"printf '%s' {shlex.quote(SECRET_KEY)} > /etc/asrd/credentials/secret_key\n"
            "chmod 0600 /etc/asrd/credentials/secret_id /etc/asrd/credentials/secret_key"
        )

    def show(self, *props: str) -> dict[str, str]:
        return self.machine.show(UNIT, *props)

    def reset(self) -> None:
        self.machine.sh(f"systemctl stop {UNIT}; systemctl reset-failed {UNIT} || true")


@pytest.fixture(scope="module")
def emulator(shared_dir: Path, broker: Broker) -> Iterator[Emulator]:
    emu = start_emulator(shared_dir / "emulator", broker.service_url, "--job-delay", "0.3")
    yield emu
    emu.stop()


@pytest.fixture(scope="module")
def installed(machine: Machine, shared_dir: Path, broker: Broker, emulator: Emulator) -> Installed:
    tmp = shared_dir / "unit"
    tmp.mkdir()
    cfg = write_config(tmp, emulator, broker.service_url)
    port = free_port()
    env = {
        "ASRD_CI__SECRET_KEY_FILE": "secret_key",  # a credential: $CREDENTIALS_DIRECTORY
        "ASRD_LEDGER__URL": "sqlite:///ledger.db",  # relative: in $STATE_DIRECTORY
        "ASRD_SINKS__0__DIR": "/var/lib/asrd/results",
        "ASRD_HTTP__LISTEN": f"127.0.0.1:{port}",
    }
    inst = Installed(machine, cfg, port, env)
    inst.write_config()
    return inst


def test_unit_active_after_ready_delivers_and_stops_cleanly(installed: Installed) -> None:
    m = installed.machine
    started = m.sh(doc_block("systemd-start"), timeout=120).stdout
    assert "ActiveState=active" in started and "SubState=running" in started, started
    try:
        ci = CiClient(config.load(installed.cfg.path).ci)
        ci.put_object("media/unit.mp3", b"not audio")
        ci.put_object("media/unit.mp3.transcript.txt", b"systemd delivered it.")
        base = f"http://127.0.0.1:{installed.port}"
        assert requests.get(f"{base}/readyz", timeout=5).status_code == 200
        created = requests.post(f"{base}/v1/jobs", json={"input": "media/unit.mp3"}, timeout=10)
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]

        result = m.path(f"/var/lib/asrd/results/{job_id}.json")
        wait_for(result.exists, 60, "the job's result inside the container")
        record = json.loads(result.read_text())
        assert record["job_id"] == job_id and record["transcript"] == "systemd delivered it."
        uid = int(m.sh("id -u asrd").stdout)
        st = result.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (uid, 0o644)
        # The default ledger is in the unit's state directory, not the working directory.
        assert m.path("/var/lib/asrd/ledger.db").exists()

        # One-off commands with the unit's user, credentials and environment (docs/operations.md).
        oneoff = m.sh(doc_block("systemd-oneoff"), check=False, timeout=120)
        assert oneoff.returncode == 0, oneoff.stderr
        assert "message(s) on" in oneoff.stdout
    finally:
        m.sh(f"systemctl stop {UNIT}", timeout=90)
    after = installed.show("ActiveState", "Result", "ExecMainStatus", "NRestarts")
    assert after == {
        "ActiveState": "inactive",
        "Result": "success",
        "ExecMainStatus": "0",
        "NRestarts": "0",
    }


@pytest.mark.parametrize("broken", ["config", "credential"])
def test_configuration_error_fails_without_restart_loop(installed: Installed, broken: str) -> None:
    m = installed.machine
    if broken == "config":
        installed.write_config('[ci]\nregion = "nowhere"\n')
        expected = "78"
    else:
        installed.write_config()
        m.sh("rm /etc/asrd/credentials/secret_key")
        expected = "243"  # systemd's 243/CREDENTIALS: LoadCredential= file missing
    try:
        assert m.sh(f"systemctl start {UNIT}", check=False, timeout=60).returncode != 0
        props = ("ActiveState", "Result", "ExecMainStatus", "NRestarts")
        first = installed.show(*props)
        assert first == {
            "ActiveState": "failed",
            "Result": "exit-code",
            "ExecMainStatus": expected,
            "NRestarts": "0",
        }
        time.sleep(7)  # longer than RestartSec=5: a restart would have happened by now
        assert installed.show(*props) == first
        if broken == "config":
            journal = m.sh(f"journalctl -u {UNIT} -o cat --no-pager -n 20").stdout
            assert "config error" in journal
    finally:
        installed.reset()
        installed.write_config()


def test_watchdog_kills_a_stopped_process(installed: Installed) -> None:
    m = installed.machine
    dropin = "/etc/systemd/system/asrd.service.d/watchdog.conf"
    m.sh(
        f"mkdir -p {dropin.rsplit('/', 1)[0]}\n"
        f"printf '[Service]\\nWatchdogSec=3\\n' > {dropin}\n"
        "systemctl daemon-reload\n"
        f"systemctl start {UNIT}"
    )
    try:
        pid = installed.show("MainPID")["MainPID"]
        assert pid != "0"
        m.sh(f"kill -STOP {pid}")
        wait_for(
            lambda: installed.show("Result")["Result"] == "watchdog",
            30,
            "systemd to see the watchdog expire",
            interval=0.2,
        )
    finally:
        m.sh(f"rm -f {dropin}\nsystemctl daemon-reload")
        installed.reset()
