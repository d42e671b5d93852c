"""The slow, cached parts of the deployment tests: Debian trees made by debootstrap, the wheels
asrd installs from, the container image built by buildah, a systemd booted by systemd-nspawn.

Everything is cached under ``.cache/deploy/`` (git-ignored) and rebuilt when missing; what
depends on the checkout (the asrd wheel, the image) is rebuilt once per test session. Nothing
inside a tree or a build downloads packages over TLS: the wheels are fetched on the host and
installed offline, Debian packages come from the plain-HTTP mirror that debootstrap verifies
with its keyring.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from ..support import ROOT, wait_for

CACHE = ROOT / ".cache" / "deploy"
MIRROR = os.environ.get("DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
# The base image name the Dockerfile pins (by digest); a Debian tree is imported under it.
PYTHON_BASE = "docker.io/library/python:3.11-slim-bookworm"
IMAGE = "localhost/asrd:test"
# The image runs as an unprivileged uid, which must be able to reach its root filesystem and
# its mounts: every parent directory needs search permission for it, and a checkout can sit
# under a 0700 directory (a mktemp -d, a home). So the per-session trees live under /var/tmp.
SCRATCH = Path("/var/tmp") / f"asrd-deploy-{hashlib.sha1(str(ROOT).encode()).hexdigest()[:10]}"
# Paths the nspawn container sees at the same place as the host (read-only).
SHARED = SCRATCH / "shared"


def run(*cmd: str | Path, timeout: float = 900, **kw: object) -> subprocess.CompletedProcess[str]:
    """A command that must succeed; its output is in the assertion message when it does not."""
    done = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        **kw,  # type: ignore[arg-type]
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(map(str, cmd))} exited {done.returncode}\n{done.stdout[-3000:]}"
            f"\n{done.stderr[-3000:]}"
        )
    return done


def ensure_host_tools() -> None:
    """Debian's systemd-container, debootstrap, buildah, bubblewrap (scripts/deploy-deps)."""
    run(ROOT / "scripts" / "deploy-deps", timeout=900)


def debian_tree(name: str, packages: list[str]) -> Path:
    """A bookworm tree made by debootstrap (minbase + ``packages``), cached under .cache/."""
    tree = CACHE / "debian" / name
    if (tree / ".complete").exists():
        return tree
    if tree.exists():
        shutil.rmtree(tree)  # an interrupted debootstrap
    tree.parent.mkdir(parents=True, exist_ok=True)
    debs = CACHE / "debs"
    debs.mkdir(parents=True, exist_ok=True)
    run(
        "debootstrap",
        "--variant=minbase",
        f"--cache-dir={debs}",
        f"--include={','.join(packages)}",
        SUITE,
        tree,
        MIRROR,
        timeout=1800,
    )
    for leftover in (tree / "var" / "cache" / "apt" / "archives").glob("*.deb"):
        leftover.unlink()
    (tree / ".complete").write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    return tree


def wheelhouse(dest: Path) -> Path:
    """asrd's wheel built from this checkout plus every dependency wheel (and the build
    backend, for the image's ``pip install .``), for installs that never reach an index."""
    deps = CACHE / "wheels"
    deps.mkdir(parents=True, exist_ok=True)
    pip = [str(ROOT / ".venv" / "bin" / "pip"), "--disable-pip-version-check", "-q"]
    env = {k: v for k, v in os.environ.items() if k != "PIP_FIND_LINKS"}
    stamp = deps / ".pyproject"
    if not stamp.exists() or stamp.read_text() != (ROOT / "pyproject.toml").read_text():
        run(*pip, "wheel", "-w", deps, ROOT, env=env)
        run(*pip, "download", "-d", deps, "setuptools>=77", "wheel", env=env)
        stamp.write_text((ROOT / "pyproject.toml").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    for whl in deps.glob("*.whl"):
        if not whl.name.startswith("asrd-"):
            shutil.copy2(whl, dest / whl.name)
    # The checkout's own code, fresh every session.
    run(*pip, "wheel", "--no-deps", "-w", dest, ROOT, env=env)
    return dest


# -- container image -------------------------------------------------------------------------


def buildah(*args: str | Path, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    store = CACHE / "containers"
    return run(
        "buildah",
        "--root",
        store / "storage",
        "--runroot",
        store / "run",
        "--storage-driver",
        "overlay",
        *args,
        timeout=timeout,
    )


def base_image() -> None:
    """The Dockerfile's base under its own name, made from a Debian tree: the registry it comes
    from is not reachable from these machines. Python sits where the official image has it."""
    if buildah("images", "--quiet", "--filter", f"reference={PYTHON_BASE}").stdout.strip():
        return
    tree = debian_tree("python-base", ["python3", "python3-venv"])
    ctr = buildah("from", "--quiet", "scratch").stdout.strip()
    try:
        mnt = Path(buildah("mount", ctr).stdout.strip())
        run("cp", "-a", f"{tree}/.", mnt)
        (mnt / ".complete").unlink()
        for name in ("python", "python3"):
            link = mnt / "usr" / "local" / "bin" / name
            link.unlink(missing_ok=True)
            link.symlink_to("/usr/bin/python3")
        buildah("umount", ctr)
        buildah(
            "config",
            "--env",
            "PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin",
            "--env",
            "LANG=C.UTF-8",
            "--cmd",
            "python3",
            ctr,
        )
        buildah("commit", "--quiet", ctr, PYTHON_BASE)
    finally:
        buildah("rm", ctr)


@dataclass(frozen=True)
class Image:
    rootfs: Path  # the image's filesystem, readable by its USER
    config: dict[str, object]  # Docker image config: User, Env, Entrypoint, Cmd, Healthcheck...

    @property
    def uid_gid(self) -> tuple[int, int]:
        uid, _, gid = str(self.config["User"]).partition(":")
        return int(uid), int(gid or uid)

    @property
    def env(self) -> dict[str, str]:
        pairs = [str(e).split("=", 1) for e in self.config["Env"]]  # type: ignore[attr-defined]
        return {k: v for k, v in pairs}

    @property
    def argv(self) -> list[str]:
        return [*self.config["Entrypoint"], *self.config["Cmd"]]  # type: ignore[misc]


def build_image(wheels: Path, rootfs: Path) -> Image:
    """``buildah bud`` of the repository's Dockerfile (no Docker engine), pip offline from
    ``wheels``; then the image's root filesystem copied out to ``rootfs``."""
    base_image()
    buildah(
        "bud",
        "--isolation=chroot",
        "--format=docker",  # keeps HEALTHCHECK, which the OCI format has no field for
        "--pull=never",
        "--quiet",
        "--tag",
        IMAGE,
        "--build-arg",
        f"PYTHON_BASE={PYTHON_BASE}",
        "--build-arg",
        "PIP_NO_INDEX=1",
        "--build-arg",
        "PIP_FIND_LINKS=/wheels",
        "--volume",
        f"{wheels}:/wheels:ro",
        "--file",
        ROOT / "Dockerfile",
        ROOT,
    )
    inspect = json.loads(buildah("inspect", "--type", "image", IMAGE).stdout)
    ctr = buildah("from", "--quiet", "--pull=never", IMAGE).stdout.strip()
    try:
        mnt = Path(buildah("mount", ctr).stdout.strip())
        # The storage is root-only (0700); the image runs as its own uid, which must reach it.
        if rootfs.exists():
            shutil.rmtree(rootfs)
        rootfs.mkdir(parents=True)
        run("cp", "-a", f"{mnt}/.", rootfs)
        buildah("umount", ctr)
    finally:
        buildah("rm", ctr)
    return Image(rootfs, inspect["Docker"]["config"])


# -- systemd in nspawn ------------------------------------------------------------------------


@dataclass
class Machine:
    """A Debian bookworm booted with ``systemd-nspawn -b``; commands run in it through
    nsenter (no machined on these hosts)."""

    proc: subprocess.Popen[bytes]
    leader: int
    log: Path

    def sh(
        self, script: str, check: bool = True, timeout: float = 120, cwd: str = "/"
    ) -> subprocess.CompletedProcess[str]:
        cmd = [
            "nsenter",
            "-t",
            str(self.leader),
            "-a",
            "env",
            "-i",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "LANG=C.UTF-8",
            "/bin/sh",
            "-ec",
            f"cd {cwd}\n{script}",
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if check and done.returncode != 0:
            raise AssertionError(
                f"in the container: {script}\nexited {done.returncode}\n{done.stdout[-3000:]}"
                f"\n{done.stderr[-3000:]}"
            )
        return done

    def path(self, inside: str) -> Path:
        """A path of the container's file system, seen from the host."""
        return Path(f"/proc/{self.leader}/root") / inside.lstrip("/")

    def show(self, unit: str, *props: str) -> dict[str, str]:
        out = self.sh(f"systemctl show {unit} -p {','.join(props)}").stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()  # nspawn asks the container's systemd to power off
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def boot(tree: Path, binds: list[tuple[Path, str]], log: Path) -> Machine:
    """Boot ``tree`` with its own systemd as PID 1; writes go to a tmpfs overlay
    (``--volatile=overlay``), so the cached tree stays as debootstrap made it. No private
    network: the container reaches the broker and the emulator on the host's loopback."""
    name = f"asrd-{uuid.uuid4().hex[:8]}"
    args = [
        "systemd-nspawn",
        "--quiet",
        "--boot",
        f"--directory={tree}",
        "--volatile=overlay",
        f"--machine={name}",
        "--register=no",
        "--keep-unit",
        "--console=passive",
    ]
    args += [f"--bind-ro={host}:{inside}" for host, inside in binds]
    proc = subprocess.Popen(
        args, stdin=subprocess.DEVNULL, stdout=log.open("wb"), stderr=subprocess.STDOUT
    )

    def leader() -> int:
        if proc.poll() is not None:
            raise AssertionError(f"systemd-nspawn exited {proc.returncode}: {log.read_text()}")
        for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
            if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                return int(child)
        return 0

    machine = Machine(proc, wait_for(leader, 60, "the container's systemd"), log)

    def booted() -> bool:
        state = machine.sh("systemctl is-system-running || true", timeout=30).stdout.strip()
        return state in ("running", "degraded")

    try:
        wait_for(booted, 120, "the container to finish booting", interval=0.5)
    except BaseException:
        machine.stop()
        raise
    return machine
