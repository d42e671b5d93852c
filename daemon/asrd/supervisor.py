"""``[pulsar] workers = N``: N consumer processes on one subscription under one supervisor.

Python runs one core per process; N workers use N. The supervisor is what the service manager
sees (systemd's main PID, a container's PID 1 child):

- it forwards SIGTERM/SIGINT to every worker and waits for them to drain; a second signal is
  forwarded too (the workers then leave at once);
- it answers with one exit status: 78 if any worker said its configuration is wrong (the
  others are stopped then: they share the configuration), 1 if a worker failed while
  stopping, else 0;
- it gives each worker its own ``$NOTIFY_SOCKET``: READY=1 goes up only when every worker has
  said READY=1 (subscribed), and WATCHDOG=1 only while every worker is alive and has pinged its
  own watchdog in time;
- it restarts a worker that died (a crash, SIGKILL, the OOM killer) with exponential backoff,
  reset once the worker has run for ``stable_s``;
- it gives the workers one directory for their metrics (prometheus-client's multiprocess mode,
  ``PROMETHEUS_MULTIPROC_DIR``), so worker 0's /metrics counts for all of them and its
  /readyz answers 200 only while every worker says it is subscribed and connected.

It holds no broker connection, ledger or CI client of its own, and all its waiting happens in
one thread.
"""

from __future__ import annotations

import os
import secrets
import selectors
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import FrameType

import structlog
from prometheus_client.multiprocess import mark_process_dead

from . import backoff, systemd

log = structlog.get_logger("asrd.supervisor")

EX_OK, EX_FATAL, EX_CONFIG = 0, 1, 78
_UCRED = struct.Struct("3i")  # pid, uid, gid of a datagram's sender (SCM_CREDENTIALS)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the forked worker, before exec: SIGTERM when the supervisor dies (even by SIGKILL),
    so workers never outlive it and drain as on any stop."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


@dataclass
class Worker:
    index: int
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    ready: bool = False
    last_ping: float = 0.0
    restarts: int = 0
    next_start: float = 0.0  # monotonic time of the next (re)start while it is down

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Supervisor:
    count: int
    command: Callable[[int], Sequence[str]]
    deadline_s: float
    restart_base_s: float = 1.0
    restart_cap_s: float = 30.0
    stable_s: float = 60.0
    workers: list[Worker] = field(default_factory=list)
    _stopping: int = 0  # signals received
    _signals: list[int] = field(default_factory=list)
    _announced_ready: bool = False
    _metrics_dir: str = ""

    def run(self) -> int:
        upstream_watchdog = _watchdog_interval()
        # Abstract socket: nothing on disk (read-only roots, PrivateTmp), gone with the process.
        name = f"@asrd-supervisor-{os.getpid()}-{secrets.token_hex(4)}"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        sock.bind("\0" + name[1:])
        sock.setblocking(False)
        env = _worker_env(name, upstream_watchdog)
        shared = _metrics_dir()
        if shared:
            env["PROMETHEUS_MULTIPROC_DIR"] = self._metrics_dir = shared
        self.workers = [Worker(i) for i in range(self.count)]
        previous = {s: signal.signal(s, self._on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
        selector = selectors.DefaultSelector()
        selector.register(sock, selectors.EVENT_READ)
        try:
            for worker in self.workers:
                self._start(worker, env)
            log.info("workers started", workers=self.count, pids=self._pids())
            status = self._loop(selector, sock, env, upstream_watchdog)
        finally:
            selector.close()
            sock.close()
            if self._metrics_dir:
                shutil.rmtree(self._metrics_dir, ignore_errors=True)
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return status

    # -- the loop ----------------------------------------------------------------------------
    def _loop(
        self,
        selector: selectors.BaseSelector,
        sock: socket.socket,
        env: dict[str, str],
        upstream_watchdog: float | None,
    ) -> int:
        config_error = False
        failed = False
        stop_deadline = float("inf")
        next_ping = time.monotonic()
        while True:
            now = time.monotonic()
            while self._signals:
                self._forward(self._signals.pop(0))
                if self._stopping == 1:
                    stop_deadline = now + self.deadline_s + 10.0
            for worker in self.workers:
                code = worker.proc.poll() if worker.proc is not None else None
                if worker.proc is None or code is None:
                    continue
                if self._metrics_dir:
                    # Its counters stay (they count what it did); its live gauges go.
                    mark_process_dead(worker.proc.pid, self._metrics_dir)  # type: ignore[no-untyped-call]
                worker.proc, worker.ready = None, False
                if code == EX_CONFIG:
                    config_error = True
                    log.error("worker reports a configuration error", worker=worker.index)
                elif self._stopping:
                    failed = failed or code != EX_OK
                else:
                    self._schedule_restart(worker, code, now)
            if config_error and not self._stopping:
                self._stopping = 1  # the others run on the same configuration: stop them
                self._forward(signal.SIGTERM)
                stop_deadline = now + self.deadline_s + 10.0
            if self._stopping:
                if not any(w.alive for w in self.workers):
                    return EX_CONFIG if config_error else EX_FATAL if failed else EX_OK
                if now > stop_deadline:
                    self._kill_all()
                    failed = True
            else:
                for worker in self.workers:
                    if worker.proc is None and now >= worker.next_start:
                        self._start(worker, env)
            if not self._announced_ready and all(w.ready for w in self.workers):
                self._announced_ready = True
                systemd.notify("READY=1")
                log.info("all workers subscribed", workers=self.count)
            if upstream_watchdog is not None and now >= next_ping:
                next_ping = now + upstream_watchdog / 2
                if self._all_alive(now, upstream_watchdog):
                    systemd.notify("WATCHDOG=1")
            for _key, _ in selector.select(timeout=0.1):
                self._receive(sock)

    def _receive(self, sock: socket.socket) -> None:
        while True:
            try:
                data, ancillary, _, _ = sock.recvmsg(4096, socket.CMSG_SPACE(_UCRED.size))
            except BlockingIOError:
                return
            pid = None
            for level, kind, payload in ancillary:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = _UCRED.unpack(payload[: _UCRED.size])[0]
            worker = next((w for w in self.workers if w.proc and w.proc.pid == pid), None)
            if worker is None:
                continue
            for line in data.decode(errors="replace").splitlines():
                if line == "READY=1":
                    worker.ready = True
                    worker.last_ping = time.monotonic()
                    log.info("worker subscribed", worker=worker.index, pid=pid)
                elif line == "WATCHDOG=1":
                    worker.last_ping = time.monotonic()

    def _all_alive(self, now: float, interval: float) -> bool:
        return all(w.alive and w.ready and now - w.last_ping < interval for w in self.workers)

    # -- workers -----------------------------------------------------------------------------
    def _start(self, worker: Worker, env: dict[str, str]) -> None:
        worker.proc = subprocess.Popen(
            list(self.command(worker.index)),
            env={**env, "ASRD_WORKER_INDEX": str(worker.index)},
            preexec_fn=_die_with_parent,  # safe: the supervisor forks from its only thread
            # Its own process group: a terminal's Ctrl-C reaches the supervisor alone, which
            # forwards it once (twice would make the workers leave without draining).
            process_group=0,
        )
        worker.started_at = time.monotonic()
        worker.ready = False
        worker.last_ping = worker.started_at

    def _schedule_restart(self, worker: Worker, code: int, now: float) -> None:
        if now - worker.started_at >= self.stable_s:
            worker.restarts = 0  # it had been running well: start again soon
        worker.restarts += 1
        wait = backoff.delay(worker.restarts, self.restart_base_s, self.restart_cap_s)
        worker.next_start = now + wait
        log.warning(
            "worker died; restarting",
            worker=worker.index,
            exit_status=_describe_exit(code),
            restart_in_s=round(wait, 2),
            restarts=worker.restarts,
        )

    def _forward(self, signum: int) -> None:
        for worker in self.workers:
            if worker.alive and worker.proc is not None:
                worker.proc.send_signal(signum)

    def _kill_all(self) -> None:
        for worker in self.workers:
            if worker.alive and worker.proc is not None:
                log.warning("worker still running past the deadline; killing", worker=worker.index)
                worker.proc.kill()

    def _on_signal(self, signum: int, _: FrameType | None) -> None:
        self._stopping += 1
        self._signals.append(signum)
        if self._stopping == 1:
            systemd.notify("STOPPING=1")

    def _pids(self) -> list[int]:
        return [w.proc.pid for w in self.workers if w.proc is not None]


def _metrics_dir() -> str:
    """A fresh directory for the workers' metrics files and readiness ('' if none can be
    made: then each worker's /metrics would be its own, worker 0 alone serves one, and its
    /readyz is its own)."""
    try:
        return tempfile.mkdtemp(prefix="asrd-metrics-")
    except OSError as exc:
        log.warning("no directory for the workers' metrics; /metrics and /readyz show "
                    "worker 0 only", error=str(exc))  # fmt: skip
        return ""


def _watchdog_interval() -> float | None:
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or (pid.isdigit() and int(pid) != os.getpid()):
        return None
    return int(usec) / 1e6


def _worker_env(notify_socket: str, watchdog_s: float | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WATCHDOG_PID", "LISTEN_PID")}
    env["NOTIFY_SOCKET"] = notify_socket
    if watchdog_s is not None:
        env["WATCHDOG_USEC"] = str(int(watchdog_s * 1e6))
    else:
        env.pop("WATCHDOG_USEC", None)
    return env


def _describe_exit(code: int) -> str:
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit {code}"


def worker_command(config_path: str) -> Callable[[int], list[str]]:
    """How the supervisor starts worker ``i``: this interpreter, ``asrd run --worker i``."""
    return lambda index: [
        sys.executable, "-m", "asrd.cli", "run", "--config", config_path,
        "--worker", str(index),
    ]  # fmt: skip
