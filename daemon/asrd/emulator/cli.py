"""``asrd emulator`` command line: parse flags, serve until SIGTERM/SIGINT, close Pulsar cleanly."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
from collections import Counter
from pathlib import Path

from asrd.emulator.faults import FaultConfig, Faults
from asrd.emulator.http import serve
from asrd.emulator.jobs import JobStore
from asrd.emulator.journal import Journal
from asrd.emulator.lifecycle import JobRunner
from asrd.emulator.notify import Notifier
from asrd.emulator.server import App
from asrd.emulator.signature import Credential, Verifier
from asrd.emulator.storage import ObjectStore

log = logging.getLogger("asrd.emulator")


def _listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError("expected HOST:PORT")
    return host.strip("[]") or "127.0.0.1", int(port)


def _key(value: str) -> Credential:
    parts = value.split(":", 2)
    if len(parts) < 2 or not parts[0] or not parts[1]:
        raise argparse.ArgumentTypeError("expected SECRET_ID:SECRET_KEY[:TOKEN]")
    return Credential(parts[0], parts[1], parts[2] if len(parts) == 3 and parts[2] else None)


def _latency(value: str) -> tuple[float, float]:
    low, _, high = value.partition(":")
    try:
        lo = float(low)
        hi = float(high) if high else lo
    except ValueError as exc:
        raise argparse.ArgumentTypeError("expected MS or MIN_MS:MAX_MS") from exc
    if lo < 0 or hi < lo:
        raise argparse.ArgumentTypeError("expected 0 <= MIN_MS <= MAX_MS")
    return lo, hi


def _rate(value: str) -> float:
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError("a rate is between 0 and 1")
    return rate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="asrd emulator",
        description="Local Tencent CI speech-recognition (asr_jobs) + COS object emulator.",
    )
    p.add_argument("--listen", type=_listen, default=("127.0.0.1", 9000), metavar="HOST:PORT")
    p.add_argument("--pulsar-url", default="pulsar://127.0.0.1:6650")
    p.add_argument("--data-dir", type=Path, required=True, help="objects: DIR/<bucket>/<key>")
    p.add_argument(
        "--key",
        type=_key,
        action="append",
        required=True,
        metavar="SECRET_ID:SECRET_KEY[:TOKEN]",
        help="accepted key pair (repeatable); with TOKEN the security-token header is required",
    )
    p.add_argument("--topic-template", default="persistent://public/default/{MqName}")
    p.add_argument(
        "--job-delay", type=float, default=1.0, help="seconds from create to terminal state"
    )
    p.add_argument("--log-level", default="WARNING")
    f = p.add_argument_group("fault injection (also changeable at run time: PUT /-/faults)")
    f.add_argument("--fault-latency-ms", type=_latency, default=(0.0, 0.0), metavar="MS[:MAX]")
    f.add_argument("--fault-error-rate", type=_rate, default=0.0)
    f.add_argument(
        "--fault-error-code",
        choices=["ServiceUnavailable", "InternalError", "mixed"],
        default="ServiceUnavailable",
    )
    f.add_argument("--fault-throttle-rps", type=int, default=0, help="503 SlowDown above N/s")
    f.add_argument("--fault-job-fail-rate", type=_rate, default=0.0)
    f.add_argument("--fault-job-fail-code", default="InternalError")
    f.add_argument("--fault-job-fail-message", default="injected failure")
    f.add_argument("--fault-callback-drop-rate", type=_rate, default=0.0)
    f.add_argument("--fault-callback-duplicate-rate", type=_rate, default=0.0)
    f.add_argument("--fault-callback-delay-rate", type=_rate, default=0.0)
    f.add_argument("--fault-callback-delay-s", type=float, default=2.0)
    f.add_argument("--fault-callback-early-rate", type=_rate, default=0.0)
    f.add_argument("--fault-callback-early-s", type=float, default=1.0)
    f.add_argument("--fault-seed", type=int, default=None)
    return p


def fault_config(args: argparse.Namespace) -> FaultConfig:
    lo, hi = args.fault_latency_ms
    return FaultConfig(
        latency_ms=lo,
        latency_max_ms=hi,
        error_rate=args.fault_error_rate,
        error_code=args.fault_error_code,
        throttle_rps=args.fault_throttle_rps,
        job_fail_rate=args.fault_job_fail_rate,
        job_fail_code=args.fault_job_fail_code,
        job_fail_message=args.fault_job_fail_message,
        callback_drop_rate=args.fault_callback_drop_rate,
        callback_duplicate_rate=args.fault_callback_duplicate_rate,
        callback_delay_rate=args.fault_callback_delay_rate,
        callback_delay_s=args.fault_callback_delay_s,
        callback_early_rate=args.fault_callback_early_rate,
        callback_early_s=args.fault_callback_early_s,
    )


async def run(args: argparse.Namespace, notifier: Notifier) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    stats: Counter[str] = Counter()
    faults = Faults(fault_config(args), seed=args.fault_seed)
    journal = Journal(args.data_dir)
    store = JobStore(journal)
    unfinished = store.restore()
    objects = ObjectStore(args.data_dir)
    runner = JobRunner(store, objects, notifier, faults, max(0.0, args.job_delay), stats)
    app = App(Verifier(args.key), store, objects, runner, faults, stats)
    for job in unfinished:  # jobs cut short by the last stop run again from the start
        runner.start(job)
    host, port = args.listen
    server = await serve(app.handle, host, port)
    bound = server.sockets[0].getsockname()
    shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
    sys.stdout.write(f"asrd emulator listening on http://{shown}:{bound[1]}\n")
    sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        server.close()
        await runner.drain(timeout=5.0)
        try:
            await asyncio.wait_for(loop.run_in_executor(None, notifier.close), timeout=20)
        except TimeoutError:
            log.warning("closing the Pulsar client took too long; exiting anyway")
        journal.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    notifier = Notifier(args.pulsar_url, args.topic_template)
    try:
        rc = asyncio.run(run(args, notifier))
    except (OSError, ValueError) as exc:  # port taken, data dir unusable, journal unreadable
        log.error("cannot start: %s", exc)
        return 1
    if notifier.used_pulsar:
        # Producers and client are flushed and closed by now. pulsar-client can still abort in
        # C++ destructors at interpreter exit (pulsar-client-python#256, "terminate called
        # without an active exception", seen in the fault tests), so skip them.
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(rc)
    return rc
