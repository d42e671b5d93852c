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
from typing import Any

from asrd.emulator.cmq import REGION_RE, Cmq, QueueSpec, TopicSpec, queue_spec, topic_spec
from asrd.emulator.cmq_api import CmqApi
from asrd.emulator.faults import FaultConfig, Faults
from asrd.emulator.http import application, serve
from asrd.emulator.jobs import JobStore
from asrd.emulator.journal import Journal
from asrd.emulator.keys import Credential, Keyring
from asrd.emulator.lifecycle import JobRunner
from asrd.emulator.notify import Notifier
from asrd.emulator.server import App
from asrd.emulator.shapes import SHAPES
from asrd.emulator.signature import Verifier
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


def _options(texts: list[str]) -> dict[str, Any]:
    """``key=N`` options; values stay text when not digits, so the check names them."""
    out: dict[str, Any] = {}
    for text in texts:
        key, sep, raw = text.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected KEY=N, got {text!r}")
        out[key] = int(raw) if raw.isdigit() else raw
    return out


def _cmq_queue(value: str) -> QueueSpec:
    """``REGION:NAME[:visibility=S][:maxsize=B][:polling=S][:max_unacked=S]``"""
    region, sep, rest = value.partition(":")
    if not sep:
        raise argparse.ArgumentTypeError("expected REGION:NAME[:visibility=S][:maxsize=B]")
    name, *options = rest.split(":")
    try:
        return queue_spec(region, name, **_options(options))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _cmq_topic(value: str) -> TopicSpec:
    """``REGION:NAME:QUEUE[,QUEUE...][:maxsize=B]``"""
    parts = value.split(":")
    if len(parts) < 3 or not parts[2]:
        raise argparse.ArgumentTypeError("expected REGION:NAME:QUEUE[,QUEUE...][:maxsize=B]")
    region, name, queues, *options = parts
    try:
        return topic_spec(region, name, queues.split(","), **_options(options))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _region(value: str) -> str:
    if not REGION_RE.match(value):
        raise argparse.ArgumentTypeError("expected a short region code such as gz")
    return value


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


def _positive(value: str) -> float:
    try:
        seconds = float(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError("expected seconds") from exc
    if seconds <= 0:
        raise argparse.ArgumentTypeError("must be positive")
    return seconds


def _rate(value: str) -> float:
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise argparse.ArgumentTypeError("a rate is between 0 and 1")
    return rate


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="asrd emulator",
        description="Local Tencent CI speech-recognition (asr_jobs), COS object and TDMQ-CMQ"
        " emulator.",
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
    k = p.add_argument_group(
        "temporary keys (CVM metadata paths and STS on the --listen address; /-/credentials)"
    )
    k.add_argument(
        "--credential-ttl",
        type=_positive,
        default=3600.0,
        metavar="S",
        help="lifetime of the temporary keys it issues (default 3600)",
    )
    k.add_argument(
        "--role-name",
        default="asrd-emulator-role",
        help="the CAM role the metadata service names",
    )
    c = p.add_argument_group("TDMQ-CMQ (where CallBackType=TDMQ notifications go)")
    c.add_argument(
        "--cmq-listen",
        type=_listen,
        metavar="HOST:PORT",
        help="serve the CMQ data-flow API on this address as well",
    )
    c.add_argument(
        "--cmq-default-region",
        type=_region,
        default="gz",
        help="region of a CMQ request whose Host header names none (default gz)",
    )
    c.add_argument(
        "--cmq-queue",
        type=_cmq_queue,
        action="append",
        default=[],
        metavar="REGION:NAME[:visibility=S][:maxsize=B][:polling=S][:max_unacked=S]",
        help="declare a queue (repeatable; kept in the journal)",
    )
    c.add_argument(
        "--cmq-topic",
        type=_cmq_topic,
        action="append",
        default=[],
        metavar="REGION:NAME:QUEUE[,QUEUE...][:maxsize=B]",
        help="declare a topic with queue subscriptions (repeatable; kept in the journal)",
    )
    c.add_argument(
        "--tdmq-to-pulsar",
        action="store_true",
        help="legacy: publish TDMQ notifications to the Pulsar topic --topic-template instead"
        " of CMQ (for setups that forward CMQ to Pulsar themselves)",
    )
    c.add_argument(
        "--topic-template",
        default="persistent://public/default/{MqName}",
        help="with --tdmq-to-pulsar: the Pulsar topic for an MqName",
    )
    p.add_argument(
        "--job-delay", type=float, default=1.0, help="seconds from create to terminal state"
    )
    p.add_argument(
        "--shape",
        action="append",
        default=[],
        choices=SHAPES,
        help="render describes and callbacks in this documented variant (repeatable)",
    )
    p.add_argument(
        "--queue-id-optional",
        action="store_true",
        help="accept create and list on /asr_jobs without QueueId (the bucket's default queue);"
        " by default they are refused, as the /asr_jobs documents require it",
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
    f.add_argument(
        "--fault-cmq-error-rate", type=_rate, default=0.0, help="share of CMQ API calls failed"
    )
    f.add_argument(
        "--fault-cmq-error-code",
        type=int,
        choices=[6000, 4420, 502, 503],
        default=6000,
        help="6000/4420: that code in the JSON answer; 502/503: that HTTP status",
    )
    f.add_argument(
        "--fault-create-response-drop-rate",
        type=_rate,
        default=0.0,
        help="share of creates whose job is made but whose answer is lost",
    )
    f.add_argument(
        "--fault-create-response-drop-mode", choices=["close", "error", "mixed"], default="mixed"
    )
    f.add_argument("--fault-job-stall-rate", type=_rate, default=0.0, help="jobs that never finish")
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
        cmq_error_rate=args.fault_cmq_error_rate,
        cmq_error_code=args.fault_cmq_error_code,
        create_response_drop_rate=args.fault_create_response_drop_rate,
        create_response_drop_mode=args.fault_create_response_drop_mode,
        job_stall_rate=args.fault_job_stall_rate,
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
    cmq = Cmq(journal, stats)
    records = list(journal.records())
    unfinished = store.restore(records)
    cmq.restore(records)
    del records
    journal.rewrite(store.snapshot() + cmq.snapshot())
    for spec in args.cmq_queue:
        cmq.declare_queue(spec)
    for topic in args.cmq_topic:
        cmq.declare_topic(topic)
    objects = ObjectStore(args.data_dir)
    runner = JobRunner(
        store,
        objects,
        notifier,
        faults,
        max(0.0, args.job_delay),
        stats,
        cmq,
        tdmq_to_pulsar=args.tdmq_to_pulsar,
        shapes=frozenset(args.shape),
    )
    keys = Keyring(args.key, ttl_s=args.credential_ttl, role=args.role_name)
    app = App(
        Verifier(keys),
        store,
        objects,
        runner,
        faults,
        stats,
        cmq,
        queue_id_required=not args.queue_id_optional,
    )
    for job in unfinished:  # jobs cut short by the last stop run again from the start
        runner.start(job)
    servers = [await serve(application(app.routes(), app.dispatch), *args.listen)]
    if args.cmq_listen is not None:
        api = CmqApi(cmq, keys, args.cmq_default_region, stats, faults)
        servers.append(await serve(application(api.routes(), api.dispatch), *args.cmq_listen))
    names = ["asrd emulator", "asrd emulator CMQ"]
    for name, server in zip(names, servers, strict=False):
        host, port = server.address
        shown = f"[{host}]" if ":" in host else host
        sys.stdout.write(f"{name} listening on http://{shown}:{port}\n")
        sys.stdout.flush()
    try:
        await stop.wait()
    finally:
        for server in servers:
            await server.close()
        await runner.drain(timeout=5.0)
        try:
            await asyncio.wait_for(loop.run_in_executor(None, notifier.close), timeout=20)
        except TimeoutError:
            log.warning("closing the Pulsar client took too long; exiting anyway")
        journal.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    declared = {(q.region, q.name) for q in args.cmq_queue}
    for topic in args.cmq_topic:
        for queue in topic.queues:
            if (topic.region, queue) not in declared:
                parser.error(
                    f"argument --cmq-topic: topic {topic.name} subscribes queue {queue!r},"
                    f" which no --cmq-queue {topic.region}:{queue} declares"
                )
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
