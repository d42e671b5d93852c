"""The broker reached as TDMQ for Pulsar is: TLS with a CA of its own and a role token, on the
real broker (scripts/pulsar start --tls --auth). Delivery end to end; a wrong CA, host name or
token, or none, named in one line by ``asrd check --connect`` and by start-up (exit 78); a
token that expires under a running daemon pauses it (nothing dead-lettered) until a valid one
is written to ``token_file``."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path
from typing import Any

import pulsar
import pytest
import requests

from .conftest import ROOT, SecureBroker
from .support import (
    DaemonConfig,
    Emulator,
    asrd,
    create_jobs,
    free_port,
    ledger_rows,
    readyz,
    result_ids,
    start_daemon,
    stop_daemon,
    wait_for,
    write_config,
)

EX_CONFIG = 78


def secure_client(sb: SecureBroker, token: str) -> Any:
    logger = logging.getLogger("tests.pulsar")
    logger.setLevel(logging.WARNING)
    return pulsar.Client(
        sb.service_url,
        authentication=pulsar.AuthenticationToken(token),
        tls_trust_certs_file_path=str(sb.ca),
        tls_validate_hostname=True,
        logger=logger,
    )


def read_all(sb: SecureBroker, topic: str) -> list[Any]:
    client = secure_client(sb, sb.admin_token)
    try:
        reader = client.create_reader(topic, pulsar.MessageId.earliest)
        found = []
        while True:
            try:
                found.append(reader.read_next(timeout_millis=1500))
            except pulsar.Timeout:
                return found
    finally:
        client.close()


def write_token(path: Path, token: str) -> None:
    """As a rotation would: a new file renamed over the old one."""
    tmp = path.with_suffix(".new")
    tmp.write_text(token + "\n")
    os.replace(tmp, path)


def secure_config(
    tmp: Path,
    emulator: Emulator,
    sb: SecureBroker,
    token: str | None,
    ca: Path | None = None,
    service_url: str = "",
    extra_sinks: str = "",
    extra: str = "",
) -> DaemonConfig:
    tmp.mkdir(parents=True, exist_ok=True)
    lines = [f'tls_trust_certs_file = "{ca or sb.ca}"']
    if token is not None:
        write_token(tmp / "pulsar_token", token)
        lines.append(f'token_file = "{tmp / "pulsar_token"}"')
    return write_config(
        tmp,
        emulator,
        service_url or sb.service_url,
        extra_pulsar="\n".join(lines),
        extra_sinks=extra_sinks,
        extra=extra,
    )


@pytest.mark.parametrize("address", ["pulsar+ssl", "https lookup"])
def test_delivery_through_tls_with_a_role_token(
    tmp_path: Path, secure_broker: SecureBroker, emulator: Emulator, address: str
) -> None:
    sb = secure_broker
    url = sb.service_url if address == "pulsar+ssl" else sb.lookup_url
    records = f"persistent://public/default/records-{tmp_path.name[-20:]}"
    sink = f'\n[[sinks]]\nname = "bus"\ntype = "pulsar"\ntopic = "{records}"\n'
    cfg = secure_config(tmp_path, emulator, sb, sb.client_token, service_url=url, extra_sinks=sink)
    check = asrd("check", "--connect", "--config", str(cfg.path))
    assert check.returncode == 0, check.stderr
    assert "Pulsar reachable" in check.stdout

    daemon = start_daemon(cfg, cfg.log)
    try:
        jobs = create_jobs(cfg, 5)
        wait_for(lambda: result_ids(cfg) == set(jobs), 90, "every job through TLS")
    finally:
        assert stop_daemon(daemon) == 0
    # The Pulsar sink went through the same builder: TLS and the role's token.
    on_bus = {json.loads(m.data())["job_id"] for m in read_all(sb, records)}
    assert on_bus == set(jobs)
    assert sorted(ledger_rows(cfg)) == sorted((j, s) for j in jobs for s in ("bus", "files"))
    assert read_all(sb, f"{cfg.topic}-asrd-DLQ") == []
    listed = asrd("dlq", "list", "--config", str(cfg.path))
    assert listed.returncode == 0 and listed.stdout.startswith("0 message(s)"), listed.stderr
    assert sb.client_token not in cfg.log.read_text()


def other_ca(tmp: Path) -> Path:
    """A CA that did not sign the broker's certificate."""
    key, cert = tmp / "other.key", tmp / "other.pem"
    argv = ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    argv += ["-subj", "/CN=another CA", "-keyout", str(key), "-out", str(cert)]
    subprocess.run(argv, check=True, capture_output=True)
    return cert


def foreign_token(tmp: Path) -> str:
    """A token for the right role, signed by another key."""
    secret = tmp / "other.secret"
    secret.write_bytes(os.urandom(32))
    argv = [str(ROOT / "scripts" / "pulsar-token"), str(secret), "client"]
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize(
    "case", ["wrong CA", "wrong host name", "wrong token", "no token", "wrong token, https lookup"]
)
def test_check_and_start_up_name_the_cause(
    tmp_path: Path, secure_broker: SecureBroker, emulator: Emulator, case: str
) -> None:
    sb = secure_broker
    port = sb.service_url.rsplit(":", 1)[1]
    if case == "wrong CA":
        cfg = secure_config(tmp_path, emulator, sb, sb.client_token, ca=other_ca(tmp_path))
        expected = f"pulsar.tls_trust_certs_file: the broker's certificate at 127.0.0.1:{port} "
        expected += f"is not trusted by {tmp_path / 'other.pem'}"
    elif case == "wrong host name":
        # 0.0.0.0 reaches the loopback broker on Linux; its certificate names 127.0.0.1 and
        # localhost only.
        url = f"pulsar+ssl://0.0.0.0:{port}"
        cfg = secure_config(tmp_path, emulator, sb, sb.client_token, service_url=url)
        expected = f"pulsar.service_url: the broker's certificate at 0.0.0.0:{port} is not "
        expected += "valid for the name '0.0.0.0'"
    elif case == "wrong token":
        cfg = secure_config(tmp_path, emulator, sb, foreign_token(tmp_path))
        expected = "pulsar.token_file: the broker refused the token (AuthenticationError"
    elif case == "wrong token, https lookup":
        url = sb.lookup_url
        cfg = secure_config(tmp_path, emulator, sb, foreign_token(tmp_path), service_url=url)
        expected = "pulsar.token_file: the broker refused the token (HTTP 401"
    else:
        cfg = secure_config(tmp_path, emulator, sb, None)
        expected = "pulsar.token: the broker requires a token and none is configured"

    check = asrd("check", "--connect", "--config", str(cfg.path))
    assert check.returncode == EX_CONFIG, check.stderr
    named = [line for line in check.stderr.splitlines() if expected in line]
    assert len(named) == 1 and named[0].startswith(f"config error: {expected}"), check.stderr
    run = asrd("run", "--config", str(cfg.path))
    assert run.returncode == EX_CONFIG, run.stderr
    assert sum(expected in line for line in run.stderr.splitlines()) == 1, run.stderr
    for secret in (sb.client_token, sb.admin_token):
        assert secret not in check.stderr + check.stdout + run.stderr


def test_a_role_without_consume_permission_is_refused(
    tmp_path: Path, secure_broker: SecureBroker, emulator: Emulator
) -> None:
    sb = secure_broker
    granted = requests.post(
        f"{sb.admin_url}/admin/v2/namespaces/public/default/permissions/writer",
        json=["produce"],
        headers={"Authorization": f"Bearer {sb.admin_token}"},
        timeout=30,
    )
    assert granted.status_code == 204, granted.text
    writer = secure_config(tmp_path / "writer", emulator, sb, sb.mint("writer"))
    check = asrd("check", "--connect", "--config", str(writer.path))
    assert check.returncode == 1, check.stderr
    refused = [line for line in check.stderr.splitlines() if "Pulsar" in line]
    assert len(refused) == 2, check.stderr  # the topic and the retry-letter topic
    assert all("AuthorizationError" in line and "consume" in line for line in refused)

    nobody = secure_config(tmp_path / "nobody", emulator, sb, sb.mint("nobody"))
    check = asrd("check", "--connect", "--config", str(nobody.path))
    assert check.returncode == 1, check.stderr
    [line] = [line for line in check.stderr.splitlines() if "Pulsar" in line]
    assert "AuthorizationError" in line and nobody.topic in line, line


def test_an_expired_token_pauses_the_daemon_until_a_valid_one_is_written(
    tmp_path: Path, secure_broker: SecureBroker, emulator: Emulator
) -> None:
    sb = secure_broker
    http = free_port()
    cfg = secure_config(
        tmp_path,
        emulator,
        sb,
        sb.mint("client", expires_in_s=40),  # time enough to start under load
        extra=f'[http]\nlisten = "127.0.0.1:{http}"\n',
    )
    daemon = start_daemon(cfg, cfg.log)
    try:
        first = create_jobs(cfg, 3)
        wait_for(lambda: result_ids(cfg) == set(first), 60, "the first jobs")
        # The broker checks tokens on live connections every few seconds and drops this one.
        wait_for(lambda: readyz(http) == 503, 90, "the daemon to notice the expired token")
        later = create_jobs(cfg, 3)
        wait_for(lambda: emulator.callbacks_sent() >= 6, 60, "the later callbacks in CMQ")
        assert daemon.poll() is None
        assert result_ids(cfg) == set(first)  # waiting in CMQ: the intake cannot publish
        write_token(tmp_path / "pulsar_token", sb.client_token)
        wait_for(lambda: result_ids(cfg) == set(first + later), 120, "the later jobs")
        wait_for(lambda: readyz(http) == 200, 30, "ready again")
    finally:
        assert stop_daemon(daemon) == 0
    assert read_all(sb, f"{cfg.topic}-asrd-DLQ") == []
    assert sorted(ledger_rows(cfg)) == sorted((j, "files") for j in first + later)
    log = cfg.log.read_text()
    assert "pulsar token file changed" in log
    assert sb.client_token not in log


def test_allow_insecure_accepts_any_certificate_and_says_so(
    tmp_path: Path, secure_broker: SecureBroker, emulator: Emulator
) -> None:
    sb = secure_broker
    cfg = secure_config(tmp_path, emulator, sb, sb.client_token, ca=other_ca(tmp_path))
    env = {"ASRD_PULSAR__TLS_ALLOW_INSECURE": "true"}
    check = asrd("check", "--connect", "--config", str(cfg.path), env=env)
    assert check.returncode == 0, check.stderr
    assert "warning: pulsar.tls_allow_insecure is true" in check.stderr
    cfg.env.update(env)
    daemon = start_daemon(cfg, cfg.log)
    try:
        [job] = create_jobs(cfg, 1)
        wait_for(lambda: result_ids(cfg) == {job}, 60, "the job")
    finally:
        assert stop_daemon(daemon) == 0
    assert "pulsar.tls_allow_insecure is true" in cfg.log.read_text()
