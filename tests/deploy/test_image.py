"""The container image: built from the repository's Dockerfile, run read-only as its numeric
USER with a mounted config, mounted secrets and a state volume.

Without a Docker engine (these machines, CI) the image is built by ``buildah bud`` and its root
filesystem run under ``bwrap --as-pid-1``; where an engine answers the same checks also run
with ``docker build`` / ``docker run``. The host network is shared in both, so the sandbox
reaches the broker and the emulator on loopback; the API port is moved off 8090 with
ASRD_HTTP__LISTEN, as ``-p`` would.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
import requests

from asrd import config
from asrd.ci import CiClient

from ..conftest import Broker, _docker_answers
from ..support import (
    SECRET_ID,
    SECRET_KEY,
    Emulator,
    free_port,
    start_emulator,
    wait_for,
    write_config,
)
from .build import Image

KINDS = ["buildah+bwrap", *(["docker"] if _docker_answers() else [])]
STOP_WITHIN_S = 2.0


@dataclass
class Mounts:
    config: Path
    secrets: Path
    state: Path
    results: Path
    state_read_only: bool = False
    env: dict[str, str] = field(default_factory=dict)


class Running(Protocol):
    def terminate(self) -> None: ...
    def wait(self, timeout: float) -> int: ...
    def logs(self) -> str: ...


class Runner(Protocol):
    def start(self, mounts: Mounts) -> Running: ...


# -- buildah + bwrap -------------------------------------------------------------------------


@dataclass
class BwrapRun:
    proc: subprocess.Popen[bytes]
    log: Path

    def _child(self) -> int:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return int(children.split()[0])

    def terminate(self) -> None:
        # The image's process is PID 1 of its namespace; bwrap does not forward signals.
        os.kill(self._child(), signal.SIGTERM)

    def wait(self, timeout: float) -> int:
        return self.proc.wait(timeout=timeout)

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


@dataclass
class BwrapRunner:
    image: Image

    def start(self, mounts: Mounts) -> BwrapRun:
        uid, gid = self.image.uid_gid
        env = {**self.image.env, **mounts.env}
        # Mount points, made where a container runtime makes them: in the container's layer
        # (here the exported copy of the image), before the root goes read-only.
        (self.image.rootfs / "etc/asrd/asrd.toml").touch()
        (self.image.rootfs / "results").mkdir(exist_ok=True)
        state_bind = "--ro-bind" if mounts.state_read_only else "--bind"
        # As `docker run --read-only --user 10001:10001`: an unprivileged user namespace keeps
        # the uid the same on the host, the root filesystem is bound read-only.
        cmd = [
            "setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups",
            "bwrap", "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-uts",
            "--as-pid-1", "--die-with-parent",
            "--ro-bind", str(self.image.rootfs), "/",
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
            "--ro-bind", str(mounts.config), "/etc/asrd/asrd.toml",
            "--ro-bind", str(mounts.secrets), "/run/secrets",
            state_bind, str(mounts.state), "/var/lib/asrd",
            "--bind", str(mounts.results), "/results",
            "--chdir", str(self.image.config["WorkingDir"]),
            "--clearenv",
        ]  # fmt: skip
        for key, value in env.items():
            cmd += ["--setenv", key, value]
        cmd += ["--", *self.image.argv]
        log = mounts.state.parent / f"container-{time.monotonic_ns()}.log"
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT
        )
        return BwrapRun(proc, log)


# -- docker (where an engine answers) --------------------------------------------------------


@dataclass
class DockerRun:
    container: Any
    _logs: str = ""

    def terminate(self) -> None:
        self.container.kill(signal="SIGTERM")

    def wait(self, timeout: float) -> int:
        code = int(self.container.wait(timeout=timeout)["StatusCode"])
        self._logs = self.container.logs().decode(errors="replace")
        self.container.remove(force=True)
        return code

    def logs(self) -> str:
        return self._logs or str(self.container.logs().decode(errors="replace"))


@dataclass
class DockerRunner:
    tag: str

    def start(self, mounts: Mounts) -> DockerRun:
        from testcontainers.core.container import DockerContainer

        state_mode = "ro" if mounts.state_read_only else "rw"
        c = (
            DockerContainer(self.tag)
            .with_volume_mapping(str(mounts.config), "/etc/asrd/asrd.toml", "ro")
            .with_volume_mapping(str(mounts.secrets), "/run/secrets", "ro")
            .with_volume_mapping(str(mounts.state), "/var/lib/asrd", state_mode)
            .with_volume_mapping(str(mounts.results), "/results", "rw")
            # As the documented docker run (docs/operations.md): read-only root, no
            # capabilities; the host network reaches the broker and the emulator on loopback.
            .with_kwargs(
                network_mode="host",
                read_only=True,
                tmpfs={"/tmp": ""},
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
            )
        )
        for key, value in mounts.env.items():
            c = c.with_env(key, value)
        c.start()
        return DockerRun(c.get_wrapped_container())


@pytest.fixture(scope="session", params=KINDS)
def runner(request: pytest.FixtureRequest) -> Runner:
    if request.param == "docker":
        import docker  # type: ignore[import-untyped]

        from .build import ROOT

        tag = "asrd:test"
        docker.from_env().images.build(path=str(ROOT), tag=tag, rm=True)
        return DockerRunner(tag)
    image: Image = request.getfixturevalue("image")
    return BwrapRunner(image)


# -- the checks ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def emulator(shared_dir: Path, broker: Broker) -> Iterator[Emulator]:
    emu = start_emulator(shared_dir / "image-emulator", broker.service_url, "--job-delay", "0.3")
    yield emu
    emu.stop()


def _mounts(
    base: Path, emulator: Emulator, broker: Broker, uid_gid: tuple[int, int]
) -> tuple[Mounts, Any]:
    base.mkdir(parents=True)
    cfg = write_config(base, emulator, broker.service_url)
    secrets, state, results = base / "secrets", base / "state", base / "results"
    for d in (secrets, state, results):
        d.mkdir()
    (secrets / "secret_id").write_text(SECRET_ID)
    (secrets / "secret_key").write_text(SECRET_KEY)
    for path in (state, results):
        os.chown(path, *uid_gid)  # what a volume owned by the image's user looks like
    port = free_port()
    env = {
        "ASRD_CI__SECRET_KEY_FILE": "secret_key",  # relative: /run/secrets (CREDENTIALS_DIRECTORY)
        "ASRD_LEDGER__URL": "sqlite:////var/lib/asrd/ledger.db",
        "ASRD_SINKS__0__DIR": "/results",
        "ASRD_HTTP__LISTEN": f"127.0.0.1:{port}",
    }
    return Mounts(cfg.path, secrets, state, results, env=env), cfg


def _status(port: int, path: str) -> int:
    try:
        return requests.get(f"http://127.0.0.1:{port}{path}", timeout=2).status_code
    except requests.RequestException:
        return 0


def _stop_within(run: Running, limit: float) -> tuple[int, float]:
    started = time.monotonic()
    run.terminate()
    code = run.wait(timeout=30)
    return code, time.monotonic() - started


def test_image_metadata(image: Image) -> None:
    cfg = image.config
    uid, gid = image.uid_gid
    assert (uid, gid) == (10001, 10001)  # numeric: runAsNonRoot can verify it
    assert "8090/tcp" in cfg["ExposedPorts"]  # type: ignore[operator]
    health = " ".join(cfg["Healthcheck"]["Test"])  # type: ignore[index]
    assert "http://127.0.0.1:8090/healthz" in health
    assert "/var/lib/asrd" in cfg["Volumes"]  # type: ignore[operator]
    assert cfg["StopSignal"] == "SIGTERM"
    state = image.rootfs / "var" / "lib" / "asrd"
    assert list(state.iterdir()) == []  # no skeleton dotfiles in the state volume
    assert (state.stat().st_uid, state.stat().st_gid) == (10001, 10001)
    assert image.env["CREDENTIALS_DIRECTORY"] == "/run/secrets"
    assert not (image.rootfs / "src").exists() and not (image.rootfs / "opt/asrd/bin/pip").exists()


def test_readyz_delivery_and_prompt_sigterm(
    runner: Runner,
    shared_dir: Path,
    emulator: Emulator,
    broker: Broker,
    request: pytest.FixtureRequest,
) -> None:
    base = shared_dir / f"image-{request.node.callspec.id}"
    mounts, cfg = _mounts(base, emulator, broker, (10001, 10001))
    port = int(mounts.env["ASRD_HTTP__LISTEN"].rsplit(":", 1)[1])

    # No broker (a closed port): alive, not ready, and SIGTERM is honoured while the daemon is
    # blocked subscribing.
    closed = free_port()
    unreachable = Mounts(
        **{
            **mounts.__dict__,
            "env": {**mounts.env, "ASRD_PULSAR__SERVICE_URL": f"pulsar://127.0.0.1:{closed}"},
        }
    )
    run = runner.start(unreachable)
    wait_for(lambda: _status(port, "/healthz") == 200, 30, "the API to answer")
    assert _status(port, "/readyz") == 503
    time.sleep(1.0)  # well into the subscribe attempt
    code, took = _stop_within(run, STOP_WITHIN_S)
    assert code == 0 and took < STOP_WITHIN_S, (code, took, run.logs()[-2000:])

    # With the broker: 503 until subscribed, then 200; a job through the sidecar API is delivered.
    run = runner.start(mounts)
    try:
        seen = []
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (not seen or seen[-1] != 200):
            status = _status(port, "/readyz")
            if status and (not seen or seen[-1] != status):
                seen.append(status)
            time.sleep(0.02)
        assert seen[-1] == 200, (seen, run.logs()[-2000:])
        ci = CiClient(config.load(cfg.path).ci)
        ci.put_object("media/image.mp3", b"not audio")
        ci.put_object("media/image.mp3.transcript.txt", b"delivered from the image.")
        created = requests.post(
            f"http://127.0.0.1:{port}/v1/jobs", json={"input": "media/image.mp3"}, timeout=10
        )
        assert created.status_code == 201, created.text
        job_id = created.json()["job_id"]
        result = mounts.results / f"{job_id}.json"
        wait_for(result.exists, 60, "the job's result on the shared volume")
        assert json.loads(result.read_text())["transcript"] == "delivered from the image."
        st = result.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (10001, 0o644)
    finally:
        code, took = _stop_within(run, STOP_WITHIN_S)
    assert code == 0 and took < STOP_WITHIN_S, (code, took, run.logs()[-2000:])
    # The state volume holds the ledger and nothing else.
    assert {p.name for p in mounts.state.iterdir()} <= {
        "ledger.db",
        "ledger.db-wal",
        "ledger.db-shm",
    }
    assert "ledger.db" in {p.name for p in mounts.state.iterdir()}


def test_read_only_state_volume_exits_78(
    runner: Runner,
    shared_dir: Path,
    emulator: Emulator,
    broker: Broker,
    request: pytest.FixtureRequest,
) -> None:
    base = shared_dir / f"image-ro-{request.node.callspec.id}"
    mounts, _ = _mounts(base, emulator, broker, (10001, 10001))
    mounts.state_read_only = True
    run = runner.start(mounts)
    code = run.wait(timeout=30)
    logs = run.logs()
    assert code == 78, logs[-2000:]
    lines = [line for line in logs.splitlines() if line.strip()]
    assert (
        lines[-1]
        == "config error: ledger.url: cannot write to /var/lib/asrd: Read-only file system"
    )
