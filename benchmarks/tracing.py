"""What tracing costs the consumer: throughput and CPU per job of ``asrd run`` draining the same
backlog of finished jobs three times in one run, as ratios to the first.

- ``no_extra``: the OpenTelemetry SDK cannot be imported (a stub on PYTHONPATH refuses), as
  without ``asrd[otel]`` (the API alone comes with FastAPI);
- ``extra_off``: the extra installed, no ``OTEL_*`` exporter named (tracing off);
- ``on``: tracing on, ``OTEL_TRACES_SAMPLER=always_on`` (every job), exporting over OTLP/HTTP to a
  receiver in this benchmark's process that reads and drops each request (the cost of a real
  collector is not the daemon's).

Targets: ``extra_off`` within 2 % of ``no_extra``, ``on`` within 15 %. The emulator publishes
CI's callbacks straight to the topic (no intake), so the spans measured are the consumer's:
pulsar.consume, ci.describe, sink.<name>, ledger.commit per job. Writes
benchmarks/results/tracing.json.

Usage: .venv/bin/python benchmarks/tracing.py [--jobs 2000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Lock, Thread
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import load, scenarios  # noqa: E402
from benchmarks.harness import Broker, provenance, run_id, start_emulator  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "tracing.json"
TARGETS = {"extra_off": 0.02, "on": 0.15}
CONCURRENCY = 32


class Spans:
    """What the receiver counted (the spans the daemon exported, none dropped on the way)."""

    def __init__(self) -> None:
        self.count = 0
        self.lock = Lock()

    def take(self) -> int:
        with self.lock:
            count, self.count = self.count, 0
            return count


def drop_receiver(spans: Spans | None = None) -> ThreadingHTTPServer:
    """Answers every OTLP/HTTP export with 200 after reading it (and counting its spans)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if spans is not None:
                req = ExportTraceServiceRequest()
                req.ParseFromString(body)
                got = sum(len(ss.spans) for rs in req.resource_spans for ss in rs.scope_spans)
                with spans.lock:
                    spans.count += got
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    return server


@dataclass(frozen=True)
class _Record:
    job_id: str
    queue_id: str = "p" + "0" * 32


def observer_cpu_us_per_job(endpoint: str, jobs: int = 8000, batch: int = 16) -> float:
    """CPU microseconds per job of the tracing observer's hooks alone, as a worker calls them
    for batches of ``batch`` jobs with one sink, the spans exported as in the ``on`` runs."""
    os.environ["OTEL_EXPORTER_OTLP_ENDPOINT"] = endpoint
    os.environ["OTEL_BSP_MAX_QUEUE_SIZE"] = str(8 * jobs)  # nothing dropped: every span paid
    from asrd.observers import MessageInfo
    from asrd.pipeline import Outcome, Verdict
    from asrd.settle import Action, Settlement
    from asrd.testing import message
    from asrd.tracing_otel import TracingObserver, flush, make_tracer

    observer = TracingObserver(make_tracer(os.environ), None)
    done, ack = Verdict(Outcome.DONE, ""), Settlement(Action.ACK)
    batches = []
    for start in range(0, jobs, batch):
        ms = [message(f"body {i}".encode()) for i in range(start, start + batch)]
        infos = [MessageInfo(m.origin_id, 1, m.published_ms) for m in ms]
        records = [_Record(f"s{i:032x}") for i in range(start, start + batch)]
        batches.append((ms, infos, records))
    began = time.process_time()
    for ms, infos, records in batches:
        observer.consuming(ms, infos)
        observer.batch_jobs({r.job_id: [i] for i, r in enumerate(records)})
        observer.described([r.job_id for r in records], {}, 0.01)
        observer.sink_called("files", records, {}, 0.002)
        observer.ledger_committed(records, 0.001)
        for info in infos:
            observer.settled(info, done, ack)
    flush()  # the export's CPU (encoding, HTTP) is part of the cost
    return (time.process_time() - began) / jobs * 1e6


def variants(stub: Path, endpoint: str) -> dict[str, dict[str, str]]:
    clean = {"OTEL_SDK_DISABLED": "", "OTEL_TRACES_EXPORTER": "", "OTEL_EXPORTER_OTLP_ENDPOINT": ""}
    return {
        "no_extra": {**clean, "PYTHONPATH": str(stub)},
        "extra_off": clean,
        "on": {
            **clean,
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_SERVICE_NAME": "asrd-bench",
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=5, help="each variant this many times")
    args = ap.parse_args()
    for name in ("OTEL_TRACES_EXPORTER", "OTEL_EXPORTER_OTLP_ENDPOINT"):
        os.environ.pop(name, None)  # the variants decide
    base = Path(tempfile.mkdtemp(prefix="tracing-bench-"))
    # FastAPI itself depends on opentelemetry-api; the extra adds the SDK and the exporter.
    # A namespace portion first on PYTHONPATH hides the SDK as if it were not installed.
    stub = base / "no-otel"
    (stub / "opentelemetry" / "sdk").mkdir(parents=True)
    (stub / "opentelemetry" / "sdk" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'opentelemetry.sdk'\", "
        "name='opentelemetry.sdk')\n"
    )
    rid = run_id()
    broker = Broker()
    broker.ensure()
    exported = Spans()
    receiver = drop_receiver(exported)
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    emulator = start_emulator(base / "emulator")
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        ctx = scenarios.Context(base, rid, emulator)
        scenarios.preload(ctx, args.jobs)
        order = list(variants(stub, endpoint).items())
        for round_ in range(args.rounds):
            # Each round starts with another variant: a drift in the machine's load (other
            # processes) does not always favour the same one.
            for name, env in order[round_ % 3 :] + order[: round_ % 3]:
                # Short topic names: the run's prefix and this must fit CMQ's 64 characters.
                short = f"{name[0]}{round_}"
                setup, _, published = scenarios.republish(ctx, short, CONCURRENCY)
                setup.env.update(env)
                run = scenarios.run_daemon(setup, name, ctx, len(published), published, 0.0, 32)
                if not run.complete:
                    raise RuntimeError(f"{name}: {len(run.delivered)} of {len(published)} jobs")
                spans = exported.take()  # the daemon flushed its spans before it exited
                if (spans > 0) != (name == "on"):
                    raise RuntimeError(f"{name}: the daemon exported {spans} spans")
                runs.setdefault(name, []).append(
                    {
                        "jobs_per_s": run.rate,
                        "cpu_s_per_1000_jobs": run.cpu_per_1000,
                        "spans_per_job": round(spans / len(published), 2),
                    }
                )
                print(f"  {name} round {round_}: {run.rate:.0f} jobs/s, "
                      f"{run.cpu_per_1000:.2f} CPU s per 1000 jobs", flush=True)  # fmt: skip
        observer_us = observer_cpu_us_per_job(endpoint)
    finally:
        emulator.stop()
        receiver.shutdown()
        load.delete_topics(scenarios.topic_prefix(rid))
        broker.release()
        shutil.rmtree(base, ignore_errors=True)

    result: dict[str, Any] = {
        "key": "tracing_cost",
        "jobs": args.jobs,
        "rounds": args.rounds,
        "exporter": "OTLP/HTTP to a local receiver that reads and drops each request",
        "sampling": "always_on (100 %)",
        "runs": runs,
        **provenance(),
    }
    ok = True
    for name, bound in TARGETS.items():
        # Ratios to no_extra within each round (paired: the same moment's load), then the
        # median over the rounds.
        rates = [
            r["jobs_per_s"] / b["jobs_per_s"]
            for r, b in zip(runs[name], runs["no_extra"], strict=True)
        ]
        cpus = [
            r["cpu_s_per_1000_jobs"] / b["cpu_s_per_1000_jobs"]
            for r, b in zip(runs[name], runs["no_extra"], strict=True)
        ]
        throughput_cost = 1 - statistics.median(rates)
        result[name] = {
            "throughput_ratios": [round(x, 3) for x in rates],
            "cpu_per_job_ratios": [round(x, 3) for x in cpus],
            "throughput_ratio": round(statistics.median(rates), 3),
            "cpu_per_job_ratio": round(statistics.median(cpus), 3),
            "throughput_cost": round(throughput_cost, 3),
            "bound": bound,
            "verdict": "pass" if throughput_cost < bound else "miss",
        }
        ok = ok and throughput_cost < bound
    base_cpu_us = statistics.median(r["cpu_s_per_1000_jobs"] for r in runs["no_extra"]) * 1000
    result["tracing_observer"] = {
        "cpu_us_per_job": round(observer_us, 1),
        "share_of_daemon_cpu_per_job": round(observer_us / base_cpu_us, 3),
        "note": "the tracing observer's hooks for batches of 16 jobs, with the SDK's batch "
        "processor and OTLP exporter, measured alone in this process (less disturbed by the "
        "machine's other load than the daemon runs)",
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
