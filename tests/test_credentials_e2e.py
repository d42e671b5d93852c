"""Temporary keys end to end (asrd submit's client → CI → CMQ → intake → Pulsar → file and COS
sinks), every key issued by the emulator's CVM metadata paths or STS and expiring during the
run; then the outages: the issuer down for longer than the keys live, and a static token that
expires and is renewed by rewriting its file. Nothing may be dead-lettered in any of them."""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import requests
from pydantic import SecretStr

from asrd.ci import CiClient
from asrd.config import load
from asrd.credentials import CredentialError, Credentials, StaticSource, source_for

from .conftest import Broker
from .support import (
    BUCKET,
    SECRET_ID,
    SECRET_KEY,
    DaemonConfig,
    Emulator,
    create_jobs,
    dead_letters,
    free_port,
    ledger_rows,
    result_ids,
    start_daemon,
    start_emulator,
    stop_daemon,
    wait_for,
    write_config,
)

TTL_S = 6
COS_SINK = '\n[[sinks]]\nname = "cos"\ntype = "cos"\nprefix = "records/"\n'


def credentials_state(emulator: Emulator) -> dict[str, Any]:
    return dict(requests.get(f"{emulator.endpoint}/-/credentials", timeout=10).json())


def set_credentials(emulator: Emulator, **values: Any) -> None:
    r = requests.put(f"{emulator.endpoint}/-/credentials", json=values, timeout=10)
    r.raise_for_status()


def readyz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        r = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
    except requests.RequestException:
        return 0, {}
    return r.status_code, dict(r.json())


def cos_records(emulator: Emulator) -> set[str]:
    return {p.stem for p in (emulator.data_dir / BUCKET / "records").glob("s*.json")}


def provider_env(provider: str, emulator: Emulator, tmp: Path) -> dict[str, str]:
    """The daemon's environment for ``provider``: [ci] overrides pointing at the emulator, and
    for TKE the variables its pod-identity webhook would inject."""
    env = {
        "ASRD_CI__CREDENTIALS": provider,
        "ASRD_CI__METADATA_URL": f"{emulator.endpoint}/latest/meta-data/",
        "ASRD_CI__STS_ENDPOINT": emulator.endpoint,
        # Short-lived keys: refresh when 2 s are left (the default is 5 minutes).
        "ASRD_CI__REFRESH_MARGIN_S": "2",
        "ASRD_CI__CREDENTIALS_TIMEOUT_S": "2",
    }
    if provider == "tke-oidc":
        token = tmp / "web-identity-token"
        token.write_text("eyJhbGciOiJSUzI1NiJ9.projected-service-account-token.sig\n")
        env |= {
            "TKE_REGION": "ap-guangzhou",
            "TKE_PROVIDER_ID": "tke-oidc-provider",
            "TKE_WEB_IDENTITY_TOKEN_FILE": str(token),
            "TKE_ROLE_ARN": "qcs::cam::uin/100000000001:roleName/asrd",
        }
    return env


def dlq_count(broker: Broker, cfg: DaemonConfig) -> int:
    return len(dead_letters(broker.service_url, cfg))


def delivered_once(cfg: DaemonConfig, jobs: list[str], sinks: set[str]) -> None:
    rows = Counter(ledger_rows(cfg))
    for job in jobs:
        for sink in sinks:
            assert rows[(job, sink)] == 1, (job, sink)


def log_lines(path: Path) -> list[dict[str, Any]]:
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


@pytest.mark.parametrize("provider", ["cvm-role", "tke-oidc"])
def test_temporary_keys_expire_under_load_and_nothing_is_lost(
    tmp_path: Path, broker: Broker, provider: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    emulator = start_emulator(
        tmp_path / "emulator",
        broker.service_url,
        "--job-delay",
        "0.2",
        "--credential-ttl",
        str(TTL_S),
    )
    try:
        cfg = write_config(tmp_path / "d", emulator, broker.service_url, extra_sinks=COS_SINK)
        cfg.env.update(provider_env(provider, emulator, tmp_path))
        # The test's own client (the submitter) signs with the provider's keys as well.
        for name, value in cfg.env.items():
            monkeypatch.setenv(name, value)
        daemon = start_daemon(cfg, cfg.log)
        try:
            started = time.time()
            jobs: list[str] = []
            # 300 jobs over about 20 s: three or more key lifetimes under load.
            for _ in range(10):
                jobs += create_jobs(cfg, 30)
                time.sleep(2.0)
            wait_for(lambda: result_ids(cfg) >= set(jobs), 90, "every job in the file sink")
            wait_for(lambda: cos_records(emulator) >= set(jobs), 30, "every job in COS")
            ended = time.time()
        finally:
            assert stop_daemon(daemon) == 0
        assert dlq_count(broker, cfg) == 0
        delivered_once(cfg, jobs, {"files", "cos"})
        state = credentials_state(emulator)
        issuer = "metadata" if provider == "cvm-role" else "AssumeRoleWithWebIdentity"
        issued = [k for k in state["keys"] if k["issuer"] == issuer]
        expired = [k for k in issued if started < k["expires_at"] < ended]
        assert len(expired) >= 3, f"only {len(expired)} keys expired during the run"
        # Each service saw requests signed by several keys in turn, each with its own token
        # (a request whose token or key did not match its id would have been refused).
        for service in ("ci", "cos", "cmq"):
            used = [k for k in issued if k["uses"].get(service)]
            assert len(used) >= 3, (service, [k["uses"] for k in issued])
        refused = state["refused"]
        assert not [r for r in refused if "Signature" in r or "signature" in r], refused
        assert not [r for r in refused if "InvalidAccessKeyId" in r], refused
        static = next(k for k in state["keys"] if k["secret_id"] == SECRET_ID)
        assert static["uses"] == {}, "the long-lived key was never needed"
    finally:
        assert emulator.stop() == 0


def test_issuer_down_longer_than_the_keys_live_pauses_and_resumes(
    tmp_path: Path, broker: Broker
) -> None:
    emulator = start_emulator(
        tmp_path / "emulator", broker.service_url, "--job-delay", "0.2", "--credential-ttl", "4"
    )
    port = free_port()
    try:
        cfg = write_config(
            tmp_path / "d",
            emulator,
            broker.service_url,
            extra=f'[http]\nlisten = "127.0.0.1:{port}"\n',
        )
        cfg.env.update(provider_env("cvm-role", emulator, tmp_path))
        daemon = start_daemon(cfg, cfg.log)
        try:
            first = create_jobs(cfg, 20)  # the test submits with the static key
            wait_for(lambda: result_ids(cfg) >= set(first), 60, "the first jobs")
            set_credentials(emulator, issuer_down=True)
            wait_for(lambda: readyz(port)[0] == 503, 30, "/readyz to fail once the keys expire")
            _, body = readyz(port)
            assert "cvm-role" in body.get("reason", ""), body
            second = create_jobs(cfg, 20)  # CI finishes them; their notifications wait in CMQ
            time.sleep(TTL_S)  # the outage goes on: nothing may be dead-lettered meanwhile
            assert dlq_count(broker, cfg) == 0
            assert readyz(port)[0] == 503
            metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            assert 'asrd_paused{source="cmq"} 1.0' in metrics
            assert re.search(r'asrd_credentials_refresh_total\{result="error"\} [1-9]', metrics)
            assert re.search(r'asrd_auth_failures_total\{service="credentials"\} [1-9]', metrics)
            set_credentials(emulator, issuer_down=False)
            wait_for(lambda: readyz(port)[0] == 200, 60, "/readyz to recover")
            metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
            expiry = re.search(r"^asrd_credentials_expiry_timestamp_seconds (\S+)$", metrics, re.M)
            assert expiry and float(expiry.group(1)) > time.time()
            wait_for(lambda: result_ids(cfg) >= set(first + second), 60, "every job")
        finally:
            assert stop_daemon(daemon) == 0
        assert dlq_count(broker, cfg) == 0
        delivered_once(cfg, first + second, {"files"})
        lines = log_lines(cfg.log)
        paused = Counter(e["source"] for e in lines if str(e.get("event")).startswith("paused:"))
        resumed = Counter(e["source"] for e in lines if str(e.get("event")).startswith("resumed:"))
        assert paused and paused == resumed, (paused, resumed)  # one line per change of state
        errors = [e for e in lines if str(e.get("event")).startswith("paused:")]
        assert all(e["level"] == "error" and "cvm-role" in e["event"] for e in errors), errors
    finally:
        assert emulator.stop() == 0


def test_a_static_token_expires_and_its_renewed_file_is_read_again(
    tmp_path: Path, broker: Broker
) -> None:
    """The daemon's key (another one than the test's) has a token in ``token_file``. The
    emulator marks it expired: the daemon pauses and says to renew it; the token is renewed
    in the emulator and the file rewritten in place: the next requests carry the new token."""
    daemon_id, daemon_key = "AKIDdaemon000000000000000000000000", "daemonsecretkey0000000000000000"
    emulator = start_emulator(
        tmp_path / "emulator",
        broker.service_url,
        "--job-delay",
        "0.2",
        keys=(f"{SECRET_ID}:{SECRET_KEY}", f"{daemon_id}:{daemon_key}:token-one"),
    )
    port = free_port()
    token_file = tmp_path / "token"
    token_file.write_text("token-one\n")
    try:
        cfg = write_config(
            tmp_path / "d",
            emulator,
            broker.service_url,
            extra=f'[http]\nlisten = "127.0.0.1:{port}"\n',
        )
        cfg.env.update(
            {
                "ASRD_CI__SECRET_ID": daemon_id,
                "ASRD_CI__SECRET_KEY": daemon_key,
                "ASRD_CI__TOKEN_FILE": str(token_file),
                # The intake keeps its own key, so notifications reach the consumer, whose
                # look-ups meet the expired token (the issuer test pauses the intake).
                "ASRD_INTAKE__CMQ__SECRET_ID": SECRET_ID,
                "ASRD_INTAKE__CMQ__SECRET_KEY": SECRET_KEY,
            }
        )
        daemon = start_daemon(cfg, cfg.log)
        try:
            first = create_jobs(cfg, 20)
            wait_for(lambda: result_ids(cfg) >= set(first), 60, "the first jobs")
            set_credentials(emulator, expire=[daemon_id])
            second = create_jobs(cfg, 20)
            wait_for(lambda: readyz(port)[0] == 503, 30, "/readyz to fail")
            assert "renew" in readyz(port)[1].get("reason", "")
            assert dlq_count(broker, cfg) == 0
            set_credentials(emulator, tokens={daemon_id: "token-two"})
            token_file.write_text("token-two\n")  # in place, as a rotated Secret
            wait_for(lambda: readyz(port)[0] == 200, 60, "/readyz to recover")
            wait_for(lambda: result_ids(cfg) >= set(first + second), 60, "every job")
        finally:
            assert stop_daemon(daemon) == 0
        assert dlq_count(broker, cfg) == 0
        delivered_once(cfg, first + second, {"files"})
        paused = [e for e in log_lines(cfg.log) if str(e.get("event")).startswith("paused:")]
        assert paused and all("renew" in e["event"] for e in paused), paused
        assert all(e["level"] == "error" for e in paused)
        state = credentials_state(emulator)
        key = next(k for k in state["keys"] if k["secret_id"] == daemon_id)
        assert key["token"] == "token-two" and key["uses"].get("ci")
    finally:
        assert emulator.stop() == 0


def test_check_connect_names_the_provider_and_when_the_keys_expire(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    from .support import asrd

    cfg = write_config(tmp_path, emulator, broker.service_url)
    env = provider_env("cvm-role", emulator, tmp_path)
    out = asrd("check", "--connect", "--config", str(cfg.path), env=env)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("credentials:"))
    assert "cvm-role" in line and "AKID****" in line and "expire at" in line
    assert "AKIDtmp" not in out.stdout + out.stderr  # the key id only masked


def test_static_keys_sign_through_the_shared_holder(tmp_path: Path, emulator: Emulator) -> None:
    """Unchanged configurations keep working: static keys from files, one holder per process."""
    cfg = write_config(tmp_path, emulator.endpoint, "pulsar://127.0.0.1:1", intake=False)
    settings = load(cfg.path).ci
    client = CiClient(settings)
    assert isinstance(client.credentials, Credentials)
    assert isinstance(client.credentials.source, StaticSource)
    client.put_object("k", b"x")
    assert CiClient(settings).credentials is client.credentials


def test_assume_role_env_and_default_providers_sign_accepted_requests(
    tmp_path: Path, emulator: Emulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sts-assume-role`` (STS AssumeRole signed with the long-lived key, TC3), ``env`` and
    ``default`` (which finds the environment first) give keys the emulator accepts."""
    cfg = write_config(tmp_path, emulator.endpoint, "pulsar://127.0.0.1:1", intake=False)
    base = load(cfg.path).ci
    assumed = base.model_copy(
        update={
            "credentials": "sts-assume-role",
            "role_arn": "qcs::cam::uin/100000000001:roleName/asrd",
            "sts_endpoint": emulator.endpoint,
        }
    )
    CiClient(assumed).put_object("assumed", b"x")
    monkeypatch.setenv("TENCENTCLOUD_SECRET_ID", SECRET_ID)
    monkeypatch.setenv("TENCENTCLOUD_SECRET_KEY", SECRET_KEY)
    for provider in ("env", "default"):
        client = CiClient(base.model_copy(update={"credentials": provider}))
        client.put_object(provider, b"x")
        assert client.credentials.provider in ("env", "default (env)")
    keys = credentials_state(emulator)["keys"]
    assert any(k["issuer"] == "AssumeRole" and k["uses"].get("cos") for k in keys)
    static = next(k for k in keys if k["secret_id"] == SECRET_ID)
    assert static["uses"].get("cos", 0) >= 2


def test_assume_role_with_a_wrong_key_is_refused_by_sts(tmp_path: Path, emulator: Emulator) -> None:
    cfg = write_config(tmp_path, emulator.endpoint, "pulsar://127.0.0.1:1", intake=False)
    settings = load(cfg.path).ci.model_copy(
        update={
            "credentials": "sts-assume-role",
            "role_arn": "qcs::cam::uin/100000000001:roleName/asrd",
            "sts_endpoint": emulator.endpoint,
            "secret_key": SecretStr("not-the-key"),
            "secret_key_file": None,
        }
    )
    with pytest.raises(CredentialError, match=r"AuthFailure\.SignatureFailure"):
        source_for(settings).fetch()
