"""What the benchmark runs add to the tests' harness (tests/support.py starts the emulator and
the daemon for both): the broker check, the benchmark's config, and /proc sampling."""

from __future__ import annotations

import functools
import json
import os
import platform
import subprocess
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests import support
from tests.support import ROOT, DaemonConfig, Emulator, stop_process

__all__ = ["Emulator", "stop_process"]  # re-exported for the scenarios

BIN = ROOT / ".venv" / "bin"
PULSAR_SCRIPT = ROOT / "scripts" / "pulsar"
# The broker of the tests: PULSAR_SERVICE_URL / PULSAR_ADMIN_URL when set (never started or
# stopped here), else this checkout's own, which scripts/pulsar runs on the ports it chose.
EXTERNAL_BROKER = bool(os.environ.get("PULSAR_SERVICE_URL"))
DaemonSetup = DaemonConfig  # one daemon's files: config (.path), ledger, results, log
CLK_TCK = os.sysconf("SC_CLK_TCK")


def provenance() -> dict[str, str]:
    """What every result file names: the machine it ran on and the commit it measured."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "commit": commit,
    }


def run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


@functools.cache
def _broker_urls() -> tuple[str, str]:
    """(service URL, admin URL): the external broker's, or the ports scripts/pulsar recorded
    when it started this checkout's broker (a default port another process holds is moved)."""
    if EXTERNAL_BROKER:
        admin = os.environ.get("PULSAR_ADMIN_URL") or "http://127.0.0.1:8080"
        return os.environ["PULSAR_SERVICE_URL"], admin

    def ask(command: str) -> str:
        out = subprocess.run([str(PULSAR_SCRIPT), command], capture_output=True, text=True)
        return out.stdout.strip()

    return ask("url"), ask("admin-url")


def pulsar_url() -> str:
    """The broker's service URL (after ``Broker.ensure``)."""
    return _broker_urls()[0]


def admin_url() -> str:
    """The broker's admin URL (after ``Broker.ensure``)."""
    return _broker_urls()[1]


class Broker:
    """The external broker, which must be healthy, or this checkout's: ``scripts/pulsar
    start`` starts it unless it runs, and ``release`` stops only a broker started here."""

    def __init__(self) -> None:
        self.started_here = False

    @staticmethod
    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{admin_url()}/admin/v2/brokers/health", timeout=10) as r:
                body: bytes = r.read()
        except OSError:
            return False
        return body.strip() == b"ok"

    def ensure(self) -> None:
        if EXTERNAL_BROKER:
            if not self.healthy():
                raise RuntimeError(f"the broker at {admin_url()} (PULSAR_ADMIN_URL) is not healthy")
            return
        running = subprocess.run([str(PULSAR_SCRIPT), "status"], capture_output=True)
        subprocess.run([str(PULSAR_SCRIPT), "start"], check=True, stdout=subprocess.DEVNULL)
        self.started_here = running.returncode != 0
        _broker_urls.cache_clear()  # the ports this start chose

    def release(self) -> None:
        if self.started_here:
            subprocess.run([str(PULSAR_SCRIPT), "stop"], check=False)
            self.started_here = False


def start_emulator(data_dir: Path, *extra: str) -> Emulator:
    """The emulator without its CMQ endpoint: the runs measure the consumer on a topic
    pre-filled with CI's callback bodies, published to Pulsar directly (--tdmq-to-pulsar)."""
    return support.start_emulator(
        data_dir, pulsar_url(), "--job-delay", "0", "--tdmq-to-pulsar", *extra, cmq=False
    )


def write_config(
    run_dir: Path, endpoint: str, mq_name: str, concurrency: int, max_in_flight: int
) -> DaemonSetup:
    """The daemon's TOML: emulator CI, the run's topic (no intake), a json file sink, a fresh
    ledger, the sidecar API on a free port."""
    return support.write_config(
        run_dir,
        endpoint,
        pulsar_url(),
        mq_name=mq_name,
        intake=False,
        formats=("json",),
        extra_pulsar=f"concurrency = {concurrency}\nmax_in_flight = {max_in_flight}\n"
        f"receiver_queue_size = {min(max_in_flight, 1000)}",
        extra='[http]\nlisten = "127.0.0.1:0"\n',
    )


def start_daemon(setup: DaemonSetup) -> subprocess.Popen[bytes]:
    return support.start_daemon(setup, setup.log, wait_subscribed=False)


@dataclass(frozen=True)
class ProcSample:
    t: float  # time.time()
    rss_kb: int  # VmRSS
    hwm_kb: int  # VmHWM (peak RSS so far)
    cpu_s: float  # utime + stime


def read_proc(pid: int) -> ProcSample | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    values = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    # Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    rest = stat.rsplit(")", 1)[1].split()
    cpu = (int(rest[11]) + int(rest[12])) / CLK_TCK
    return ProcSample(
        time.time(),
        int(values.get("VmRSS", "0 kB").split()[0]),
        int(values.get("VmHWM", "0 kB").split()[0]),
        cpu,
    )


def read_system() -> ProcSample:
    """The whole machine as one sample: CPU seconds busy on all cores, no memory figures."""
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    jiffies = [int(v) for v in fields]
    idle = jiffies[3] + jiffies[4]  # idle + iowait
    return ProcSample(time.time(), 0, 0, (sum(jiffies[:8]) - idle) / CLK_TCK)


def broker_pid() -> int | None:
    """The standalone broker's pid (found by its main class), if one runs."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"PulsarStandaloneStarter" in cmdline:
            return int(entry.name)
    return None


@dataclass
class Sampler:
    """Samples a process's memory and CPU (pid 0: the whole machine) on a thread until stopped."""

    pid: int
    interval: float = 0.25
    samples: list[ProcSample] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Sampler:
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        while not self._stop.is_set():
            sample = read_system() if self.pid == 0 else read_proc(self.pid)
            if sample is None:
                return
            self.samples.append(sample)
            self._stop.wait(self.interval)

    def stop(self) -> list[ProcSample]:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        return self.samples


def count_files(directory: Path, suffix: str = ".json") -> int:
    try:
        with os.scandir(directory) as it:
            return sum(1 for e in it if e.name.endswith(suffix) and not e.name.startswith("."))
    except FileNotFoundError:
        return 0


def delivery_times(directory: Path) -> dict[str, float]:
    """``job_id -> mtime`` of every result file."""
    out: dict[str, float] = {}
    with os.scandir(directory) as it:
        for e in it:
            if e.name.endswith(".json") and not e.name.startswith("."):
                out[e.name[: -len(".json")]] = e.stat().st_mtime_ns / 1e9
    return out


def daemon_counters(setup: DaemonSetup) -> dict[str, int]:
    """The counters the daemon logs when it stops (empty if it did not log them)."""
    if not setup.log.exists():
        return {}
    for line in reversed(setup.log.read_text(errors="replace").splitlines()):
        if '"asrd stopped"' in line:
            try:
                counters = json.loads(line).get("counters", {})
            except ValueError:
                return {}
            return {str(k): int(v) for k, v in counters.items()}
    return {}
