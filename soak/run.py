"""The soak: the production wiring under a steady load while faults come one after another and
overlap, then a checker that proves nothing was lost or applied twice. Results go to
``soak/results/<UTC date and time>.json``, ``.md`` and ``.svg`` (or ``SOAK_RESULTS``).

Wiring: the emulator (CI, COS, CMQ; jobs take ``SOAK_JOB_S``, CI answers in 20-80 ms), the real
broker (``scripts/pulsar``), PostgreSQL (Debian's, as the tests run it), ``asrd run`` with
``workers = 2`` on the PostgreSQL ledger and the CMQ intake, in its own network namespace
joined to the host by a veth pair (soak/net.py), a file sink on a small tmpfs and a webhook
sink whose local receiver records every delivery with its idempotency key. ``asrd submit``
feeds ``SOAK_RATE`` jobs/s for ``SOAK_S`` seconds; hostile messages are planted on the topic at
a low rate (only these may be dead-lettered). The schedule of faults is soak/faults.py.

Run as root (network namespace, tmpfs) from the repository: ``make soak`` or
``SOAK_S=600 .venv/bin/python -m soak.run``. ``SOAK_KINDS=cheap`` forces the short schedule
(one fault of each cheap kind), ``SOAK_KINDS=each`` one of every kind, ``SOAK_KINDS=none`` no
fault, and a comma list (``SOAK_KINDS=webhook-500``) those kinds over and over.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests import postgres as pg  # noqa: E402 - the tests' PostgreSQL, emulator and receiver
from tests.receiver import Received, Receiver  # noqa: E402
from tests.support import (  # noqa: E402
    ASRD,
    DaemonConfig,
    dead_letters,
    quiet_client,
    set_faults,
    start_emulator,
    stop_process,
    wait_for,
    webhook_sink,
    write_config,
)

from soak import faults as schedule  # noqa: E402
from soak.net import Netns  # noqa: E402
from soak.report import growth_between, markdown, svg  # noqa: E402

PLANTED = "asrd-soak-planted"  # property of every hostile message the soak publishes
RESULTS = ROOT / "soak" / "results"
FAKETIME_LIB = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1"
SKEW = "+10m"
CI_LATENCY = {"latency_ms": 20, "latency_max_ms": 80}  # the realistic setting between faults


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass
class Settings:
    duration_s: float = field(default_factory=lambda: env_float("SOAK_S", 3600))
    rate: float = field(default_factory=lambda: env_float("SOAK_RATE", 100))
    gap_s: float = field(default_factory=lambda: env_float("SOAK_GAP_S", 20))
    job_s: float = field(default_factory=lambda: env_float("SOAK_JOB_S", 2.0))
    drain_s: float = field(default_factory=lambda: env_float("SOAK_DRAIN_S", 600))
    kinds: str = field(default_factory=lambda: os.environ.get("SOAK_KINDS", "all"))
    # "postgres" (workers = 2), or "sqlite": workers = 1 on a SQLite ledger on a small tmpfs
    # that the ledger-full fault fills.
    ledger: str = field(default_factory=lambda: os.environ.get("SOAK_LEDGER", "postgres"))


class Hook:
    """The webhook's receiver: every delivery recorded with its key. It applies a record once
    per idempotency key (its effect); a key whose records differ is a double effect. Modes:
    ``ok``, ``500`` (answers 500) and ``slow`` (answers after 10 s: the sink times out)."""

    def __init__(self, host: str) -> None:
        self.mode = "ok"
        self.acked: Counter[str] = Counter()
        self.bodies: dict[str, set[str]] = {}  # key -> digests of the distinct records applied
        self._lock = threading.Lock()
        self.receiver = Receiver(self._reply, host=host)

    def _reply(self, got: Received) -> tuple[int, float]:
        key = got.headers.get("idempotency-key", "")
        mode = self.mode
        if mode == "500":
            return 500, 0.0
        try:
            record = got.json()
        except ValueError:  # cut short (the sender was killed mid-request): no effect
            return 400, 0.0
        record.pop("delivered_at", None)
        with self._lock:
            self.acked[key] += 1
            digest = hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()
            self.bodies.setdefault(key, set()).add(digest)
        return 200, 10.0 if mode == "slow" else 0.0

    def count(self) -> int:
        return len(self.acked)

    def close(self) -> None:
        self.receiver.close()


class Tmpfs:
    def __init__(self, where: Path, size: str) -> None:
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True
        )
        self.where = where

    def fill(self) -> None:
        with (self.where / ".filler").open("wb", buffering=0) as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 65536)
        with (self.where / ".filler").open("ab", buffering=0) as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 512)

    def free(self) -> None:
        (self.where / ".filler").unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.where)], check=False)


def complete_lines(fh: BinaryIO) -> list[bytes]:
    """The lines written completely since the last call; an unfinished last line is left to
    be read whole next time (binary mode, so the offset sought back to is exact)."""
    start = fh.tell()
    data = fh.read()
    end = data.rfind(b"\n") + 1
    fh.seek(start + end)
    return data[:end].splitlines()


class Collector:
    """Takes the file sink's records off its small tmpfs every second (so an hour fits), keeping
    per job a digest of the record (without ``delivered_at``), CI's end and the delivery time.
    A second, different record for a job is a double effect; an identical one a repeat."""

    def __init__(self, where: Path) -> None:
        self.where = where
        self.seen: dict[str, tuple[str, float, float]] = {}
        self.double: list[str] = []
        self.repeats = 0
        self.paused = threading.Event()  # while the disk is full on purpose

    def sweep(self) -> None:
        if self.paused.is_set():
            return
        with os.scandir(self.where) as entries:
            names = [e.name for e in entries if e.name.endswith(".json") and e.name[0] != "."]
        for name in names:
            path = self.where / name
            try:
                rec = json.loads(path.read_bytes())
            except (OSError, ValueError):
                continue  # replaced under us: the next sweep sees it
            delivered = datetime.fromisoformat(rec.pop("delivered_at")).timestamp()
            digest = hashlib.sha256(json.dumps(rec, sort_keys=True).encode()).hexdigest()
            ended = datetime.fromisoformat(rec["ended_at"]).timestamp()
            job = name[: -len(".json")]
            before = self.seen.get(job)
            if before is None:
                self.seen[job] = (digest, ended, delivered)
            elif before[0] != digest:
                self.double.append(job)
            else:
                self.repeats += 1
            path.unlink(missing_ok=True)


@dataclass
class FaultRun:
    kind: str
    started: float
    ended: float = 0.0
    resumed_s: float | None = None  # from its end until both sinks took new records
    caught_up_s: float | None = None  # from its end until the backlog was back to normal
    note: str = ""


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def proc_sample(pid: int) -> dict[str, Any]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    # utime and stime, the 14th and 15th fields (after the parenthesised command name).
    ticks = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[11:13]
    cpu_s = round(sum(int(t) for t in ticks) / os.sysconf("SC_CLK_TCK"), 2)
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    return {"pid": pid, "rss_kib": rss, "fds": fds, "cpu_s": cpu_s}


def proc_name(pid: int, supervisor: int) -> str:
    """``supervisor``, or ``worker<N>`` from the worker's own ``--worker N`` (the order of a
    supervisor's children changes when a worker is restarted)."""
    if pid == supervisor:
        return "supervisor"
    args = Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")
    return f"worker{args[args.index('--worker') + 1]}" if "--worker" in args else f"pid{pid}"


def broker_consumers(admin_url: str, topics: list[str], subscription: str) -> dict[int, Any]:
    """What the broker says of each consumer on the subscription, by the consumer's pid (its
    name ends with it): messages sent to it so far (over the topics), and its permits and
    unacknowledged messages on each topic."""
    out: dict[int, Any] = {}
    for topic in topics:
        url = f"{admin_url}/admin/v2/persistent/{topic.removeprefix('persistent://')}/stats"
        got = requests.get(url, timeout=3).json()
        for c in got.get("subscriptions", {}).get(subscription, {}).get("consumers", []):
            pid = str(c.get("consumerName", "")).rsplit("-", 1)[-1]
            if not pid.isdigit():
                continue
            entry = out.setdefault(int(pid), {"out": 0, "permits": [], "unacked": []})
            entry["out"] += int(c.get("msgOutCounter", 0))
            entry["permits"].append(int(c.get("availablePermits", 0)))
            entry["unacked"].append(int(c.get("unackedMessages", 0)))
    return out


def broker_connections(pid: int, port: int) -> int:
    """Established TCP connections to the broker seen in the daemon's network namespace."""
    n = 0
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[3] == "01" and int(cols[2].rsplit(":", 1)[1], 16) == port:
                n += 1
    return n


def percentile(values: list[float], p: float) -> float:
    s = sorted(values)
    return round(s[min(len(s) - 1, int(p * len(s)))], 3)


class Soak:
    def __init__(self, s: Settings) -> None:
        self.s = s
        self.work = Path(os.environ.get("SOAK_DIR") or tempfile.mkdtemp(prefix="asrd-soak-"))
        self.work.mkdir(parents=True, exist_ok=True)
        self.script = ROOT / "scripts" / "pulsar"
        self.samples: list[dict[str, Any]] = []
        self.faults: list[FaultRun] = []
        self.planted = 0
        self.stop = threading.Event()
        self.t0 = time.monotonic()
        self.wall0 = time.time()
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_lock = threading.RLock()
        self.daemon_starts = 0
        self.unexpected_exits: list[dict[str, Any]] = []
        self.submitted_n = 0
        self.submitted_ids: list[str] = []
        self.submit_failed = 0
        self.report_unreadable = 0  # lines of the submit's report that were not JSON
        self.skew_events: Counter[str] = Counter()
        broker_port = int(os.environ.get("PULSAR_BROKER_PORT", "6650"))
        self.net = Netns(broker_port)
        self.broker_port = broker_port

    # -- wiring ---------------------------------------------------------------------------
    def broker_env(self) -> dict[str, str]:
        return {
            **os.environ,
            "PULSAR_RUN_DIR": str(self.work / "pulsar"),
            "PULSAR_BIND_ADDRESS": "0.0.0.0",  # loopback and the soak's veth
            "PULSAR_ADVERTISED_ADDRESS": self.net.host_ip,
        }

    def broker(self, action: str) -> str:
        done = subprocess.run(
            [str(self.script), action], capture_output=True, text=True, env=self.broker_env()
        )
        if done.returncode != 0 and action == "start":
            raise RuntimeError(f"soak: the broker did not start: {done.stderr.strip()}")
        return done.stdout.strip()

    def up(self) -> None:
        self.net.up()
        self.pulsar_url = self.broker("start")
        if self.s.ledger == "sqlite":
            self.ledger_fs = Tmpfs(self.work / "ledger", "32m")
            ledger = {"ledger_url": f"sqlite:///{self.ledger_fs.where / 'ledger.db'}"}
            workers = "workers = 1"
        else:
            self.pg = pg.start(host=self.net.host_ip)
            workers = "workers = 2"
        self.emu = start_emulator(
            self.work / "emulator",
            self.pulsar_url,
            "--job-delay",
            str(self.s.job_s),
            "--fault-latency-ms",
            "20:80",
            host=self.net.host_ip,
        )
        self.cmq_port = self.emu.cmq_port
        self.hook = Hook(self.net.host_ip)
        self.files = Tmpfs(self.work / "run" / "results", "64m")
        self.collector = Collector(self.files.where)
        if self.s.ledger != "sqlite":
            ledger = pg.ledger_config(self.pg)
        self.cfg: DaemonConfig = write_config(
            self.work / "run",
            self.emu,
            self.pulsar_url,
            # The production defaults otherwise (attempts, retry delays).
            extra_pulsar=workers,
            extra_sinks=webhook_sink(self.hook.receiver.url(), "timeout_s = 5"),
            ledger_url=ledger["ledger_url"],
            ledger_password=ledger.get("ledger_password", ""),
            formats=("json",),
        )
        self.start_daemon()
        ready = "all workers subscribed" if self.s.ledger != "sqlite" else "subscribed"
        self.wait_subscribed(0, ready)

    def start_daemon(self, skewed: bool = False) -> None:
        env = {**os.environ, **self.cfg.env}
        if skewed:
            env |= {"LD_PRELOAD": FAKETIME_LIB, "FAKETIME": SKEW, "DONT_FAKE_MONOTONIC": "1"}
        with self.daemon_lock:
            self.log_offset = self.cfg.log.stat().st_size if self.cfg.log.exists() else 0
            self.daemon_starts += 1
            self.daemon = subprocess.Popen(
                [*self.net.prefix, *ASRD, "run", "--config", str(self.cfg.path)],
                stdout=subprocess.DEVNULL,
                stderr=self.cfg.log.open("ab"),
                env=env,
            )

    def wait_subscribed(self, offset: int, event: str) -> None:
        def subscribed() -> bool:
            assert self.daemon is not None
            if self.daemon.poll() is not None:
                raise RuntimeError(f"soak: the daemon exited; see {self.cfg.log}")
            with self.cfg.log.open("rb") as fh:
                fh.seek(offset)
                return f'"event": "{event}"'.encode() in fh.read()

        wait_for(subscribed, 180, "the daemon to subscribe", 0.5)

    def kill_daemon(self) -> None:
        with self.daemon_lock:
            if self.daemon is None:
                return
            for pid in [*children(self.daemon.pid), self.daemon.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.daemon.wait()

    def watchdog(self) -> None:
        """Restarts the daemon if it exits on its own, as systemd's Restart=on-failure would,
        and keeps a note: an exit nobody asked for is a finding."""
        while not self.stop.wait(1):
            with self.daemon_lock:
                d = self.daemon
                if d is None or d.poll() is None:
                    continue
                self.unexpected_exits.append({"t": round(self.elapsed(), 1), "rc": d.returncode})
                print(f"[{self.elapsed():7.1f}s] daemon exited {d.returncode}; restart", flush=True)
                time.sleep(5)  # RestartSec=5 in systemd/asrd.service
                self.start_daemon()

    def down(self) -> None:
        """Everything up() made, undone; what up() did not get to is skipped."""
        self.stop.set()
        with self.daemon_lock:
            if self.daemon is not None:
                stop_process(self.daemon, timeout=60)
                self.daemon = None
        for name, undo in (
            ("submit_proc", lambda: stop_process(self.submit_proc, timeout=10)),
            ("hook", lambda: self.hook.close()),
            ("emu", lambda: self.emu.stop()),
            ("files", lambda: self.files.close()),
            ("pg", lambda: self.pg.stop()),
            ("ledger_fs", lambda: self.ledger_fs.close()),
        ):
            if hasattr(self, name):
                with contextlib.suppress(Exception):
                    undo()
        self.broker("stop")
        self.net.down()

    def admin_url(self) -> str:
        ports = dict(
            line.split("=", 1)
            for line in (self.work / "pulsar" / "ports").read_text().split()
            if "=" in line
        )
        return f"http://127.0.0.1:{ports.get('web', '8080')}"

    @functools.cached_property
    def topics(self) -> list[str]:
        """The subscription's topic and its retry-letter topic, which the consumers read."""
        from asrd import config

        pulsar = config.load(self.cfg.path).pulsar
        return [pulsar.topic, pulsar.retry_letter_topic]

    def elapsed(self) -> float:
        return time.monotonic() - self.t0

    # -- load -----------------------------------------------------------------------------
    def submit(self) -> subprocess.Popen[bytes]:
        from asrd import config
        from asrd.ci import CiClient

        client = CiClient(config.load(self.cfg.path).ci)
        client.put_object("media/soak.mp3", b"not audio")
        client.put_object("media/soak.mp3.transcript.txt", "第一句。\nsecond sentence".encode())
        count = int(self.s.duration_s * self.s.rate)
        manifest = self.work / "manifest.csv"
        manifest.write_text(
            "input,user_data\n" + "".join(f"media/soak.mp3,soak={i}\n" for i in range(count))
        )
        self.report = self.work / "submitted.jsonl"
        self.report.touch()
        command = [*ASRD, "submit", "--config", str(self.cfg.path), "--manifest", str(manifest)]
        command += ["--rate", str(self.s.rate), "--report", str(self.report)]
        return subprocess.Popen(
            [*command, "--progress-interval", "60"],
            stdout=subprocess.DEVNULL,
            stderr=(self.work / "submit.log").open("wb"),
            env={**os.environ, **self.cfg.env},
        )

    def plant(self) -> None:
        """A hostile message every 20 s: not JSON, then a TaskFinish for an invalid job id."""
        import logging

        # The client's complaints while the broker restarts go to a file, not the run's output.
        logging.getLogger("tests.pulsar").addHandler(logging.FileHandler(self.work / "planter.log"))
        client = quiet_client(self.pulsar_url)
        try:
            producer = client.create_producer(self.cfg.topic, send_timeout_millis=60_000)
            bodies = [b"\x00\xffnot json at all", b'{"EventName":"TaskFinish","JobsDetail":{}}']
            while not self.stop.wait(20):
                with contextlib.suppress(Exception):
                    producer.send(bodies[self.planted % 2], properties={PLANTED: "1"})
                    self.planted += 1
        finally:
            client.close()

    # -- observation ----------------------------------------------------------------------
    def read_report(self, fh: BinaryIO) -> None:
        for line in complete_lines(fh):
            try:
                job = json.loads(line).get("job_id")
            except ValueError:
                self.report_unreadable += 1  # never seen written so; counted, not fatal
                continue
            if job:
                self.submitted_ids.append(str(job))
            else:
                self.submit_failed += 1
        self.submitted_n = len(self.submitted_ids)

    def count(self) -> None:
        """Once a second: records off the tmpfs, submissions so far."""
        with self.report.open("rb") as fh:
            while not self.stop.wait(1):
                with contextlib.suppress(Exception):
                    self.collector.sweep()
                self.read_report(fh)
            self.read_report(fh)

    def delivered(self) -> tuple[int, int]:
        return len(self.collector.seen), self.hook.count()

    def backlog(self) -> int:
        return self.submitted_n - len(self.collector.seen)

    def sample(self) -> None:
        last = (0, 0.0)
        while not self.stop.wait(10):
            now = self.elapsed()
            files, hook = self.delivered()
            row: dict[str, Any] = {"t": round(now, 1), "files": files, "webhook": hook}
            row["submitted"] = self.submitted_n
            row["rate"] = round((files - last[0]) / max(0.1, now - last[1]), 1)
            cutoff = time.time() - 10
            lat = [d - e for _, e, d in list(self.collector.seen.values())[last[0] :] if d > cutoff]
            if lat:
                row["latency_p50"], row["latency_p99"] = percentile(lat, 0.5), percentile(lat, 0.99)
            last = (files, now)
            procs: dict[str, Any] = {}
            daemon = self.daemon
            if daemon is not None and daemon.poll() is None:
                for pid in [daemon.pid, *children(daemon.pid)]:
                    with contextlib.suppress(OSError, ValueError, IndexError):
                        procs[proc_name(pid, daemon.pid)] = proc_sample(pid)
                row["broker_connections"] = broker_connections(daemon.pid, self.broker_port)
            row["procs"] = procs
            with contextlib.suppress(Exception):  # the broker may be restarting
                by_pid = broker_consumers(self.admin_url(), self.topics, self.cfg.subscription)
                row["consumers"] = {
                    name: by_pid[p["pid"]] for name, p in procs.items() if p["pid"] in by_pid
                }
            if self.s.ledger == "sqlite":
                row["ledger_bytes"] = sum(
                    f.stat().st_size for f in self.ledger_fs.where.glob("ledger.db*")
                )
            with contextlib.suppress(Exception):
                if self.s.ledger == "sqlite":
                    raise LookupError  # the file's size above
                import psycopg

                with psycopg.connect(
                    self.cfg.ledger_url, password=self.cfg.ledger_password, connect_timeout=3
                ) as c:
                    got = c.execute(b"SELECT pg_database_size(current_database())").fetchone()
                    row["ledger_bytes"] = int(got[0]) if got else 0
            self.samples.append(row)

    # -- faults ---------------------------------------------------------------------------
    def actions(self) -> dict[str, tuple[Callable[[], None], Callable[[], None]]]:
        def nothing() -> None:
            return None

        def kill_worker() -> None:
            with self.daemon_lock:
                kids = children(self.daemon.pid) if self.daemon else []
                if kids:
                    os.kill(kids[-1], signal.SIGKILL)

        def kill_daemon() -> None:
            with self.daemon_lock:
                self.kill_daemon()
                self.start_daemon()

        def pg_restart() -> None:
            self.pg.halt()
            self.pg.resume()

        def broker_restart() -> None:
            self.broker("stop")
            self.broker("start")

        def hook(mode: str) -> Callable[[], None]:
            def flip() -> None:
                self.hook.mode = mode

            return flip

        def ci(**values: object) -> Callable[[], None]:
            return lambda: set_faults(self.emu.endpoint, **values)

        def disk_full() -> None:
            self.collector.paused.set()
            self.files.fill()

        def disk_free() -> None:
            self.files.free()
            self.collector.paused.clear()

        def skew() -> None:
            with self.daemon_lock:
                assert self.daemon is not None
                stop_process(self.daemon, timeout=60)
                self.start_daemon(skewed=True)
                self.skew_offset = self.log_offset

        def unskew() -> None:
            with self.daemon_lock:
                self.kill_daemon()
                self.skew_events.update(self.log_events(self.skew_offset))
                self.start_daemon()

        ci_ok = ci(error_rate=0.0, throttle_rps=0, **CI_LATENCY)
        return {
            "kill-worker": (kill_worker, nothing),
            "kill-daemon": (kill_daemon, nothing),
            "broker-restart": (broker_restart, nothing),
            "pg-restart": (pg_restart, nothing),
            "pg-outage": (lambda: self.pg.halt(), lambda: self.pg.resume()),
            "cmq-unreachable": (
                lambda: self.net.block_port(self.cmq_port),
                lambda: self.net.unblock_port(self.cmq_port),
            ),
            "ci-503": (ci(error_rate=1.0, error_code="ServiceUnavailable"), ci_ok),
            "ci-slowdown": (ci(throttle_rps=1), ci_ok),
            "ci-slow": (ci(latency_ms=2000, latency_max_ms=0), ci_ok),
            "webhook-500": (hook("500"), hook("ok")),
            "webhook-timeout": (hook("slow"), hook("ok")),
            "net-degraded": (self.net.degrade, self.net.restore),
            "net-partition": (self.net.partition, self.net.heal),
            "disk-full": (disk_full, disk_free),
            "clock-skew": (skew, unskew),
            "ledger-full": (lambda: self.ledger_fs.fill(), lambda: self.ledger_fs.free()),
        }

    def log_events(self, offset: int) -> Counter[str]:
        """Warnings and errors the daemon logged since ``offset`` (event name: count)."""
        got: Counter[str] = Counter()
        with self.cfg.log.open("rb") as fh:
            fh.seek(offset)
            for line in fh:
                with contextlib.suppress(ValueError):
                    rec = json.loads(line)
                    if rec.get("level") in ("warning", "error", "critical"):
                        got[str(rec.get("event"))] += 1
        return got

    def plan(self) -> list[schedule.Planned]:
        if self.s.kinds == "none":  # a probe of the rate the machine holds
            return []
        if self.s.kinds in ("cheap", "each"):
            budget = self.s.duration_s - 30 - self.s.gap_s
            every = self.s.kinds == "each"
            return schedule._short(budget, self.s.gap_s, every=every, ledger=self.s.ledger)
        if self.s.kinds != "all":  # a comma list of kinds, repeated for the whole run
            names = [n.strip() for n in self.s.kinds.split(",") if n.strip()]
            return schedule.named(self.s.duration_s, self.s.gap_s, names)
        return schedule.plan(self.s.duration_s, self.s.gap_s, ledger=self.s.ledger)

    def run_one(self, kind: str, hold_s: float) -> FaultRun:
        begin, end = self.actions()[kind]
        run = FaultRun(kind, self.elapsed())
        print(f"[{run.started:7.1f}s] fault {kind} ({hold_s:.0f} s)", flush=True)
        base = self.backlog()
        try:
            begin()
            self.stop.wait(hold_s)
        except Exception as exc:  # noqa: BLE001 - a harness failure is reported, the run goes on
            run.note = f"{type(exc).__name__}: {exc}"
        finally:
            try:
                end()
            except Exception as exc:  # noqa: BLE001
                run.note += f" end: {type(exc).__name__}: {exc}"
        run.ended = self.elapsed()
        self.faults.append(run)
        threading.Thread(target=self.recovery, args=(run, base), daemon=True).start()
        return run

    def run_faults(self) -> None:
        self.planned = self.plan()
        for p in self.planned:
            if self.stop.wait(p.gap_before_s):
                return
            if p.overlay:

                def later(kind: str = p.overlay) -> None:
                    if not self.stop.wait(15):
                        self.run_one(kind, schedule.KINDS[kind].hold_s)

                overlay = threading.Thread(target=later, daemon=True)
                overlay.start()
            self.run_one(p.kind, p.hold_s)
            if p.overlay:
                overlay.join()

    def recovery(self, run: FaultRun, base_backlog: int) -> None:
        """Resumed: both sinks took new records after the end. Caught up: the file sink's
        backlog (submitted, not delivered) is back to what it was before the fault or to what
        a few seconds of load and a job's run time make."""
        base = self.delivered()
        normal = max(base_backlog, int(self.s.rate * (self.s.job_s + 5)))
        deadline = time.monotonic() + 900
        while time.monotonic() < deadline and not self.stop.is_set():
            now = self.delivered()
            if run.resumed_s is None and now[0] > base[0] and now[1] > base[1]:
                run.resumed_s = round(self.elapsed() - run.ended, 1)
            if run.resumed_s is not None and self.backlog() <= normal:
                run.caught_up_s = round(self.elapsed() - run.ended, 1)
                return
            time.sleep(0.5)

    # -- the whole run --------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        # Kept afterwards for a post-mortem (logs, the emulator's journal, the broker's data).
        print(f"soak: working in {self.work}", flush=True)
        try:
            self.up()
            self.t0, self.wall0 = time.monotonic(), time.time()  # the clock starts with the load
            submit = self.submit_proc = self.submit()
            for target in (self.sample, self.plant, self.count, self.watchdog):
                threading.Thread(target=target, daemon=True).start()
            self.run_faults()
            submit.wait()
            print(f"[{self.elapsed():7.1f}s] load done; draining", flush=True)
            time.sleep(2)
            with contextlib.suppress(AssertionError):
                wait_for(self.complete, self.s.drain_s, "every job delivered", 2)
            self.load_s = self.elapsed()
            return self.check()
        finally:
            self.down()

    def complete(self) -> bool:
        wanted = set(self.submitted_ids)
        return wanted <= set(self.collector.seen) and wanted <= set(self.hook.acked)

    def finished_jobs(self) -> set[str]:
        """Every job the emulator finished (its journal: the last record of a job wins)."""
        state: dict[str, str] = {}
        journal = self.emu.data_dir / ".asrd-emulator" / "journal.jsonl"
        with journal.open(encoding="utf-8") as fh:
            for line in fh:
                if line.startswith('{"kind": "job"'):
                    with contextlib.suppress(ValueError):
                        rec = json.loads(line)
                        state[rec["job_id"]] = rec.get("state", "")
        return {job for job, st in state.items() if st in ("Success", "Failed")}

    def check(self) -> dict[str, Any]:
        from asrd.ledger import OPEN_STATUSES, open_ledger

        time.sleep(2)  # a last sweep of the tmpfs
        submitted = set(self.submitted_ids)
        finished = self.finished_jobs()
        # Every job CI finished must reach every sink; a submitted job CI never finished would
        # be lost too.
        wanted = finished | submitted
        files = set(self.collector.seen)
        hooked = set(self.hook.acked)
        letters = dead_letters(self.pulsar_url, self.cfg, timeout_ms=5000)
        ledger = open_ledger(self.cfg.ledger_url, password=self.cfg.ledger_password)
        try:
            open_jobs = ledger.list_jobs(OPEN_STATUSES, None, None, 1_000_000)
        finally:
            ledger.close()
        # A job with an id is owed until every sink has it; one without is a create whose
        # outcome the submit could not learn (the deadline sweep or a re-run settles it).
        owed = sum(1 for j in open_jobs if j.job_id is not None)
        unknown_creates = len(open_jobs) - owed
        kinds: dict[str, dict[str, Any]] = {}
        for f in self.faults:
            k = kinds.setdefault(f.kind, {"count": 0, "resumed_s": [], "caught_up_s": []})
            k["count"] += 1
            for key in ("resumed_s", "caught_up_s"):
                if getattr(f, key) is not None:
                    k[key].append(getattr(f, key))
        for k in kinds.values():
            for key in ("resumed_s", "caught_up_s"):
                v = k[key]
                k[key] = {"min": min(v), "median": statistics.median(v), "max": max(v)} if v else {}
        result: dict[str, Any] = {
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "load_average_at_end": os.getloadavg(),
            "settings": asdict(self.s),
            "network_degrade": self.net.degrade_mode or "not run",
            "duration_s": round(self.load_s, 1),
            "jobs_submitted": len(submitted),
            "jobs_finished_by_ci": len(finished),
            "jobs_submitted_not_finished": len(submitted - finished),
            "delivered": {"files": len(wanted & files), "webhook": len(wanted & hooked)},
            "lost": {"files": sorted(wanted - files)[:20], "webhook": sorted(wanted - hooked)[:20]},
            "lost_count": len(wanted - files) + len(wanted - hooked),
            "double_effects": {
                "files": len(self.collector.double),
                "webhook": sum(1 for b in self.hook.bodies.values() if len(b) > 1),
            },
            "repeat_deliveries": {
                "files": self.collector.repeats,
                "webhook": sum(1 for n in self.hook.acked.values() if n > 1),
            },
            "dead_letters": len(letters),
            "dead_letters_not_planted": sum(1 for m in letters if PLANTED not in m.properties()),
            "planted": self.planted,
            "owed_at_end": owed,
            "unknown_creates_at_end": unknown_creates,
            # Creates whose outcome stayed unknown (CI down when asked): the ledger keeps them
            # owed until a re-run of ``asrd submit`` settles them, as it should.
            "submit_failed": self.submit_failed,
            "submit_report_unreadable_lines": self.report_unreadable,
            "daemon_starts": self.daemon_starts,
            "daemon_unexpected_exits": self.unexpected_exits,
            "clock_skew_log_events": dict(self.skew_events.most_common(10)),
            "faults": [asdict(f) for f in self.faults],
            "fault_count": len(self.faults),
            "fault_kinds": kinds,
            "latency_s_outside_faults": self.latencies(),
            "growth": self.growth(),
            "samples": self.samples,
        }
        result["verdict"] = verdict(result)
        return result

    def latencies(self) -> dict[str, float]:
        """CI's end time → delivered_at of the file sink's record, for jobs CI finished and
        the sink got neither during a fault nor while the backlog it left was worked off
        (until it caught up; 60 s when that was not measured). With faults 20 s apart, a
        fixed margin after each would leave almost nothing outside."""
        windows = [
            (self.wall0 + f.started, self.wall0 + f.ended + (f.caught_up_s or 60.0) + 1)
            for f in self.faults
        ]
        # A job CI finished inside a window waited out the fault too, whenever it arrived.
        values = [
            d - e
            for _, e, d in self.collector.seen.values()
            if not any(a <= d <= b or a <= e <= b for a, b in windows)
        ]
        if not values:
            return {}
        return {
            "count": len(values),
            "p50": percentile(values, 0.5),
            "p90": percentile(values, 0.9),
            "p99": percentile(values, 0.99),
            "max": round(max(values), 3),
        }

    def growth(self) -> dict[str, Any]:
        """RSS and open FDs of each process and the broker connections: the mean over the
        second quarter of the samples against the mean over the last."""
        n = len(self.samples)
        if n < 8:
            return {}
        q2, q4 = self.samples[n // 4 : n // 2], self.samples[3 * n // 4 :]
        out: dict[str, Any] = {}

        def compare(name: str, a: list[float], b: list[float]) -> None:
            growth = growth_between(a, b)
            if growth is not None:
                out[name] = growth

        for proc in ("supervisor", "worker0", "worker1"):
            for metric in ("rss_kib", "fds"):
                compare(
                    f"{proc} {metric}",
                    [s["procs"][proc][metric] for s in q2 if proc in s["procs"]],
                    [s["procs"][proc][metric] for s in q4 if proc in s["procs"]],
                )
        compare(
            "broker_connections",
            [s["broker_connections"] for s in q2 if "broker_connections" in s],
            [s["broker_connections"] for s in q4 if "broker_connections" in s],
        )
        return out


def verdict(r: dict[str, Any]) -> dict[str, bool]:
    """The checker's verdicts, each true when the run proved it."""
    return {
        "nothing_lost": r["lost_count"] == 0,
        "no_double_effects": r["double_effects"]["files"] == 0
        and r["double_effects"]["webhook"] == 0,
        "every_dead_letter_planted": r["dead_letters_not_planted"] == 0,
        "nothing_owed": r["owed_at_end"] == 0
        and r.get("unknown_creates_at_end", 0) <= r["submit_failed"],
    }


def machine() -> str:
    cpus = os.cpu_count()
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":")[1].strip()
    return f"{platform.node()}: {platform.machine()}, {cpus} CPUs, {mem} RAM, {platform.release()}"


def main() -> int:
    if os.geteuid() != 0:
        print("soak: run as root (network namespace, tmpfs)", file=sys.stderr)
        return 2

    def interrupted(signum: int, _frame: object) -> None:
        # Started in the background, SIGINT may be ignored: take SIGTERM and SIGINT alike,
        # and leave through run()'s cleanup (namespace, tmpfs, servers).
        raise SystemExit(f"soak: stopped by signal {signum}")

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, interrupted)
    load_before = os.getloadavg()
    result = Soak(Settings()).run()
    result["load_average_at_start"] = load_before
    out = Path(os.environ.get("SOAK_RESULTS") or RESULTS)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / datetime.now(UTC).strftime("%Y-%m-%dT%H%MZ")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(result, stem.with_suffix(".svg").name))
    stem.with_suffix(".svg").write_text(svg(result))
    print(markdown(result, stem.with_suffix(".svg").name))
    print(f"soak: results in {stem}.json", flush=True)
    return 0 if all(result["verdict"].values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
