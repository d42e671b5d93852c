"""The soak: the production wiring under a steady load while faults come one after another,
then a checker that proves nothing was lost or applied twice. Results go to
``soak/results/<UTC date and time>.json`` and ``.md``.

Wiring: the emulator (CI, COS, CMQ; jobs take ``SOAK_JOB_S``, CI answers in 20-80 ms), the real
broker (``scripts/pulsar``), PostgreSQL (Debian's, as the tests run it), ``asrd run`` with
``workers = 2`` on the PostgreSQL ledger and the CMQ intake, a file sink on a tmpfs and a webhook
sink whose local receiver records every delivery with its idempotency key. ``asrd submit``
feeds ``SOAK_RATE`` jobs/s for ``SOAK_S`` seconds; hostile messages are planted on the topic at
a low rate (only these may be dead-lettered).

Faults, in turn, each lasting a while and spaced by ``SOAK_GAP_S`` seconds: SIGKILL of one
worker, SIGKILL of the whole daemon and a restart, a broker restart, the webhook answering 500,
the webhook refusing connections, the file sink's disk full, CI answering 503.

Run as root (tmpfs mounts) from the repository: ``make soak`` or
``SOAK_S=600 .venv/bin/python -m soak.run``.
"""

from __future__ import annotations

import contextlib
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
from typing import Any

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
    start_daemon,
    start_emulator,
    stop_process,
    wait_for,
    webhook_sink,
    write_config,
)

PLANTED = "asrd-soak-planted"  # property of every hostile message the soak publishes
RESULTS = ROOT / "soak" / "results"


def env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


@dataclass
class Settings:
    duration_s: float = field(default_factory=lambda: env_float("SOAK_S", 3600))
    rate: float = field(default_factory=lambda: env_float("SOAK_RATE", 100))
    gap_s: float = field(default_factory=lambda: env_float("SOAK_GAP_S", 45))
    job_s: float = field(default_factory=lambda: env_float("SOAK_JOB_S", 2.0))
    fault_s: float = field(default_factory=lambda: env_float("SOAK_FAULT_S", 30))
    drain_s: float = field(default_factory=lambda: env_float("SOAK_DRAIN_S", 600))


class Hook:
    """The webhook's receiver: every delivery recorded with its key; 500s or refused
    connections on demand. It applies a record once per idempotency key (its effect)."""

    def __init__(self) -> None:
        self.fail_all = False
        self.acked: Counter[str] = Counter()
        self.bodies: dict[str, set[str]] = {}  # key -> distinct record contents acknowledged
        self._lock = threading.Lock()
        self.receiver = Receiver(self._reply)
        self.port = self.receiver.port

    def _reply(self, got: Received) -> tuple[int, float]:
        key = got.headers.get("idempotency-key", "")
        with self._lock:
            if self.fail_all:
                return 500, 0.0
            self.acked[key] += 1
            record = got.json()
            record.pop("delivered_at", None)
            self.bodies.setdefault(key, set()).add(json.dumps(record, sort_keys=True))
            return 200, 0.0

    def down(self) -> None:
        self.receiver.close()

    def up(self) -> None:
        self.receiver = Receiver(self._reply, port=self.port)


@dataclass
class FaultRun:
    kind: str
    started: float
    ended: float = 0.0
    recovered_s: float | None = None  # from its end until delivery came back


class Tmpfs:
    def __init__(self, where: Path, size: str) -> None:
        where.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True
        )
        self.where = where

    def fill(self) -> None:
        with (self.where / "filler").open("wb", buffering=0) as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 65536)
        with (self.where / "filler").open("ab", buffering=0) as fh, contextlib.suppress(OSError):
            while True:
                fh.write(b"\0" * 512)

    def free(self) -> None:
        (self.where / "filler").unlink(missing_ok=True)

    def close(self) -> None:
        subprocess.run(["umount", "-l", str(self.where)], check=False)


def children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def proc_sample(pid: int) -> dict[str, int]:
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    return {"rss_kib": rss, "fds": len(os.listdir(f"/proc/{pid}/fd"))}


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
        self.daemon: subprocess.Popen[bytes] | None = None
        self.daemon_starts = 0

    # -- wiring ---------------------------------------------------------------------------
    def up(self) -> None:
        started = subprocess.run([str(self.script), "start"], capture_output=True, text=True)
        if started.returncode != 0:
            raise SystemExit(f"soak: the broker did not start: {started.stderr.strip()}")
        self.pulsar_url = started.stdout.strip()
        self.pg = pg.start()
        self.emu = start_emulator(
            self.work / "emulator",
            self.pulsar_url,
            "--job-delay",
            str(self.s.job_s),
            "--fault-latency-ms",
            "20:80",
        )
        self.hook = Hook()
        self.files = Tmpfs(self.work / "run" / "results", "512m")
        ledger = pg.ledger_config(self.pg)
        self.cfg: DaemonConfig = write_config(
            self.work / "run",
            self.emu,
            self.pulsar_url,
            # The production defaults otherwise (attempts, retry delays).
            extra_pulsar="workers = 2",
            extra_sinks=webhook_sink(self.hook.receiver.url(), "timeout_s = 5"),
            ledger_url=ledger["ledger_url"],
            ledger_password=ledger["ledger_password"],
        )
        self.start_daemon()

    def start_daemon(self) -> None:
        self.daemon_starts += 1
        self.daemon = start_daemon(self.cfg, self.cfg.log, ready_event="all workers subscribed")

    def down(self) -> None:
        self.stop.set()
        if self.daemon is not None:
            stop_process(self.daemon, timeout=60)
        with contextlib.suppress(Exception):
            self.hook.down()
        self.emu.stop()
        self.files.close()
        self.pg.stop()
        subprocess.run([str(self.script), "stop"], check=False)

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
        return subprocess.Popen(
            [
                *ASRD,
                "submit",
                "--config",
                str(self.cfg.path),
                "--manifest",
                str(manifest),
                "--rate",
                str(self.s.rate),
                "--report",
                str(self.report),
                "--progress-interval",
                "60",
            ],
            stdout=subprocess.DEVNULL,
            stderr=(self.work / "submit.log").open("wb"),
            env={**os.environ, **self.cfg.env},
        )

    def plant(self) -> None:
        """A hostile message every 20 s: not JSON, then a TaskFinish for an invalid job id."""
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
    def delivered(self) -> tuple[int, int]:
        files = sum(1 for _ in self.cfg.results.glob("s*.json"))
        return files, len(self.hook.acked)

    def sample(self) -> None:
        while not self.stop.wait(10):
            row: dict[str, Any] = {"t": round(self.elapsed(), 1)}
            row["files"], row["webhook"] = self.delivered()
            daemon = self.daemon
            procs: dict[str, Any] = {}
            if daemon is not None and daemon.poll() is None:
                for i, pid in enumerate([daemon.pid, *children(daemon.pid)]):
                    with contextlib.suppress(OSError):
                        procs["supervisor" if i == 0 else f"worker{i - 1}"] = proc_sample(pid)
            row["procs"] = procs
            with contextlib.suppress(Exception):
                import psycopg

                with psycopg.connect(self.cfg.ledger_url, password=self.cfg.ledger_password) as c:
                    got = c.execute(b"SELECT pg_database_size(current_database())").fetchone()
                    row["ledger_bytes"] = int(got[0]) if got else 0
            self.samples.append(row)

    # -- faults ---------------------------------------------------------------------------
    def faults_catalogue(self) -> list[tuple[str, Callable[[], None], Callable[[], None]]]:
        def kill_worker() -> None:
            assert self.daemon is not None
            kids = children(self.daemon.pid)
            if kids:
                os.kill(kids[-1], signal.SIGKILL)

        def kill_daemon() -> None:
            assert self.daemon is not None
            for pid in [*children(self.daemon.pid), self.daemon.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            self.daemon.wait()

        def broker_stop() -> None:
            subprocess.run([str(self.script), "stop"], check=False)

        def broker_start() -> None:
            subprocess.run([str(self.script), "start"], check=False, stdout=subprocess.DEVNULL)

        def hook_500(on: bool) -> Callable[[], None]:
            def flip() -> None:
                self.hook.fail_all = on

            return flip

        def ci_503(on: bool) -> Callable[[], None]:
            return lambda: set_faults(
                self.emu.endpoint, error_rate=1.0 if on else 0.0, error_code="ServiceUnavailable"
            )

        nothing: Callable[[], None] = lambda: None  # noqa: E731
        return [
            ("kill-worker", kill_worker, nothing),
            ("webhook-500", hook_500(True), hook_500(False)),
            ("kill-daemon", kill_daemon, self.start_daemon),
            ("disk-full", self.files.fill, self.files.free),
            ("ci-503", ci_503(True), ci_503(False)),
            ("webhook-refused", self.hook.down, self.hook.up),
            ("broker-restart", broker_stop, broker_start),
        ]

    def run_faults(self, until: float) -> None:
        catalogue = self.faults_catalogue()
        i = 0
        while not self.stop.wait(self.s.gap_s) and self.elapsed() + self.s.fault_s < until:
            kind, begin, end = catalogue[i % len(catalogue)]
            i += 1
            run = FaultRun(kind, self.elapsed())
            print(f"[{run.started:7.1f}s] fault {kind}", flush=True)
            begin()
            hold = 0.0 if kind in ("kill-worker", "kill-daemon") else self.s.fault_s
            self.stop.wait(hold)
            end()
            run.ended = self.elapsed()
            self.faults.append(run)
            threading.Thread(target=self.recovery, args=(run,), daemon=True).start()

    def recovery(self, run: FaultRun) -> None:
        """Time from the fault's end until both sinks take new records again."""
        base = self.delivered()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not self.stop.is_set():
            now = self.delivered()
            if now[0] > base[0] and now[1] > base[1]:
                run.recovered_s = round(self.elapsed() - run.ended, 1)
                return
            time.sleep(0.5)

    # -- the whole run --------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        self.up()
        self.t0 = time.monotonic()  # the run's clock starts with the load, not the set-up
        try:
            submit = self.submit()
            threads = [
                threading.Thread(target=self.sample, daemon=True),
                threading.Thread(target=self.plant, daemon=True),
            ]
            for t in threads:
                t.start()
            self.run_faults(self.s.duration_s)
            submit.wait()
            jobs = self.submitted()
            print(f"[{self.elapsed():7.1f}s] load done: {len(jobs)} jobs; draining", flush=True)
            with contextlib.suppress(AssertionError):
                wait_for(lambda: self.complete(jobs), self.s.drain_s, "every job delivered", 2)
            self.stop.set()
            return self.check(jobs)
        finally:
            self.down()

    def submitted(self) -> list[str]:
        ids = []
        for line in self.report.read_text().splitlines():
            job = json.loads(line).get("job_id")
            if job:
                ids.append(str(job))
        return ids

    def failed_submits(self) -> int:
        return sum(
            1 for line in self.report.read_text().splitlines() if not json.loads(line).get("job_id")
        )

    def complete(self, jobs: list[str]) -> bool:
        files = {p.stem for p in self.cfg.results.glob("s*.json")}
        return set(jobs) <= files and set(jobs) <= set(self.hook.acked)

    def check(self, jobs: list[str]) -> dict[str, Any]:
        from asrd.ledger import open_ledger

        files = {p.stem: p for p in self.cfg.results.glob("s*.json")}
        wanted = set(jobs)
        letters = dead_letters(self.pulsar_url, self.cfg, timeout_ms=3000)
        ledger = open_ledger(self.cfg.ledger_url, password=self.cfg.ledger_password)
        try:
            owed = ledger.job_stats(time.time()).owed
        finally:
            ledger.close()
        latencies = self.latencies(files, wanted)
        rss = self.rss_growth()
        by_kind: dict[str, list[float]] = {}
        for f in self.faults:
            if f.recovered_s is not None:
                by_kind.setdefault(f.kind, []).append(f.recovered_s)
        return {
            "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "machine": machine(),
            "settings": asdict(self.s),
            "duration_s": round(self.elapsed(), 1),
            "jobs_submitted": len(jobs),
            "delivered": {
                "files": len(wanted & set(files)),
                "webhook": len(wanted & set(self.hook.acked)),
            },
            "lost": {
                "files": sorted(wanted - set(files))[:20],
                "webhook": sorted(wanted - set(self.hook.acked))[:20],
            },
            "lost_count": len(wanted - set(files)) + len(wanted - set(self.hook.acked)),
            "repeat_deliveries_webhook": sum(1 for n in self.hook.acked.values() if n > 1),
            "double_effects_webhook": sum(1 for b in self.hook.bodies.values() if len(b) > 1),
            "dead_letters": len(letters),
            "dead_letters_not_planted": sum(1 for m in letters if PLANTED not in m.properties()),
            "planted": self.planted,
            "owed_at_end": owed,
            # Creates whose outcome stayed unknown (CI down when asked): the ledger keeps them
            # owed until a re-run of ``asrd submit`` settles them, as it should.
            "submit_failed": self.failed_submits(),
            "daemon_starts": self.daemon_starts,
            "faults": [asdict(f) for f in self.faults],
            "fault_kinds": dict(Counter(f.kind for f in self.faults)),
            "recovery_s": {
                k: {"min": min(v), "median": statistics.median(v), "max": max(v)}
                for k, v in by_kind.items()
            },
            "latency_s_outside_faults": latencies,
            "rss": rss,
            "samples": self.samples,
        }

    def latencies(self, files: dict[str, Path], wanted: set[str]) -> dict[str, float]:
        """CI's end time → delivered_at of the file sink's record, for records delivered more
        than 60 s after any fault ended and not during one."""
        windows = [(f.started, f.ended + 60) for f in self.faults]
        wall0 = time.time() - self.elapsed()
        values = []
        for job, path in files.items():
            if job not in wanted:
                continue
            with contextlib.suppress(Exception):
                rec = json.loads(path.read_text())
                ended = datetime.fromisoformat(rec["ended_at"]).timestamp()
                delivered = datetime.fromisoformat(rec["delivered_at"]).timestamp()
                t = delivered - wall0
                if not any(a <= t <= b for a, b in windows):
                    values.append(delivered - ended)
        if not values:
            return {}
        values.sort()

        def pct(p: float) -> float:
            return round(values[min(len(values) - 1, int(p * len(values)))], 3)

        return {"count": len(values), "p50": pct(0.5), "p99": pct(0.99), "max": values[-1]}

    def rss_growth(self) -> dict[str, Any]:
        """RSS of each process, second quarter against last quarter (mean), restarts aside."""
        n = len(self.samples)
        if n < 8:
            return {}
        out: dict[str, Any] = {}
        q2, q4 = self.samples[n // 4 : n // 2], self.samples[3 * n // 4 :]
        for name in ("supervisor", "worker0", "worker1"):
            a = [s["procs"][name]["rss_kib"] for s in q2 if name in s["procs"]]
            b = [s["procs"][name]["rss_kib"] for s in q4 if name in s["procs"]]
            if a and b:
                out[name] = {
                    "q2_kib": round(statistics.mean(a)),
                    "q4_kib": round(statistics.mean(b)),
                    "growth": round(statistics.mean(b) / statistics.mean(a) - 1, 3),
                }
        return out


def machine() -> str:
    cpus = os.cpu_count()
    mem = ""
    with contextlib.suppress(OSError):
        mem = Path("/proc/meminfo").read_text().splitlines()[0].split(":")[1].strip()
    return f"{platform.node()}: {platform.machine()}, {cpus} CPUs, {mem} RAM, {platform.release()}"


def markdown(r: dict[str, Any]) -> str:
    lines = [
        f"# Soak {r['finished_at']}",
        "",
        f"Machine: {r['machine']} (shared with other work while it ran).",
        "",
        f"- duration: {r['duration_s']} s at {r['settings']['rate']} jobs/s submitted",
        f"- jobs submitted: {r['jobs_submitted']}; delivered: files {r['delivered']['files']}, "
        f"webhook {r['delivered']['webhook']}",
        f"- **lost: {r['lost_count']}**; double effects at the webhook: "
        f"**{r['double_effects_webhook']}** (repeat deliveries of one key, absorbed by the "
        f"receiver's dedupe: {r['repeat_deliveries_webhook']})",
        f"- dead letters: {r['dead_letters']} ({r['dead_letters_not_planted']} not planted; "
        f"{r['planted']} planted)",
        f"- owed at the end: {r['owed_at_end']} (creates `asrd submit` reported failed, their "
        f"outcome unknown: {r['submit_failed']}); daemon starts: {r['daemon_starts']}",
        f"- latency outside fault windows (CI end → file sink): {r['latency_s_outside_faults']}",
        "",
        "| fault | count | recovery min / median / max (s) |",
        "|---|---|---|",
    ]
    for kind, count in r["fault_kinds"].items():
        rec = r["recovery_s"].get(kind)
        text = f"{rec['min']} / {rec['median']} / {rec['max']}" if rec else "not measured"
        lines.append(f"| {kind} | {count} | {text} |")
    lines += ["", "| process | RSS 2nd quarter (KiB) | RSS last quarter (KiB) | growth |"]
    lines.append("|---|---|---|---|")
    for name, v in r["rss"].items():
        lines.append(f"| {name} | {v['q2_kib']} | {v['q4_kib']} | {v['growth']:+.1%} |")
    return "\n".join(lines) + "\n"


def main() -> int:
    if os.geteuid() != 0:
        print("soak: run as root (it mounts a tmpfs for the file sink)", file=sys.stderr)
        return 2
    result = Soak(Settings()).run()
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = RESULTS / datetime.now(UTC).strftime("%Y-%m-%dT%H%MZ")
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    stem.with_suffix(".md").write_text(markdown(result))
    print(markdown(result))
    ok = result["lost_count"] == 0 and result["double_effects_webhook"] == 0
    ok = ok and result["dead_letters_not_planted"] == 0
    ok = ok and result["dead_letters"] == result["planted"]
    ok = ok and result["owed_at_end"] <= result["submit_failed"]
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
