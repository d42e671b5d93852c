"""The sidecar HTTP API: on a real daemon process, then the same app served by uvicorn against
the emulator for schemathesis (every operation of /openapi.json, no 5xx, responses as
documented), bearer-token refusals, size limits, and the loopback rule at start-up."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from asrd import config, queueid
from asrd.api import ApiContext, serve
from asrd.ci import CiClient
from asrd.cli_submit import make_submitter
from asrd.config import UrlIntakeSettings
from asrd.intake.forward import Forwarder
from asrd.intake.url import UrlReceiver
from asrd.jobs import JobService
from asrd.ledger import SqliteLedger
from asrd.metrics import Metrics
from asrd.observers import Observers

from .conftest import Broker
from .support import (
    Emulator,
    asrd,
    free_port,
    quiet_client,
    start_daemon,
    start_emulator,
    stop_daemon,
    wait_for,
    write_config,
)

TOKEN = "k9-sidecar-token-0123456789"
CALLBACK_TOKEN = "cb-secret-0123456789abcdef"


def test_api_health_metrics_submit_get_and_sd_notify(tmp_path: Path, broker: Broker) -> None:
    emu = start_emulator(tmp_path / "emulator", broker.service_url, "--job-delay", "0.2")
    port = free_port()
    cfg = write_config(tmp_path, emu, broker.service_url)
    cfg.path.write_text(cfg.path.read_text() + f'\n[http]\nlisten = "127.0.0.1:{port}"\n')
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(str(tmp_path / "notify.sock"))
    notify.settimeout(30)
    cfg.env["NOTIFY_SOCKET"] = str(tmp_path / "notify.sock")
    daemon = start_daemon(cfg, tmp_path / "daemon.log")
    base = f"http://127.0.0.1:{port}"
    try:
        assert notify.recv(100) == b"READY=1"
        assert requests.get(f"{base}/healthz", timeout=5).json() == {"status": "ok"}
        wait_for(lambda: requests.get(f"{base}/readyz", timeout=5).status_code == 200, 10, "ready")
        assert requests.get(f"{base}/readyz?x=1", timeout=5).status_code == 200

        bad = requests.post(f"{base}/v1/jobs", json={"input": "a", "url": "http://x/y"}, timeout=5)
        assert bad.status_code == 400 and "exactly one" in bad.json()["error"]
        created = requests.post(f"{base}/v1/jobs", json={"input": "media/x.mp3"}, timeout=10)
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        wait_for((cfg.results / f"{job_id}.json").exists, 30, "the submitted job's result")

        def stages() -> list[str]:
            events = requests.get(f"{base}/v1/jobs/{job_id}", timeout=10).json()["events"]
            return [event["stage"] for event in events]

        # No object media/x.mp3: CI ends the job Failed, and the record says so.
        timeline = [
            "submitted",
            "created",
            "callback received",
            "moved onto Pulsar",
            "read back",
            "delivered",
            "failed",
        ]
        wait_for(lambda: stages() == timeline, 30, "the job's timeline")
        got = requests.get(f"{base}/v1/jobs/{job_id}", timeout=10)
        assert got.status_code == 200 and got.json()["job_id"] == job_id
        assert got.json()["delivered_to"] == ["files"]
        assert requests.get(f"{base}/v1/jobs/../../etc", timeout=5).status_code in (400, 404)
        unknown = requests.get(f"{base}/v1/jobs/s{'0' * 32}", timeout=10)
        assert unknown.status_code == 404 and "does not know" in unknown.json()["error"]

        metrics = requests.get(f"{base}/metrics", timeout=5).text
        assert "asrd_ready 1.0" in metrics
        assert 'asrd_deliveries_total{result="delivered",sink="files"} 1.0' in metrics
    finally:
        assert stop_daemon(daemon) == 0
        emu.stop()
    assert notify.recv(100) == b"STOPPING=1"
    record = json.loads((cfg.results / f"{job_id}.json").read_text())
    # No transcript sidecar: the emulator makes one up from the object name; the job still ends.
    assert record["state"] in ("Success", "Failed")


def test_a_non_loopback_listener_without_a_token_exits_78(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:1", "pulsar://127.0.0.1:1")
    cfg.path.write_text(cfg.path.read_text() + '\n[http]\nlisten = "0.0.0.0:8099"\n')
    refused = asrd("run", "--config", str(cfg.path))
    assert refused.returncode == 78
    assert refused.stderr.count("\n") == 1, refused.stderr
    assert "http: listen: 0.0.0.0 is not a loopback address: set token" in refused.stderr
    (tmp_path / "http_token").write_text(TOKEN + "\n")
    with_file = {"ASRD_HTTP__TOKEN_FILE": str(tmp_path / "http_token")}
    assert asrd("check", "--config", str(cfg.path), env=with_file).returncode == 0


@pytest.fixture(scope="module")
def emulator(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[Emulator]:
    emu = start_emulator(tmp_path_factory.mktemp("emulator"), broker.service_url)
    yield emu
    emu.stop()


def serve_app(
    tmp: Path, emulator: Emulator, token: str = "", callbacks: UrlReceiver | None = None
) -> tuple[str, SqliteLedger]:
    cfg = write_config(tmp, emulator, "pulsar://127.0.0.1:6650")
    settings = config.load(cfg.path, environ={})
    ledger = SqliteLedger(tmp / "api-ledger.db")
    ci = CiClient(settings.ci)
    settings = queueid.resolved(settings, ci)  # as asrd run does at start-up
    ctx = ApiContext(
        ci,
        settings.ci,
        ready=lambda: True,
        metrics=Metrics().exposition,
        ledger=ledger,
        jobs=JobService(make_submitter(settings, ci, ledger), ledger),
        token=token,
        callbacks=callbacks,
    )
    server = serve(f"127.0.0.1:{free_port()}", ctx)
    return f"http://127.0.0.1:{server.sock.getsockname()[1]}", ledger


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory, emulator: Emulator) -> str:
    return serve_app(tmp_path_factory.mktemp("api"), emulator)[0]


def test_every_operation_answers_as_documented(
    tmp_path: Path, emulator: Emulator, broker: Broker, topic: str
) -> None:
    """schemathesis (its CLI: the pytest plugin's lazy loader does not run on pytest 9) over
    every operation of /openapi.json, all checks, with a bearer token so auth is exercised and
    the URL-callback secret so callbacks reach a real Pulsar topic."""
    client = quiet_client(broker.service_url)
    forwarder = Forwarder(client, topic)
    receiver = UrlReceiver(UrlIntakeSettings(token=CALLBACK_TOKEN), forwarder, Observers())
    base, ledger = serve_app(tmp_path, emulator, token=TOKEN, callbacks=receiver)
    # Only CI knows whether a template_id exists: a valid-looking one may be refused with 400,
    # as documented. Every other answer to valid input, and every other operation's, is 2xx.
    lenient = '["2xx", "400"]'
    (tmp_path / "schemathesis.toml").write_text(
        f'[parameters]\n"path.token" = "{CALLBACK_TOKEN}"\n'
        '[[operations]]\ninclude-name = "POST /v1/jobs"\n'
        f"checks.positive_data_acceptance.expected-statuses = {lenient}\n"
    )
    try:
        run = subprocess.run(
            [
                str(Path(sys.executable).parent / "st"), "run", f"{base}/openapi.json",
                "--checks", "all", "--max-examples", "40", "--workers", "1", "--seed", "1",
                "--suppress-health-check", "all", "--header", f"Authorization: Bearer {TOKEN}",
            ],
            capture_output=True, text=True, timeout=600, cwd=tmp_path,
        )  # fmt: skip
    finally:
        ledger.close()
        forwarder.close()
        client.close()
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "failure" not in run.stdout.splitlines()[-1]
    assert "Missing test data" not in run.stdout, "an operation was never reached"


def test_the_document_names_every_route_and_the_error_shape(api: str) -> None:
    doc = requests.get(f"{api}/openapi.json", timeout=5).json()
    assert set(doc["paths"]) == {
        "/healthz", "/readyz", "/metrics", "/v1/jobs", "/v1/jobs/{job_id}", "/v1/callbacks/{token}",
    }  # fmt: skip
    assert set(doc["paths"]["/v1/jobs"]) == {"get", "post"}
    assert doc["components"]["schemas"]["ApiError"]["required"] == ["error"]
    # Loopback without a token: no bearer scheme documented, none enforced.
    assert "securitySchemes" not in doc["components"]
    for item in doc["paths"].values():
        for op in item.values():
            assert "422" not in op["responses"], op["operationId"]
    # `since` as the server reads it: a duration, or a date-time (a pattern alone would also
    # match days that do not exist, which the server refuses).
    [since] = [p for p in doc["paths"]["/v1/jobs"]["get"]["parameters"] if p["name"] == "since"]
    kinds = since["schema"]["anyOf"]
    assert {"type": "string", "format": "date-time"} in kinds
    assert any(k.get("pattern", "").endswith("([smhd])$") for k in kinds)


def test_bodies_are_bounded_before_they_are_read(api: str) -> None:
    too_big = requests.post(f"{api}/v1/jobs", data=b"{" * (64 * 1024 + 1), timeout=10)
    assert too_big.status_code == 413 and too_big.json() == {
        "error": "body larger than 65536 bytes"
    }
    # A negative length is refused at once instead of holding a worker until the client leaves.
    with socket.create_connection(
        (api.split("//")[1].split(":")[0], int(api.rsplit(":", 1)[1]))
    ) as s:
        s.settimeout(5)
        s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n")
        assert s.recv(100).split(b" ")[1] in (b"400", b"411")
    chunked = requests.post(f"{api}/v1/jobs", data=iter([b'{"input": "a"}']), timeout=10)
    assert chunked.status_code == 411
    assert requests.get(f"{api}/readyz?x=1", timeout=5).status_code == 200


def test_bearer_token_guards_v1_but_not_the_probes(tmp_path: Path, emulator: Emulator) -> None:
    base, ledger = serve_app(tmp_path, emulator, token=TOKEN)
    job = f"{base}/v1/jobs/s{'0' * 32}"
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"}):
        refused = requests.get(job, headers=headers, timeout=5)
        assert refused.status_code == 401, headers
        assert refused.json() == {"error": "a valid bearer token is required"}
        assert refused.headers["WWW-Authenticate"] == "Bearer"
        assert (
            requests.post(
                f"{base}/v1/jobs", json={"input": "a"}, headers=headers, timeout=5
            ).status_code
            == 401
        )
    doc = requests.get(f"{base}/openapi.json", timeout=5).json()
    assert doc["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert doc["paths"]["/v1/jobs"]["post"]["security"] == [{"HTTPBearer": []}]
    assert "security" not in doc["paths"]["/v1/callbacks/{token}"]["post"]
    allowed = requests.get(job, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=10)
    assert allowed.status_code == 404  # past the guard: CI does not know the job
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert requests.get(f"{base}{path}", timeout=5).status_code == 200, path
    # The callback route carries its own secret in the path; without [intake.url] it is absent.
    assert requests.post(f"{base}/v1/callbacks/{TOKEN}", data=b"{}", timeout=5).status_code == 404
    ledger.close()
