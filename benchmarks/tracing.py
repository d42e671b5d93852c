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

Usage: .venv/bin/python benchmarks/tracing.py [--jobs 3000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from threading import Thread
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import load, scenarios  # noqa: E402
from benchmarks.harness import Broker, run_id, start_emulator  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "tracing.json"
TARGETS = {"extra_off": 0.02, "on": 0.15}
CONCURRENCY = 32


def drop_receiver() -> ThreadingHTTPServer:
    """Answers every OTLP/HTTP export with 200 after reading it."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    Thread(target=server.serve_forever, daemon=True).start()
    return server


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
    ap.add_argument("--jobs", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=2, help="each variant this many times")
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
    receiver = drop_receiver()
    endpoint = f"http://127.0.0.1:{receiver.server_address[1]}"
    emulator = start_emulator(base / "emulator")
    runs: dict[str, list[dict[str, float]]] = {}
    try:
        ctx = scenarios.Context(base, rid, emulator)
        scenarios.preload(ctx, args.jobs)
        for round_ in range(args.rounds):
            for name, env in variants(stub, endpoint).items():
                # Short topic names: the run's prefix and this must fit CMQ's 64 characters.
                short = f"{name[0]}{round_}"
                setup, _, published = scenarios.republish(ctx, short, CONCURRENCY)
                setup.env.update(env)
                run = scenarios.run_daemon(setup, name, ctx, len(published), published, 0.0, 32)
                if not run.complete:
                    raise RuntimeError(f"{name}: {len(run.delivered)} of {len(published)} jobs")
                runs.setdefault(name, []).append(
                    {"jobs_per_s": run.rate, "cpu_s_per_1000_jobs": run.cpu_per_1000}
                )
                print(f"  {name} round {round_}: {run.rate:.0f} jobs/s, "
                      f"{run.cpu_per_1000:.2f} CPU s per 1000 jobs", flush=True)  # fmt: skip
    finally:
        emulator.stop()
        receiver.shutdown()
        load.delete_topics(scenarios.topic_prefix(rid))
        broker.release()
        shutil.rmtree(base, ignore_errors=True)

    def best(name: str, key: str) -> float:
        values = [r[key] for r in runs[name]]
        # Under contention the best round is the least disturbed one.
        return max(values) if key == "jobs_per_s" else min(values)

    ref_rate, ref_cpu = best("no_extra", "jobs_per_s"), best("no_extra", "cpu_s_per_1000_jobs")
    result: dict[str, Any] = {
        "key": "tracing_cost",
        "jobs": args.jobs,
        "rounds": args.rounds,
        "exporter": "OTLP/HTTP to a local receiver that reads and drops each request",
        "sampling": "always_on (100 %)",
        "runs": runs,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip(),
    }
    ok = True
    for name, bound in TARGETS.items():
        rate, cpu = best(name, "jobs_per_s"), best(name, "cpu_s_per_1000_jobs")
        throughput_cost = 1 - rate / ref_rate
        result[name] = {
            "jobs_per_s": round(rate, 1),
            "throughput_ratio": round(rate / ref_rate, 3),
            "cpu_per_job_ratio": round(cpu / ref_cpu, 3),
            "throughput_cost": round(throughput_cost, 3),
            "bound": bound,
            "verdict": "pass" if throughput_cost < bound else "miss",
        }
        ok = ok and throughput_cost < bound
    result["no_extra"] = {
        "jobs_per_s": round(ref_rate, 1),
        "cpu_s_per_1000_jobs": round(ref_cpu, 2),
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
