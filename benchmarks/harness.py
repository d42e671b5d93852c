"""Processes the benchmark runs: the broker, the CI emulator, the daemon, and /proc sampling."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".venv" / "bin"
ASRD = str(BIN / "asrd") if (BIN / "asrd").exists() else "asrd"
PULSAR_URL = "pulsar://127.0.0.1:6650"
ADMIN_URL = "http://127.0.0.1:8080"
SECRET_ID = "AKIDasrdbench000000000000000000000"
SECRET_KEY = "asrdbenchsecretkey00000000000000"
BUCKET = "asrd-bench-1250000000"
REGION = "ap-guangzhou"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:6]


class Broker:
    """A healthy broker on the default ports is reused (whoever started it); otherwise
    ``scripts/pulsar start`` starts one, and ``release`` stops only that one."""

    def __init__(self) -> None:
        self.started_here = False

    @staticmethod
    def healthy() -> bool:
        try:
            with urllib.request.urlopen(f"{ADMIN_URL}/admin/v2/brokers/health", timeout=10) as r:
                body: bytes = r.read()
        except OSError:
            return False
        return body.strip() == b"ok"

    def ensure(self) -> None:
        if self.healthy():
            return
        subprocess.run([str(ROOT / "scripts" / "pulsar"), "start"], check=True)
        self.started_here = True

    def release(self) -> None:
        if self.started_here:
            subprocess.run([str(ROOT / "scripts" / "pulsar"), "stop"], check=False)
            self.started_here = False


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


@dataclass
class Emulator:
    proc: subprocess.Popen[bytes]
    endpoint: str

    def set_faults(self, **values: float) -> None:
        req = urllib.request.Request(
            f"{self.endpoint}/-/faults",
            data=json.dumps(values).encode(),
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            resp.read()

    def stop(self) -> int:
        return stop_process(self.proc)


def start_emulator(data_dir: Path, *extra: str) -> Emulator:
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "emulator.log").open("wb") as log:
        proc = subprocess.Popen(
            [
                ASRD,
                "emulator",
                "--listen",
                "127.0.0.1:0",
                "--pulsar-url",
                PULSAR_URL,
                "--data-dir",
                str(data_dir),
                "--key",
                f"{SECRET_ID}:{SECRET_KEY}",
                "--job-delay",
                "0",
                # The runs measure the consumer on a topic pre-filled with CI's callback bodies:
                # the emulator's explicit CMQ-bypass publishes them to Pulsar directly.
                "--tdmq-to-pulsar",
                *extra,
            ],
            stdout=subprocess.PIPE,
            stderr=log,
        )
    assert proc.stdout is not None
    line = proc.stdout.readline().decode().strip()
    if "listening on" not in line:
        stop_process(proc)
        raise RuntimeError(f"emulator did not start: {line!r}; see {data_dir}/emulator.log")
    return Emulator(proc, line.rsplit(" ", 1)[1])


@dataclass
class DaemonSetup:
    """One daemon's files: config, ledger, results directory, log."""

    dir: Path
    topic: str
    mq_name: str
    subscription: str = "asrd"

    @property
    def config(self) -> Path:
        return self.dir / "asrd.toml"

    @property
    def results(self) -> Path:
        return self.dir / "results"

    @property
    def log(self) -> Path:
        return self.dir / "daemon.log"


def write_config(
    run_dir: Path, endpoint: str, mq_name: str, concurrency: int, max_in_flight: int
) -> DaemonSetup:
    """The daemon's TOML: emulator CI, the run's topic, a file sink, a fresh ledger."""
    run_dir.mkdir(parents=True, exist_ok=True)
    setup = DaemonSetup(run_dir, f"persistent://public/default/{mq_name}", mq_name)
    (run_dir / "secret_key").write_text(SECRET_KEY + "\n")
    setup.config.write_text(
        f"""[ci]
region = "{REGION}"
bucket = "{BUCKET}"
secret_id = "{SECRET_ID}"
secret_key_file = "{run_dir / "secret_key"}"
endpoint = "{endpoint}"

[ci.callback]
mq_name = "{mq_name}"

[pulsar]
service_url = "{PULSAR_URL}"
topic = "{setup.topic}"
subscription = "{setup.subscription}"
concurrency = {concurrency}
max_in_flight = {max_in_flight}
receiver_queue_size = {min(max_in_flight, 1000)}
nack_delay_ms = 1000

[ledger]
url = "sqlite:///{run_dir / "ledger.db"}"

[http]
listen = "127.0.0.1:0"

[log]
level = "info"

[[sinks]]
name = "files"
type = "file"
dir = "{setup.results}"
formats = ["json"]
"""
    )
    return setup


def start_daemon(setup: DaemonSetup) -> subprocess.Popen[bytes]:
    with setup.log.open("ab") as log:
        return subprocess.Popen(
            [ASRD, "run", "--config", str(setup.config)],
            stdout=subprocess.DEVNULL,
            stderr=log,
        )


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
