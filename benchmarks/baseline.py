"""The baseline: the plain script a user might write instead of asrd (``make bench``'s yardstick).

pulsar-client receive → the SDK's ``ci_get_asr_job`` → write the job as JSON → acknowledge, on
32 threads (or ``--threads``). No ledger, no retries beyond the broker's redelivery, no dead
letters, no readiness, no metrics: what asrd is measured against. It stops when ``--expected``
files exist, or after ``--seconds``, or when nothing arrived for ``--idle-seconds``; it prints
one JSON line: files written, seconds from the first file to the last, and the CPU it used.

Run by benchmarks/scale.py as its own process (so its CPU is its own); by hand:

    .venv/bin/python benchmarks/baseline.py --service-url pulsar://127.0.0.1:6650 \\
        --topic persistent://public/default/t --subscription s --endpoint http://127.0.0.1:PORT \\
        --bucket asrd-bench-1250000000 --secret-id AKID... --secret-key ... --out /tmp/out
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import resource
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pulsar
from qcloud_cos import CosConfig, CosS3Client

JOB_ID = re.compile(rb"s[0-9a-f]{32}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--service-url", default=os.environ.get("PULSAR_SERVICE_URL"), required=False)
    p.add_argument("--topic", required=True)
    p.add_argument("--subscription", required=True)
    p.add_argument("--endpoint", required=True, help="http://HOST:PORT of CI (the emulator)")
    p.add_argument("--region", default="ap-guangzhou")
    p.add_argument("--bucket", required=True)
    p.add_argument("--secret-id", required=True)
    p.add_argument("--secret-key", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--threads", type=int, default=32)
    p.add_argument("--expected", type=int, default=0)
    p.add_argument("--seconds", type=float, default=0.0, help="stop after this long (0: never)")
    p.add_argument("--idle-seconds", type=float, default=20.0)
    p.add_argument(
        "--logger",
        choices=("python", "native"),
        default="python",
        help="quiet the client through a Python logger (as the baseline was first measured) or its "
        "own console logger at WARN (no crossing into Python for its DEBUG lines)",
    )
    return p


def main() -> int:
    args = _parser().parse_args()
    quiet: logging.Logger | pulsar.ConsoleLogger
    if args.logger == "native":
        quiet = pulsar.ConsoleLogger(pulsar.LoggerLevel.Warn)
    else:
        quiet = logging.getLogger("baseline.pulsar")
        quiet.setLevel(logging.ERROR)
    client = pulsar.Client(args.service_url or "pulsar://127.0.0.1:6650", logger=quiet)
    consumer = client.subscribe(
        args.topic, args.subscription, consumer_type=pulsar.ConsumerType.Shared,
        receiver_queue_size=1000,
    )  # fmt: skip
    parts = urlsplit(args.endpoint)
    ci = CosS3Client(
        CosConfig(
            Region=args.region, SecretId=args.secret_id, SecretKey=args.secret_key,
            IP=parts.hostname, Port=parts.port, Scheme=parts.scheme,
        ),
        retry=1,
    )  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    lock = threading.Lock()
    stats = {"files": 0, "first": 0.0, "last": 0.0, "errors": 0}
    stop = threading.Event()
    started = time.monotonic()

    def work() -> None:
        while not stop.is_set():
            try:
                msg = consumer.receive(timeout_millis=500)
            except pulsar.Timeout:
                continue
            found = JOB_ID.search(msg.data())
            if found is None:
                consumer.acknowledge(msg)
                continue
            job_id = found.group().decode()
            try:
                answer = ci.ci_get_asr_job(Bucket=args.bucket, JobID=job_id)
            except Exception:  # the plain way: try again later
                consumer.negative_acknowledge(msg)
                with lock:
                    stats["errors"] += 1
                continue
            (args.out / f"{job_id}.json").write_text(json.dumps(answer, ensure_ascii=False))
            consumer.acknowledge(msg)
            now = time.time()
            with lock:
                stats["files"] += 1
                stats["first"] = stats["first"] or now
                stats["last"] = now
                if args.expected and stats["files"] >= args.expected:
                    stop.set()

    threads = [threading.Thread(target=work, daemon=True) for _ in range(args.threads)]
    for t in threads:
        t.start()
    seen, progress = 0, time.monotonic()
    while not stop.wait(0.5):
        now = time.monotonic()
        if args.seconds and now - started >= args.seconds:
            break
        if stats["files"] > seen:
            seen, progress = stats["files"], now
        elif now - progress > args.idle_seconds:
            break
    stop.set()
    for t in threads:
        t.join(timeout=5)
    usage = resource.getrusage(resource.RUSAGE_SELF)
    span = stats["last"] - stats["first"]
    print(
        json.dumps(
            {
                "files": stats["files"],
                "errors": stats["errors"],
                "seconds": round(span, 3),
                "jobs_per_s": round((stats["files"] - 1) / span, 1) if span > 0 else 0.0,
                "cpu_s": round(usage.ru_utime + usage.ru_stime, 3),
            }
        ),
        flush=True,
    )
    consumer.close()
    client.close()
    return 0


if __name__ == "__main__":
    code = main()
    # pulsar-client's C++ side can abort during interpreter teardown; everything is closed.
    os._exit(code)
