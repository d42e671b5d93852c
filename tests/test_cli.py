"""The command line as a user meets it: help written for them, standard output holding only a
command's data (log lines, the Pulsar client's own included, on standard error), and each
command asking only for the configuration it uses."""

from __future__ import annotations

import contextlib
import io
import re
import subprocess
from pathlib import Path

import pytest

from asrd import cli, config
from asrd.broker import REASON
from asrd.sinks import build_routes

from .conftest import Broker
from .support import EMULATOR, Emulator, asrd, quiet_client, start_emulator, write_config

NO_BROKER = "pulsar://127.0.0.1:9"  # for commands that never reach the broker


def _without_sinks(path: Path) -> None:
    text = path.read_text()
    path.write_text(text[: text.index("[[sinks]]")])


def _without(path: Path, section: str, until: str) -> None:
    """Drop a section of the config support.write_config writes (up to the next one)."""
    text = path.read_text()
    start = text.index(f"[{section}]\n")
    path.write_text(text[:start] + text[text.index(f"[{until}]", start) :])


def test_help_is_written_for_users() -> None:
    out = asrd("--help")
    assert out.returncode == 0 and out.stderr == ""
    assert out.stdout.startswith("usage: asrd")
    assert "speech-recognition jobs to Tencent Cloud CI" in out.stdout
    assert "78 configuration error" in out.stdout
    assert "one function per subcommand" not in out.stdout  # the module's docstring


def test_asrd_emulator_is_the_emulator() -> None:
    via_asrd = asrd("emulator", "--help")
    direct = subprocess.run([*EMULATOR, "--help"], capture_output=True, text=True, timeout=60)
    assert via_asrd.returncode == direct.returncode == 0
    assert "--cmq-listen" in via_asrd.stdout
    assert via_asrd.stdout.split("\n", 1)[1] == direct.stdout.split("\n", 1)[1]  # past `usage:`


def test_submit_needs_neither_sinks_nor_a_broker(tmp_path: Path) -> None:
    emulator = start_emulator(tmp_path / "emulator", NO_BROKER)
    try:
        cfg = write_config(tmp_path / "daemon", emulator, NO_BROKER)
        _without_sinks(cfg.path)
        _without(cfg.path, "pulsar", until="ledger")
        submitted = asrd("submit", "--config", str(cfg.path), "--input", "media/a.mp3")
        assert submitted.returncode == 0, submitted.stderr
        assert re.fullmatch(r"s[0-9a-f]{32}\n", submitted.stdout)
        jobs = asrd("jobs", "--config", str(cfg.path))
        assert jobs.returncode == 0, jobs.stderr
    finally:
        assert emulator.stop() == 0
    settings = config.load(cfg.path)
    with pytest.raises(config.ConfigError, match=r"^config error: sinks: no \[\[sinks\]\] table"):
        build_routes(settings)
    with pytest.raises(
        config.ConfigError, match=rf"^config error: {cfg.path}: pulsar: no \[pulsar\]"
    ):
        settings.pulsar  # noqa: B018 - reading it is the check


def test_reconcile_and_list_need_no_broker_section(tmp_path: Path) -> None:
    """reconcile reads nothing from the broker: without [pulsar] it delivers with the
    defaults; list and get read only [ci]."""
    emulator = start_emulator(tmp_path / "emulator", NO_BROKER)
    try:
        cfg = write_config(tmp_path / "daemon", emulator, NO_BROKER, intake=False)
        _without(cfg.path, "pulsar", until="ledger")
        job_id = asrd("submit", "--config", str(cfg.path), "--input", "media/a.mp3").stdout.strip()
        reconciled = asrd("reconcile", "--config", str(cfg.path), "--lookback", "600")
        listed = asrd("list", "--config", str(cfg.path))
    finally:
        assert emulator.stop() == 0
    assert reconciled.returncode == 0, reconciled.stderr
    assert reconciled.stdout.startswith("checked "), reconciled.stdout
    assert listed.returncode == 0, listed.stderr
    assert job_id in listed.stdout


def test_ledger_commands_need_no_section_at_all(tmp_path: Path) -> None:
    """usage and jobs read the ledger alone; a config without [ci], [pulsar] or [[sinks]]
    (and with an intake whose keys would come from [ci]) is enough."""
    cfg = tmp_path / "asrd.toml"
    cfg.write_text(
        f'[ledger]\nurl = "sqlite:///{tmp_path / "ledger.db"}"\n'
        '[intake.cmq]\nendpoint = "http://127.0.0.1:1"\nqueue = "q"\nregion = "gz"\n'
    )
    for command in (["usage"], ["jobs", "--json"]):
        out = asrd(*command, "--config", str(cfg))
        assert out.returncode == 0, (command, out.stderr)
    assert asrd("usage", "--config", str(cfg)).stdout.startswith("day ")
    refused = asrd("get", "--config", str(cfg), "s" + "0" * 32)
    assert refused.returncode == 78
    assert refused.stderr == f"config error: {cfg}: ci: no [ci] section; this needs one\n"


def test_each_command_says_what_it_does_and_which_sections_it_needs() -> None:
    commands = [
        ["run"], ["intake"], ["submit"], ["jobs"], ["get"], ["list"], ["reconcile"], ["check"],
        ["dlq", "list"], ["dlq", "replay"], ["usage"],
    ]  # fmt: skip
    helps = {}
    for command in commands:  # in this process: the parser is the one `asrd` runs
        out = io.StringIO()
        with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as ended:
            cli.main([*command, "--help"])
        assert ended.value.code == 0
        helps[" ".join(command)] = out.getvalue()
        about = out.getvalue().split("\n\n")[1]
        assert re.search(r"^Needs .+\.$", about, re.M), (command, about)
    assert "Needs [pulsar]; no [ci]." in helps["dlq list"]
    assert "no [pulsar] and no [[sinks]]" in helps["submit"]
    # The installed command prints the same.
    assert asrd("submit", "--help").stdout == helps["submit"]


def test_run_and_check_without_sinks_exit_78(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:1", NO_BROKER, intake=False)
    _without_sinks(cfg.path)
    for command in ("run", "check"):
        out = asrd(command, "--config", str(cfg.path))
        assert out.returncode == 78, out.stderr
        assert out.stderr.strip().endswith(
            "no [[sinks]] table; results are delivered to at least one sink"
        )


def test_check_names_a_missing_section(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:1", NO_BROKER, intake=False)
    _without(cfg.path, "pulsar", until="ledger")
    out = asrd("check", "--config", str(cfg.path))
    assert out.returncode == 78 and out.stdout == ""
    assert out.stderr == f"config error: {cfg.path}: pulsar: no [pulsar] section; this needs one\n"


@pytest.mark.slow
def test_dlq_list_at_debug_prints_only_data_on_stdout(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg = write_config(tmp_path, emulator, broker.service_url)
    _without(cfg.path, "ci", until="ci.callback")  # dlq reads no [ci]
    _without(cfg.path, "ci.callback", until="pulsar")
    client = quiet_client(broker.service_url)
    try:
        producer = client.create_producer(f"{cfg.topic}-asrd-DLQ")
        for reason in ("gave up after 2 attempts", "not a CI callback"):
            producer.send(b"{}", properties={REASON: reason})
        producer.close()
    finally:
        client.close()
    out = asrd("dlq", "list", "--config", str(cfg.path), env={"ASRD_LOG__LEVEL": "debug"})
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"2 message(s) on {cfg.topic}-asrd-DLQ"
    assert len(lines) == 3
    for line, reason in zip(
        lines[1:], ("gave up after 2 attempts", "not a CI callback"), strict=True
    ):
        assert re.fullmatch(rf"\S+\t-\t\S+\tattempts=\treplays=0\t{reason}", line), line
    # The client's own lines at debug are there, on standard error.
    assert "INFO" in out.stderr and "ConnectionPool" in out.stderr
