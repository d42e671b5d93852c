"""How much the intake's producer grows the process per message moved, against a baseline measured
in the same run.

Both runs send CI-sized notifications (about 1.5 KB) from 4 threads, as the CMQ intake's 4 receive
loops do, 16 at a time, each thread waiting for its 16 before the next. Baseline: each thread
calls pulsar-client's ``send_async`` itself (the plain way, and what the intake did before).
Measured: the same through asrd's ``Forwarder.send_all``. Each runs in a fresh process; its RSS
(VmRSS) is read after a warm-up and again after ``--messages`` more. With pulsar-client 3.13 the
baseline grows about 2.5 MB per calling thread over its first tens of thousands of messages
(docs/soak.md). Target: the forwarder grows at most a quarter of what the baseline grows (and,
should the baseline ever stop growing, at most 1 MiB). Writes benchmarks/results/intake_memory.json.

Usage: .venv/bin/python benchmarks/intake_memory.py [--messages 40000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import quiet_client  # noqa: E402

from benchmarks.harness import provenance  # noqa: E402
from benchmarks.intake_move import body, broker_urls  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "intake_memory.json"
THREADS = 4
BATCH = 16
WARM_UP = 10_000
RATIO_BOUND = 0.25
FLAT_KIB = 1024  # growth below this is noise (a page here and there), whatever the baseline


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc/self/status")


def die(reason: str) -> None:
    """End the run from any thread (a thread's SystemExit would leave the others waiting)."""
    sys.stderr.write(f"{reason}\n")
    sys.stderr.flush()
    os._exit(1)


def plain_sender(producer: Any) -> Any:
    """A batch as a user would send it: send_async from the calling thread, wait for each."""
    import pulsar

    def send(bodies: list[bytes], props: dict[str, str]) -> None:
        done = threading.Semaphore(0)
        failed: list[str] = []

        def callback(res: Any, _msg_id: Any) -> None:
            # Never raise here: an exception in the client's callback thread aborts the process.
            if res != pulsar.Result.Ok:
                failed.append(f"broker answered {res}")
            done.release()

        for b in bodies:
            producer.send_async(b, callback, properties=dict(props))
        for _ in bodies:
            if not done.acquire(timeout=60):
                die("the broker did not confirm within 60 s")
        if failed:
            die(failed[0])

    return send


def child(kind: str, service_url: str, messages: int) -> dict[str, Any]:
    """Runs in its own process: warm up, then measure RSS over ``messages``."""
    from asrd.intake.forward import Forwarder, Outgoing

    client = quiet_client(service_url)
    topic = f"persistent://public/default/bench-memory-{kind}-{uuid.uuid4().hex[:8]}"
    bodies = [body(i).encode() for i in range(BATCH)]
    props = {"CMQ_QUEUE": "bench", "CMQ_MSG_ID": "m", "CMQ_DEQUEUE_COUNT": "1"}
    if kind == "baseline":
        producer = client.create_producer(
            topic, batching_enabled=False, send_timeout_millis=30_000, block_if_queue_full=True
        )
        send = plain_sender(producer)
        close = producer.close
    else:
        forwarder = Forwarder(client, topic)
        outgoing = [Outgoing(b, props) for b in bodies]
        close = forwarder.close

        def send(_bodies: list[bytes], _props: dict[str, str]) -> None:
            failed = [f for f in forwarder.send_all(outgoing, 60) if f is not None]
            if failed:
                die(failed[0])

    # The same threads warm up and are measured, as the intake's loops live as long as it.
    phases = [WARM_UP // THREADS // BATCH, messages // THREADS // BATCH]
    gate = threading.Barrier(THREADS + 1)

    def loop() -> None:
        for batches in phases:
            for _ in range(batches):
                send(bodies, props)
            gate.wait()  # the main thread reads RSS between the phases
            gate.wait()

    threads = [threading.Thread(target=loop, daemon=True) for _ in range(THREADS)]
    for t in threads:
        t.start()
    gate.wait()
    before = rss_kib()
    started = time.monotonic()
    gate.wait()
    gate.wait()
    took = time.monotonic() - started
    after = rss_kib()
    gate.wait()
    for t in threads:
        t.join()
    close()
    client.close()  # before the interpreter's exit, which a live native client can crash
    return {"rss_before_kib": before, "rss_after_kib": after, "seconds": round(took, 1)}


def measure(kind: str, service_url: str, messages: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            __file__,
            "--child",
            kind,
            "--url",
            service_url,
            "--messages",
            str(messages),
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    if out.returncode != 0:
        raise SystemExit(f"the {kind} run failed ({out.returncode}): {out.stderr[-2000:]}")
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=40_000)
    ap.add_argument("--child", choices=("baseline", "forwarder"))
    ap.add_argument("--url", default="")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.url, args.messages)))
        return 0
    service_url, _admin, started_here = broker_urls()
    try:
        baseline = measure("baseline", service_url, args.messages)
        forwarder = measure("forwarder", service_url, args.messages)
    finally:
        if started_here:
            subprocess.run([str(ROOT / "scripts" / "pulsar"), "stop"], check=False)
    grew_base = baseline["rss_after_kib"] - baseline["rss_before_kib"]
    grew_fwd = forwarder["rss_after_kib"] - forwarder["rss_before_kib"]
    allowed = max(RATIO_BOUND * grew_base, FLAT_KIB)
    result = {
        "key": "intake_memory_vs_plain_send_async",
        "messages": args.messages,
        "threads": THREADS,
        "batch": BATCH,
        "baseline": baseline,
        "forwarder": forwarder,
        "baseline_growth_kib": grew_base,
        "forwarder_growth_kib": grew_fwd,
        "baseline_bytes_per_msg": round(grew_base * 1024 / args.messages, 1),
        "forwarder_bytes_per_msg": round(grew_fwd * 1024 / args.messages, 1),
        "ratio": round(grew_fwd / grew_base, 3) if grew_base > 0 else None,
        "bound": RATIO_BOUND,
        "allowed_growth_kib": round(allowed),
        "verdict": "pass" if grew_fwd <= allowed else "miss",
        "load_average": os.getloadavg(),
        **provenance(),
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
