"""The processes the integration tests and the benchmarks run for real: the emulator, the
daemon, and their config (benchmarks/harness.py adds only its samplers and the broker check)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config" / "asrd.example.toml"  # the example configuration README points to
ASRD = [sys.executable, "-m", "asrd.cli"]
# `asrd emulator` without loading the client side first (a third of the start-up's CPU);
# tests/test_cli.py checks that `asrd emulator` is the same program.
EMULATOR = [sys.executable, "-m", "asrd.emulator"]
SECRET_ID = "AKIDasrdtest0000000000000000000000"
SECRET_KEY = "asrdtestsecretkey000000000000000"
BUCKET = "asrd-test-1250000000"
REGION = "ap-guangzhou"


def wait_for(check: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


@dataclass
class Emulator:
    proc: subprocess.Popen[str]
    endpoint: str
    data_dir: Path
    cmq_endpoint: str = ""

    def declare_queue(self, name: str, region: str = "gz", **attrs: int) -> None:
        """Create a CMQ queue at run time, as the console would (``visibility``, ``maxsize``)."""
        import requests

        r = requests.put(f"{self.endpoint}/-/cmq/queues/{region}/{name}", json=attrs, timeout=10)
        r.raise_for_status()

    def declare_topic(self, name: str, queues: list[str], region: str = "gz") -> None:
        import requests

        r = requests.put(
            f"{self.endpoint}/-/cmq/topics/{region}/{name}", json={"queues": queues}, timeout=10
        )
        r.raise_for_status()

    def stats(self) -> dict[str, Any]:
        """The ``/-/faults`` document: fault settings, ``counts`` of faults that fired and the
        ``stats`` counters (jobs created, callbacks sent, HTTP errors...)."""
        import requests

        return dict(requests.get(f"{self.endpoint}/-/faults", timeout=10).json())

    def cmq_state(self) -> dict[str, Any]:
        """``/-/cmq``: every CMQ queue and topic with its depth."""
        import requests

        return dict(requests.get(f"{self.endpoint}/-/cmq", timeout=10).json())

    def callbacks_sent(self) -> int:
        stats = self.stats().get("stats", {})  # delivery counters; "counts" are fault hits
        return sum(v for k, v in stats.items() if k.startswith("callback_sent"))

    @property
    def port(self) -> int:
        return int(self.endpoint.rsplit(":", 1)[1])

    @property
    def cmq_port(self) -> int:
        assert self.cmq_endpoint, "started without --cmq-listen"
        return int(self.cmq_endpoint.rsplit(":", 1)[1])

    def set_faults(self, **values: object) -> None:
        set_faults(self.endpoint, **values)

    def stop(self) -> int:
        return stop_process(self.proc, timeout=15)


def stop_process(proc: subprocess.Popen[Any], timeout: float = 20.0) -> int:
    """SIGTERM, then SIGKILL after ``timeout``; returns the exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def stop_daemon(daemon: subprocess.Popen[Any]) -> int:
    """SIGTERM to ``asrd run`` (one process or a supervisor) and its exit status once drained;
    SIGKILL, seen as -9, if it is still running 45 s later (the default shutdown deadline is
    30 s)."""
    return stop_process(daemon, timeout=45.0)


def start_emulator(
    data_dir: Path,
    pulsar_url: str,
    *extra: str,
    cmq: bool = True,
    keys: tuple[str, ...] = (f"{SECRET_ID}:{SECRET_KEY}",),
    host: str = "127.0.0.1",
) -> Emulator:
    """The emulator on free ports; with ``cmq`` (the default) also its CMQ endpoint, where CI's
    callbacks go as in production. Without it, pass ``--tdmq-to-pulsar`` to have callbacks
    published to Pulsar directly (the benchmarks' pre-filled topics). ``keys``: the accepted
    ``SECRET_ID:SECRET_KEY[:TOKEN]`` pairs. Its stderr goes to ``data_dir/emulator.log``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    log = (data_dir / "emulator.log").open("w")
    proc = subprocess.Popen(
        [
            *EMULATOR,
            "--listen",
            f"{host}:0",
            "--pulsar-url",
            pulsar_url,
            "--data-dir",
            str(data_dir),
            *(arg for key in keys for arg in ("--key", key)),
            *(["--cmq-listen", f"{host}:0"] if cmq else []),
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
    )
    assert proc.stdout is not None
    lines = [proc.stdout.readline().strip() for _ in range(2 if cmq else 1)]
    started = lines[0].startswith("asrd emulator listening on ")
    if not started or (cmq and "CMQ listening on" not in lines[1]):
        proc.kill()
        raise AssertionError(f"emulator did not start: {lines!r}; see {data_dir / 'emulator.log'}")
    cmq_endpoint = lines[1].rsplit(" ", 1)[1] if cmq else ""
    return Emulator(proc, lines[0].rsplit(" ", 1)[1], data_dir, cmq_endpoint)


@dataclass
class DaemonConfig:
    path: Path
    topic: str
    subscription: str
    results: Path
    mq_name: str
    env: dict[str, str] = field(default_factory=dict)
    ledger_url: str = ""  # empty: the SQLite file next to the config
    ledger_password: str = ""

    @property
    def dir(self) -> Path:
        return self.path.parent

    @property
    def log(self) -> Path:
        """Where ``start_daemon`` writes the daemon's log unless told otherwise."""
        return self.dir / "daemon.log"


def write_config(
    tmp: Path,
    emulator: Emulator | str,
    pulsar_url: str,
    callback_format: str = "JSON",
    extra_pulsar: str = "",
    extra_sinks: str = "",
    queue_attrs: dict[str, int] | None = None,
    extra: str = "",
    mq_name: str = "",
    intake: bool = True,
    formats: tuple[str, ...] = ("json", "txt"),
    ledger_url: str = "",
    ledger_password: str = "",
) -> DaemonConfig:
    """The daemon's config wired as in production: CI notifies a CMQ queue (declared here in the
    emulator), ``[intake.cmq]`` moves it onto the run's Pulsar topic. A plain endpoint string
    (no emulator running) gets a placeholder CMQ endpoint, for tests that never connect.
    ``intake=False`` leaves the intake out (the topic is filled some other way).
    ``ledger_url``: another ledger than the SQLite file (a PostgreSQL database, its password
    passed through ``password_file``)."""
    tmp.mkdir(parents=True, exist_ok=True)
    mq_name = mq_name or f"asr-{uuid.uuid4().hex[:10]}"
    topic = f"persistent://public/default/{mq_name}"
    results = tmp / "results"
    path = tmp / "asrd.toml"
    if isinstance(emulator, Emulator):
        endpoint, cmq_endpoint = emulator.endpoint, emulator.cmq_endpoint
        if intake:
            emulator.declare_queue(mq_name, **(queue_attrs or {"visibility": 5}))
    else:
        endpoint, cmq_endpoint = emulator, "http://127.0.0.1:1"
    intake_section = (
        # The emulator's CMQ host names no region; it serves gz, as mq_region's default says.
        f'[intake.cmq]\nendpoint = "{cmq_endpoint}"\nqueue = "{mq_name}"\nregion = "gz"\n'
        "polling_wait_s = 5\nunreachable_after_s = 10\n"
        if intake
        else ""
    )
    sqlite_url = f"sqlite:///{tmp / 'ledger.db'}"
    password_line = f'password_file = "{tmp / "ledger_password"}"' if ledger_password else ""
    path.write_text(
        f"""
[ci]
region = "{REGION}"
bucket = "{BUCKET}"
secret_id = "{SECRET_ID}"
secret_key_file = "{tmp / "secret_key"}"
endpoint = "{endpoint}"

[ci.callback]
format = "{callback_format}"
mq_name = "{mq_name}"

{intake_section}
[pulsar]
service_url = "{pulsar_url}"
topic = "{topic}"
subscription = "asrd"
nack_delay_ms = 1000
{extra_pulsar}

[ledger]
url = "{ledger_url or sqlite_url}"
{password_line}

[log]
level = "info"

[[sinks]]
name = "files"
type = "file"
dir = "{results}"
formats = {json.dumps(list(formats))}
{extra_sinks}
{extra}
"""
    )
    (tmp / "secret_key").write_text(SECRET_KEY + "\n")
    if ledger_password:
        (tmp / "ledger_password").write_text(ledger_password + "\n")
    return DaemonConfig(
        path, topic, "asrd", results, mq_name, ledger_url=ledger_url,
        ledger_password=ledger_password,
    )  # fmt: skip


def start_daemon(
    cfg: DaemonConfig, log_path: Path, wait_subscribed: bool = True, ready_event: str = "subscribed"
) -> subprocess.Popen[bytes]:
    """``asrd run`` as its own process; by default returns once it has subscribed (with
    ``[pulsar] workers``: ``ready_event="all workers subscribed"``)."""
    env = {**os.environ, **cfg.env}
    offset = log_path.stat().st_size if log_path.exists() else 0
    proc = subprocess.Popen(
        [*ASRD, "run", "--config", str(cfg.path)],
        stdout=subprocess.DEVNULL,
        stderr=log_path.open("ab"),
        env=env,
    )
    if wait_subscribed:

        def subscribed() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"daemon exited {proc.returncode}; see {log_path}")
            with log_path.open("rb") as fh:
                fh.seek(offset)
                return f'"event": "{ready_event}"'.encode() in fh.read()

        try:
            wait_for(subscribed, 30, "the daemon to subscribe")
        except AssertionError:
            stop_process(proc, timeout=5)  # no test holds it yet: it must not outlive this one
            raise
    return proc


def asrd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ASRD, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def set_faults(endpoint: str, **values: object) -> None:
    """Change the running emulator's fault injection (PUT /-/faults)."""
    import requests

    r = requests.put(f"{endpoint}/-/faults", json=values, timeout=10)
    r.raise_for_status()


def create_jobs(cfg: DaemonConfig, count: int, threads: int = 8) -> list[str]:
    """Submit ``count`` jobs through asrd's own client (callbacks as configured); their ids."""
    from concurrent.futures import ThreadPoolExecutor

    from asrd import config, queueid
    from asrd.ci import CiClient
    from asrd.submit import build_request

    settings = config.load(cfg.path).ci
    client = CiClient(settings)
    settings = queueid.resolved(config.load(cfg.path), client).ci  # as asrd submit does
    client.put_object("media/bulk.mp3", b"not audio")
    client.put_object("media/bulk.mp3.transcript.txt", "第一句。\nsecond sentence".encode())
    request = build_request(settings, input_object="media/bulk.mp3")
    with ThreadPoolExecutor(threads) as pool:
        details = pool.map(lambda _: client.create_job(request), range(count), chunksize=64)
        return [str(d["JobId"]) for d in details]


def result_ids(cfg: DaemonConfig) -> set[str]:
    if not cfg.results.exists():
        return set()
    return {p.stem for p in cfg.results.glob("s*.json")}


def ledger_rows(cfg: DaemonConfig) -> list[tuple[str, str]]:
    if cfg.ledger_url.startswith("postgresql://"):
        import psycopg

        with psycopg.connect(cfg.ledger_url, password=cfg.ledger_password) as conn:
            rows = conn.execute(b"SELECT job_id, sink FROM deliveries").fetchall()
        return [(str(r[0]), str(r[1])) for r in rows]
    import sqlite3

    db = sqlite3.connect(cfg.path.parent / "ledger.db")
    try:
        return [(r[0], r[1]) for r in db.execute("SELECT job_id, sink FROM deliveries")]
    finally:
        db.close()


def read_topic(pulsar_url: str, topic: str, timeout_ms: int = 2000) -> list[Any]:
    """Every message on ``topic`` from the start (a reader: nothing is acknowledged)."""
    import pulsar

    client = quiet_client(pulsar_url)
    try:
        reader = client.create_reader(topic, pulsar.MessageId.earliest)
        found = []
        while True:
            try:
                found.append(reader.read_next(timeout_millis=timeout_ms))
            except pulsar.Timeout:
                return found
    finally:
        client.close()


def dead_letters(pulsar_url: str, cfg: DaemonConfig, timeout_ms: int = 1000) -> list[Any]:
    """Every message on the run's dead-letter topic."""
    return read_topic(pulsar_url, f"{cfg.topic}-asrd-DLQ", timeout_ms=timeout_ms)


def webhook_sink(url: str, extra: str = "") -> str:
    """A ``[[sinks]]`` table for ``write_config(extra_sinks=...)``: the webhook sink "app"
    posting to ``url``; ``extra``: more of its keys, as TOML lines."""
    return f'\n[[sinks]]\nname = "app"\ntype = "webhook"\nurl = "{url}"\n{extra}'


def quiet_client(pulsar_url: str) -> Any:
    """A pulsar client whose C++ INFO chatter stays out of test output."""
    import logging

    import pulsar

    logger = logging.getLogger("tests.pulsar")
    logger.setLevel(logging.WARNING)
    return pulsar.Client(pulsar_url, logger=logger)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def readyz(port: int) -> int:
    import requests

    try:
        return requests.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code
    except requests.RequestException:
        return 0


def official_cmq_queue(cmq_endpoint: str, name: str) -> Any:
    """A queue handle from Tencent's own CMQ SDK (``qcloud-cmq-sdk-py3``): a client nobody here
    wrote, to put messages into and check the emulator's queues from outside asrd."""
    import logging

    # Without a handler of its own the SDK opens CMQ_python_sdk.log in the working directory.
    logging.getLogger("CMQ_python_sdk").addHandler(logging.NullHandler())
    from cmq.account import Account

    return Account(cmq_endpoint, SECRET_ID, SECRET_KEY).get_queue(name)


class Clock:
    """A fake clock for pure timing logic (rate limiters): ``sleep`` moves it, nothing waits."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds
