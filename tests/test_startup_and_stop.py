"""What deployments rely on at the edges of a run: the ledger's place, the result file mode,
directories checked writable at start (exit 78), and SIGTERM / SIGINT honoured within 2 s
whatever the daemon is blocked on."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from asrd import config
from asrd.config import ConfigError
from asrd.result import normalise
from asrd.sinks.file import FileSink

from .conftest import Broker
from .support import (
    EXAMPLE,
    asrd,
    free_port,
    readyz,
    start_daemon,
    start_emulator,
    wait_for,
    write_config,
)


def _without_ledger(tmp_path: Path) -> Path:
    text = EXAMPLE.read_text()
    start = text.index("\n[ledger]")
    end = text.index("\n[", start + 1)  # the next section
    path = tmp_path / "asrd.toml"
    path.write_text(text[:start] + text[end:])
    return path


def test_default_ledger_is_absolute_or_in_the_state_directory(
    tmp_path: Path, creds: dict[str, str]
) -> None:
    path = _without_ledger(tmp_path)
    assert config.load(path, creds).ledger.path == Path("/var/lib/asrd/ledger.db")
    state = {**creds, "STATE_DIRECTORY": "/var/lib/asrd-test:/var/lib/other"}
    assert config.load(path, state).ledger.path == Path("/var/lib/asrd-test/ledger.db")
    relative = {**state, "ASRD_LEDGER__URL": "sqlite:///sub/l.db"}
    assert config.load(path, relative).ledger.path == Path("/var/lib/asrd-test/sub/l.db")
    with pytest.raises(ConfigError) as err:
        config.load(path, {**creds, "ASRD_LEDGER__URL": "sqlite:///var/lib/asrd/ledger.db"})
    assert str(err.value).startswith(f"config error: {path}: ledger.url: needs an absolute path")


def test_file_mode_is_configurable_and_applied(tmp_path: Path, creds: dict[str, str]) -> None:
    assert config.load(EXAMPLE, creds).sinks[0].file_mode == 0o644  # type: ignore[union-attr]
    env = {**creds, "ASRD_SINKS__0__FILE_MODE": "0640", "ASRD_SINKS__0__DIR": str(tmp_path)}
    sink_settings = config.load(EXAMPLE, env).sinks[0]
    assert sink_settings.file_mode == 0o640  # type: ignore[union-attr]
    with pytest.raises(ConfigError) as err:
        config.load(EXAMPLE, {**creds, "ASRD_SINKS__0__FILE_MODE": "0x1ff"})
    assert "sinks.0.file_mode: '0x1ff' is not an octal mode" in str(err.value)

    sink = FileSink(sink_settings)  # type: ignore[arg-type]
    detail = {
        "JobId": "s" + "a" * 32,
        "State": "Success",
        "Code": "Success",
        "Tag": "SpeechRecognition",
        "Input": {"Object": "a.mp3"},
        "Operation": {"SpeechRecognitionResult": {"Result": "[0:0.000,0:1.000] hi"}},
    }
    sink.deliver(normalise(detail))
    written = tmp_path / f"{detail['JobId']}.json"
    assert written.stat().st_mode & 0o777 == 0o640


def test_unwritable_sink_dir_exits_78_naming_key_and_path(tmp_path: Path, broker: Broker) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:9", broker.service_url)
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")  # even root cannot make a directory below a file
    env = {"ASRD_SINKS__0__DIR": str(blocker / "results")}
    done = asrd("run", "--config", str(cfg.path), env=env)
    assert done.returncode == 78
    assert done.stderr.strip().splitlines()[-1] == (
        f"config error: sinks.0.dir: cannot write to {blocker / 'results'}: Not a directory"
    )
    env = {"ASRD_LEDGER__URL": f"sqlite:///{blocker}/ledger.db"}
    done = asrd("reconcile", "--config", str(cfg.path), env=env)
    assert done.returncode == 78
    assert f"config error: ledger.url: cannot write to {blocker}" in done.stderr


def _stop_time(proc: subprocess.Popen[bytes], signum: int) -> tuple[int, float]:
    started = time.monotonic()
    proc.send_signal(signum)
    code = proc.wait(timeout=40)
    return code, time.monotonic() - started


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_honoured_while_subscribing_to_an_unreachable_broker(
    tmp_path: Path, broker: Broker, signum: int
) -> None:
    port = free_port()
    cfg = write_config(tmp_path, "http://127.0.0.1:9", broker.service_url)
    cfg.env["ASRD_PULSAR__SERVICE_URL"] = f"pulsar://127.0.0.1:{free_port()}"  # nobody there
    cfg.env["ASRD_HTTP__LISTEN"] = f"127.0.0.1:{port}"
    log = tmp_path / "daemon.log"
    daemon = start_daemon(cfg, log, wait_subscribed=False)
    wait_for(lambda: readyz(port) == 503, 30, "the API (not ready: no broker)")
    time.sleep(1.5)  # inside the client's connect/subscribe call, which lasts up to 30 s
    code, took = _stop_time(daemon, signum)
    assert code == 0 and took < 2.0, (code, took, log.read_text()[-2000:])


def test_sigterm_when_idle_on_a_live_broker(tmp_path: Path, broker: Broker) -> None:
    emu = start_emulator(tmp_path / "emulator", broker.service_url)
    try:
        cfg = write_config(tmp_path, emu, broker.service_url)
        daemon = start_daemon(cfg, tmp_path / "daemon.log")
        code, took = _stop_time(daemon, signal.SIGTERM)
        assert code == 0 and took < 2.0, (code, took)
    finally:
        emu.stop()
