"""Session fixtures for the deployment tests; the slow parts (debootstrap, image build, boot)
run once per session and are cached under .cache/deploy/ (see build.py)."""

from __future__ import annotations

import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from ..support import ROOT
from . import build

TIMINGS: dict[str, float] = {}


def doc_block(name: str) -> str:
    """The shell block a document (README.md or one in docs/) marks
    ``<!-- deploy-test: NAME -->``: tests run it as written."""
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        pattern = rf"<!-- deploy-test: {re.escape(name)} -->\n```sh\n(.*?)```"
        found = re.search(pattern, doc.read_text(), re.S)
        if found:
            return found.group(1)
    raise AssertionError(f"no document has the deploy-test block {name!r}")


def _timed(name: str, started: float) -> None:
    TIMINGS[name] = round(time.monotonic() - started, 1)


@pytest.fixture(scope="session")
def host_tools() -> None:
    started = time.monotonic()
    build.ensure_host_tools()
    _timed("host tools", started)


@pytest.fixture(scope="session")
def wheels(tmp_path_factory: pytest.TempPathFactory, host_tools: None) -> Path:
    started = time.monotonic()
    dest = build.wheelhouse(tmp_path_factory.mktemp("wheels"))
    _timed("wheels", started)
    return dest


@pytest.fixture(scope="session")
def shared_dir() -> Iterator[Path]:
    """Host directory the nspawn container sees at the same path (configs, secrets, wheels)."""
    path = build.SHARED / uuid.uuid4().hex[:8]
    path.mkdir(parents=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def machine(shared_dir: Path, wheels: Path) -> Iterator[build.Machine]:
    """systemd 252 booted in a bookworm tree, asrd installed by the documented systemd block."""
    started = time.monotonic()
    tree = build.debian_tree("systemd", ["systemd", "systemd-sysv", "dbus", "python3-venv"])
    _timed("debootstrap systemd tree", started)
    install = shared_dir / "install"
    shutil.copytree(wheels, install / "wheels")
    started = time.monotonic()
    m = build.boot(tree, [(shared_dir, str(shared_dir))], shared_dir / "nspawn.log")
    _timed("nspawn boot", started)
    try:
        started = time.monotonic()
        m.sh(doc_block("systemd-install"), cwd=str(install), timeout=600)
        _timed("install asrd in the container", started)
        yield m
    finally:
        m.stop()


@pytest.fixture(scope="session")
def image(tmp_path_factory: pytest.TempPathFactory, wheels: Path) -> Iterator[build.Image]:
    started = time.monotonic()
    build.base_image()
    _timed("base image (debootstrap + import)", started)
    started = time.monotonic()
    build.SCRATCH.mkdir(mode=0o755, parents=True, exist_ok=True)
    built = build.build_image(wheels, build.SCRATCH / "image-rootfs")
    _timed("buildah bud + rootfs export", started)
    yield built
    shutil.rmtree(built.rootfs, ignore_errors=True)  # rebuilt every session anyway


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if TIMINGS:
        parts = ", ".join(f"{k} {v}s" for k, v in TIMINGS.items())
        terminalreporter.write_line(f"deployment fixtures: {parts}")
