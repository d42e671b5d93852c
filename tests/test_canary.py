"""``asrd check --canary`` against the emulator and a running daemon: one job through every stage
of the production path, a table of stages, and the first missing stage named when it fails."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .conftest import Broker
from .support import (
    DaemonConfig,
    Emulator,
    asrd,
    free_port,
    ledger_rows,
    result_ids,
    start_daemon,
    stop_daemon,
    write_config,
)

STAGES = (
    "created",
    "CI finished",
    "CMQ received",
    "on the Pulsar topic",
    "read back",
    "through the pipeline",
)


def canary(cfg: DaemonConfig, **env: str) -> tuple[int, str, str]:
    out = asrd("check", "--config", str(cfg.path), "--canary", env={**cfg.env, **env})
    return out.returncode, out.stdout, out.stderr


def job_of(stdout: str) -> str:
    m = re.search(r"job (s[0-9a-f]{32})", stdout)
    assert m is not None, stdout
    return m.group(1)


def test_the_canary_goes_through_every_stage_and_reaches_no_sink(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg = write_config(tmp_path, emulator, broker.service_url)
    daemon = start_daemon(cfg, cfg.log)
    try:
        code, out, err = canary(cfg)
        assert code == 0, out + err
        for stage in STAGES:
            line = next(ln for ln in out.splitlines() if ln.startswith(stage))
            assert re.search(r"\d+\.\ds", line), line  # a time for every stage
        assert f"queue {cfg.mq_name}" in out
        job_id = job_of(out)
        shown = asrd("jobs", "--config", str(cfg.path), "show", job_id)
        assert shown.returncode == 0, shown.stderr
        ledger = json.loads(shown.stdout)["ledger"]
        assert ledger["canary"] is True and ledger["status"] == "settled"
    finally:
        assert stop_daemon(daemon) == 0
    assert result_ids(cfg) == set()  # the file sink never saw it
    assert (job_id, "files") not in ledger_rows(cfg)
    # The bundled audio was uploaded under [canary] prefix.
    assert "asrd-canary/asrd-canary.wav" in out


def test_without_a_daemon_the_canary_names_the_first_missing_stage(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg = write_config(tmp_path, emulator, broker.service_url)
    code, out, _ = canary(cfg, ASRD_CANARY__TIMEOUT_S="4")
    assert code == 1
    assert "stage 'CMQ received' did not happen within 4s" in out
    assert "the intake (asrd run or asrd intake with [intake.cmq]) is not running" in out
    line = next(ln for ln in out.splitlines() if ln.startswith("CI finished"))
    assert "Success" in line  # CI did its part


def test_a_job_the_reconciler_delivered_is_not_a_passing_canary(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg = write_config(tmp_path, emulator, broker.service_url)
    cfg.env.update(
        {
            "ASRD_RECONCILE__INTERVAL_S": "1",
            "ASRD_RECONCILE__GRACE_S": "0",
            "ASRD_RECONCILE__LOOKBACK_S": "600",
        }
    )
    emulator.set_faults(callback_drop_rate=1.0)  # CI's notification never comes
    daemon = start_daemon(cfg, cfg.log)
    try:
        code, out, err = canary(cfg, ASRD_CANARY__TIMEOUT_S="20")
    finally:
        assert stop_daemon(daemon) == 0
    assert code == 1, out + err
    assert "delivered by the reconciler or the deadline sweep, not by its callback" in out
    assert "stage 'CMQ received' did not happen" in out


def test_a_refused_create_is_the_first_missing_stage(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    cfg = write_config(tmp_path, emulator, broker.service_url)
    code, out, _ = canary(
        cfg,
        ASRD_CI__QUEUE_ID="p" + "1" * 32,
        ASRD_CANARY__OBJECT="media/already-there.mp3",
        ASRD_CI__SECRET_ID="AKIDnobodyknows",
    )
    assert code == 1
    assert "stage 'created' did not happen: CI refused the job" in out
    assert "AKIDnobodyknows" not in out


def test_the_canary_follows_a_url_callback(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    token = "canary-url-token-0123456789"
    port = free_port()
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        intake=False,
        extra=f'[http]\nlisten = "127.0.0.1:{port}"\n[intake.url]\ntoken = "{token}"\n',
    )
    cfg.env.update(
        {
            "ASRD_CI__CALLBACK__TYPE": "url",
            "ASRD_CI__CALLBACK__URL": f"http://127.0.0.1:{port}/v1/callbacks/{token}",
        }
    )
    daemon = start_daemon(cfg, cfg.log)
    try:
        code, out, err = canary(cfg)
    finally:
        assert stop_daemon(daemon) == 0
    assert code == 0, out + err
    line = next(ln for ln in out.splitlines() if ln.startswith("callback received"))
    assert "by url" in line
    assert token not in out
    assert result_ids(cfg) == set()
