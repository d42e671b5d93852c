"""Session-wide fixtures: one real Apache Pulsar broker for the whole test run.

The broker comes from, in order: ``PULSAR_SERVICE_URL`` (an external broker, with
``PULSAR_ADMIN_URL`` for its admin API), the ``apachepulsar/pulsar`` image through
testcontainers when a Docker engine answers, else ``scripts/pulsar`` (jars from Maven
Central). A broker that cannot be started fails the session; nothing is skipped.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from .support import Emulator, start_emulator

ROOT = Path(__file__).resolve().parent.parent
_BROKER_WAS_RUNNING = pytest.StashKey[bool]()

# Servers a test waits for: one that uses them, directly or through another fixture (the
# emulator wired to the broker), is `slow`, and so is everything under tests/deploy (systemd,
# the image). Tests that restart or signal a process say so themselves (@pytest.mark.slow).
# `make check` runs the rest; `make test` runs everything.
SLOW_FIXTURES = frozenset({"broker", "postgres"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark the tests that need real servers or processes `slow`, from what they use, so no
    fast run starts a broker whoever wrote the test."""
    deploy = ROOT / "tests" / "deploy"
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & SLOW_FIXTURES or deploy in Path(item.path).parents:
            item.add_marker(pytest.mark.slow)


@dataclass(frozen=True)
class Broker:
    service_url: str
    admin_url: str
    # Only a broker started by scripts/pulsar can be restarted by a test.
    script: Path | None = None

    def restart(self) -> None:
        if self.script is None:
            raise RuntimeError("this broker was not started by scripts/pulsar")
        subprocess.run([str(self.script), "stop"], check=True)
        subprocess.run([str(self.script), "start"], check=True, stdout=subprocess.DEVNULL)

    def stop(self) -> None:
        if self.script is None:
            raise RuntimeError("this broker was not started by scripts/pulsar")
        subprocess.run([str(self.script), "stop"], check=True)

    def start(self) -> None:
        if self.script is None:
            raise RuntimeError("this broker was not started by scripts/pulsar")
        subprocess.run([str(self.script), "start"], check=True, stdout=subprocess.DEVNULL)


def _docker_answers() -> bool:
    try:
        import docker  # type: ignore[import-untyped]

        docker.from_env().ping()
    except Exception:
        return False
    return True


def _wait_admin(admin_url: str, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = requests.get(f"{admin_url}/admin/v2/namespaces/public/default", timeout=5)
            if r.status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(1)
    raise RuntimeError(f"Pulsar admin at {admin_url} not ready after {timeout:.0f}s")


@pytest.fixture(scope="session")
def broker() -> Iterator[Broker]:
    external = os.environ.get("PULSAR_SERVICE_URL")
    if external:
        admin = os.environ.get("PULSAR_ADMIN_URL", "http://127.0.0.1:8080")
        _wait_admin(admin)
        yield Broker(external, admin)
        return
    if _docker_answers():
        from testcontainers.core.container import DockerContainer
        from testcontainers.core.wait_strategies import HttpWaitStrategy

        container = (
            DockerContainer("apachepulsar/pulsar:4.0.7")
            .with_bind_ports(6650, 6650)
            .with_exposed_ports(8080)
            .with_env("PULSAR_MEM", "-Xms512m -Xmx512m -XX:MaxDirectMemorySize=512m")
            .with_command(
                ["bin/pulsar", "standalone", "--no-functions-worker", "--no-stream-storage"]
            )
            .waiting_for(
                HttpWaitStrategy(8080, "/admin/v2/namespaces/public/default")
                .for_status_code(200)
                .with_startup_timeout(180)
            )
        )
        with container:
            host = container.get_container_host_ip()
            yield Broker(
                f"pulsar://{host}:6650", f"http://{host}:{container.get_exposed_port(8080)}"
            )
        return
    script = ROOT / "scripts" / "pulsar"
    was_running = subprocess.run([str(script), "status"], capture_output=True).returncode == 0
    started = subprocess.run([str(script), "start"], capture_output=True, text=True)
    if started.returncode != 0:
        pytest.fail(f"could not start the Pulsar broker with scripts/pulsar:\n{started.stderr}")
    # The ports it runs on: a default another process holds was replaced by a free one.
    admin = subprocess.run([str(script), "admin-url"], capture_output=True, text=True, check=True)
    try:
        yield Broker(started.stdout.strip(), admin.stdout.strip(), script)
    finally:
        # Under pytest-xdist a worker that finishes first must not stop the broker the others
        # still use: the controller stops it once they are all done (pytest_sessionfinish).
        if not was_running and "PYTEST_XDIST_WORKER" not in os.environ:
            subprocess.run([str(script), "stop"], check=False)


def _runs_xdist_workers(config: pytest.Config) -> bool:
    return not hasattr(config, "workerinput") and bool(getattr(config.option, "numprocesses", 0))


def _scripted_broker_running() -> bool:
    script = ROOT / "scripts" / "pulsar"
    return subprocess.run([str(script), "status"], capture_output=True).returncode == 0


def pytest_sessionstart(session: pytest.Session) -> None:
    if _runs_xdist_workers(session.config) and not os.environ.get("PULSAR_SERVICE_URL"):
        session.config.stash[_BROKER_WAS_RUNNING] = _scripted_broker_running()


def pytest_sessionfinish(session: pytest.Session) -> None:
    """The controller of an xdist run stops the broker a worker started, after every worker."""
    was_running = session.config.stash.get(_BROKER_WAS_RUNNING, True)
    if not was_running and _scripted_broker_running():
        subprocess.run([str(ROOT / "scripts" / "pulsar"), "stop"], check=False)


@pytest.fixture
def topic(broker: Broker) -> str:
    """A fresh topic name per test, so tests sharing the broker never see each other's messages."""
    return f"persistent://public/default/t-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def emulator(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[Emulator]:
    """The emulator (CI, COS and CMQ) for one test; jobs finish 0.2 s after they are created.
    Its files live outside the test's ``tmp_path``, which some tests watch for stray files."""
    emu = start_emulator(
        tmp_path_factory.mktemp("emulator"), broker.service_url, "--job-delay", "0.2"
    )
    yield emu
    assert emu.stop() == 0


@pytest.fixture(scope="session")
def postgres() -> Iterator[Any]:
    """A PostgreSQL server for the session (Debian's package, run as ``nobody``); a server that
    cannot be started fails the tests that need it."""
    from tests import postgres as pg

    try:
        server = pg.start()
    except (RuntimeError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"could not start PostgreSQL: {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def creds(tmp_path: Path) -> dict[str, str]:
    """Credentials as systemd passes them (``$CREDENTIALS_DIRECTORY``), for the example config."""
    (tmp_path / "secret_id").write_text("AKIDexample\n")
    (tmp_path / "secret_key").write_text("keyexample\n")
    return {"CREDENTIALS_DIRECTORY": str(tmp_path)}


# -- a second broker, with TLS and token authentication (scripts/pulsar start --tls --auth) ----
@dataclass(frozen=True)
class SecureBroker:
    """The broker as TDMQ for Pulsar is reached: TLS with a CA of its own, and role tokens."""

    service_url: str  # pulsar+ssl://127.0.0.1:<tls port>
    admin_url: str  # plain HTTP admin API; needs ``admin_token``
    run_dir: Path
    lookup_url: str  # https://127.0.0.1:<web tls port>: an HTTP lookup address, as TDMQ's

    @property
    def ca(self) -> Path:
        return self.run_dir / "tls" / "ca.cert.pem"

    @property
    def secret_key(self) -> Path:
        return self.run_dir / "auth" / "secret.key"

    @property
    def client_token(self) -> str:
        """A token of the role "client": produce and consume on public/default."""
        return (self.run_dir / "auth" / "client.token").read_text().strip()

    @property
    def admin_token(self) -> str:
        return (self.run_dir / "auth" / "admin.token").read_text().strip()

    def mint(self, role: str, expires_in_s: float | None = None) -> str:
        """Another token signed by this broker's key (scripts/pulsar-token)."""
        argv = [str(ROOT / "scripts" / "pulsar-token"), str(self.secret_key), role]
        out = subprocess.run([*argv, *([str(expires_in_s)] if expires_in_s else [])], check=True,
                             capture_output=True, text=True)  # fmt: skip
        return out.stdout.strip()


@pytest.fixture(scope="session")
def secure_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecureBroker]:
    """scripts/pulsar start --tls --auth in a run directory and on ports of its own (the TLS
    ports from PULSAR_BROKER_TLS_PORT / PULSAR_WEB_TLS_PORT when set), stopped at the end."""
    from .support import free_port

    run = tmp_path_factory.mktemp("pulsar-tls")
    web_port = free_port()
    web_tls_port = os.environ.get("PULSAR_WEB_TLS_PORT") or str(free_port())
    env = {
        **os.environ,
        "PULSAR_RUN_DIR": str(run),
        "PULSAR_BROKER_PORT": str(free_port()),
        "PULSAR_WEB_PORT": str(web_port),
        "PULSAR_BOOKIE_PORT": str(free_port()),
        "PULSAR_BROKER_TLS_PORT": os.environ.get("PULSAR_BROKER_TLS_PORT") or str(free_port()),
        "PULSAR_WEB_TLS_PORT": web_tls_port,
    }
    script = str(ROOT / "scripts" / "pulsar")
    started = subprocess.run([script, "start", "--tls", "--auth"], capture_output=True,
                             text=True, env=env)  # fmt: skip
    if started.returncode != 0:
        subprocess.run([script, "stop"], env=env, check=False)
        pytest.fail(f"could not start the TLS broker with scripts/pulsar:\n{started.stderr}")
    try:
        yield SecureBroker(
            started.stdout.strip(),
            f"http://127.0.0.1:{web_port}",
            run,
            f"https://127.0.0.1:{web_tls_port}",
        )
    finally:
        subprocess.run([script, "stop"], env=env, check=False)
