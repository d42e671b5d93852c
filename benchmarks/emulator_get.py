"""Throughput of the emulator's hot path: GET /asr_jobs/<id>, signed, keep-alive, driven by wrk.

Starts the emulator through the tests' harness (tests/support.py), creates one job through the
official SDK, signs one GET with the SDK's own signer (one-hour key time) and replays it with
wrk. Writes benchmarks/results/emulator_get.json. Usage: .venv/bin/python
benchmarks/emulator_get.py [--duration 10] [--connections 32] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests
from qcloud_cos import CosConfig, CosS3Client
from qcloud_cos.cos_auth import CosS3Auth

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the harness lives in tests/
    sys.path.insert(0, str(ROOT))

from tests.support import BUCKET, REGION, SECRET_ID, SECRET_KEY, start_emulator  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "emulator_get.json"
NO_BROKER = "pulsar://127.0.0.1:9"  # nothing is published: no job asks for a callback


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    if shutil.which("wrk") is None:
        print("wrk not found: apt-get install -y wrk", file=sys.stderr)
        return 1
    data_dir = Path(tempfile.mkdtemp(prefix="emu-bench-"))
    emulator = start_emulator(
        data_dir, NO_BROKER, "--job-delay", "0", "--queue-id-optional", cmq=False
    )
    try:
        port = emulator.port
        conf = CosConfig(
            Region=REGION,
            SecretId=SECRET_ID,
            SecretKey=SECRET_KEY,
            IP="127.0.0.1",
            Port=port,
            Scheme="http",
        )
        client = CosS3Client(conf, retry=0)
        client.put_object(Bucket=BUCKET, Body=b"audio", Key="in/bench.mp3")
        job_id = client.ci_create_asr_job(
            Bucket=BUCKET,
            OutputBucket=BUCKET,
            OutputRegion=REGION,
            OutputObject="out/b.txt",
            InputObject="in/bench.mp3",
            SpeechRecognition={"EngineModelType": "16k_zh", "ChannelNum": "1"},
        )["JobsDetail"]["JobId"]
        time.sleep(0.2)
        detail = client.ci_get_asr_job(Bucket=BUCKET, JobID=job_id)["JobsDetail"][0]
        assert detail["State"] == "Success", detail["State"]

        path = f"/asr_jobs/{job_id}"
        host = f"{BUCKET}.cos.{REGION}.myqcloud.com"
        prepared = requests.Request(
            "GET",
            f"http://127.0.0.1:{port}{path}",
            headers={"Host": host, "Content-Type": "application/xml"},
        ).prepare()
        CosS3Auth(conf, path, params={}, expire=3600)(prepared)
        headers = {k: prepared.headers[k] for k in ("Host", "Content-Type", "Authorization")}
        check = requests.get(prepared.url, headers=headers, timeout=5)
        assert check.status_code == 200 and job_id in check.text, check.text

        cmd = [
            "wrk",
            f"-t{args.threads}",
            f"-c{args.connections}",
            f"-d{args.duration}s",
            "--latency",
        ]
        for k, v in headers.items():
            cmd += ["-H", f"{k}: {v}"]
        cmd.append(prepared.url)
        load_before = os.getloadavg()[0]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        print(out)
        rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
        non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
        lat = dict(re.findall(r"^\s+(50|75|90|99)%\s+(\S+)", out, re.M))
        result = {
            "benchmark": "emulator GET /asr_jobs/<id> (signed, keep-alive)",
            "requests_per_sec": rps,
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "latency_percentiles": lat,
            "wrk": {
                "threads": args.threads,
                "connections": args.connections,
                "duration_s": args.duration,
            },
            "response_bytes": len(check.content),
            "machine": {
                "cpus": os.cpu_count(),
                "cpu": cpu_model(),
                "python": platform.python_version(),
                "kernel": platform.release(),
                # other work on the machine competes for the 2 cores; recorded for context
                "loadavg_1m_before": round(load_before, 2),
            },
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        RESULT.parent.mkdir(parents=True, exist_ok=True)
        RESULT.write_text(json.dumps(result, indent=2) + "\n")
        print(json.dumps(result, indent=2))
        return 0 if result["non_2xx"] == 0 else 1
    finally:
        emulator.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
