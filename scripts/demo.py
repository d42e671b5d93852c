"""`make demo`: the whole pipeline on this machine, wired as in production — broker, emulator
(CI + its TDMQ-CMQ queue), daemon (CMQ intake → Pulsar → consumer → sinks), a few jobs.

Starts what is not running, submits sample jobs with `asrd submit` (CallBackType=TDMQ, so CI
writes each TaskFinish message into the CMQ queue `asr-demo`), waits for their records in
var/results/, prints a table and the console's address, runs `asrd check --canary` once (one
job followed through every stage), then (on a terminal) waits for Enter so the console can be
looked at, and stops what it started. Before the canary it checks that the console shows each
job with its transcript and timeline, and it ends with the console's address.
"""

from __future__ import annotations

import html
import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
DEMO = VAR / "demo"
RESULTS = VAR / "results"
ASRD = [sys.executable, "-m", "asrd.cli"]
PULSAR = str(ROOT / "scripts" / "pulsar")
SECRET_ID, SECRET_KEY = "AKIDdemo00000000000000000000000000", "demosecretkey0000000000000000000"

SAMPLES = {
    "media/weather.mp3": ["今天天气很好。", "我们去公园散步吧。"],
    "media/standup.wav": ["Yesterday I fixed the ledger.", "Today I review the consumer."],
    "media/lecture.m4a": ["Speech recognition turns audio into text.", "asrd delivers it."],
}

CONFIG = """\
[ci]
region = "ap-guangzhou"
bucket = "demo-1250000000"
secret_id = "{secret_id}"
secret_key_file = "{demo}/secret_key"
endpoint = "{endpoint}"

[ci.callback]
type = "tdmq"
format = "JSON"
mq_region = "gz"
mq_mode = "Queue"
mq_name = "asr-demo"

[intake.cmq]
endpoint = "{cmq_endpoint}"
queue = "asr-demo"
region = "gz"                          # the emulator's address names no region

[canary]
timeout_s = 60

[pulsar]
service_url = "{pulsar}"
topic = "persistent://public/default/asr-demo"
subscription = "asrd-demo"

[ledger]
url = "sqlite:///{demo}/ledger.db"

[log]
format = "console"

[http]
listen = "127.0.0.1:{http_port}"

[[sinks]]
name = "files"
type = "file"
dir = "{results}"
formats = ["json", "txt", "srt"]
"""


def step(text: str) -> None:
    print(f"==> {text}", flush=True)


def stop(proc: subprocess.Popen[str] | None) -> None:
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _console_misses(console: str, jobs: dict[str, str]) -> str:
    """What the console does not show yet after 30 s (``""``: every job's page has its
    transcript and its timeline from submit to the callback's move onto Pulsar)."""
    wanted = ["submitted", "callback received", "moved onto Pulsar", "delivered", "settled"]
    deadline = time.monotonic() + 30
    while True:
        missing = ""
        for job_id, key in jobs.items():
            try:
                url = f"{console}jobs/{job_id}"  # our own daemon, over http on loopback
                with urllib.request.urlopen(url, timeout=10) as answer:  # noqa: S310
                    page = html.unescape(answer.read().decode("utf-8"))
            except OSError as exc:
                missing = f"the page of {job_id} ({exc})"
                break
            lacks = [f"<td>{s}</td>" for s in wanted if f"<td>{s}</td>" not in page]
            lacks += [line for line in SAMPLES[key] if line not in page]
            if lacks:
                missing = f"{', '.join(lacks)} on the page of {job_id}"
                break
        if not missing or time.monotonic() > deadline:
            return missing
        time.sleep(0.5)


def main() -> int:
    DEMO.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    broker_was_running = subprocess.run([PULSAR, "status"], capture_output=True).returncode == 0
    emulator = daemon = None
    try:
        step("starting the Apache Pulsar broker (scripts/pulsar; first run downloads its jars)")
        started = subprocess.run([PULSAR, "start"], capture_output=True, text=True)
        if started.returncode != 0:
            print(started.stderr, file=sys.stderr)
            return 1
        pulsar_url = started.stdout.strip()

        step("starting the emulator: CI + COS, and TDMQ-CMQ with the queue gz:asr-demo")
        emulator = subprocess.Popen(
            [*ASRD, "emulator", "--listen", "127.0.0.1:0", "--data-dir", str(DEMO / "emulator"),
             "--key", f"{SECRET_ID}:{SECRET_KEY}", "--job-delay", "1.5",
             "--cmq-listen", "127.0.0.1:0", "--cmq-queue", "gz:asr-demo"],
            stdout=subprocess.PIPE, stderr=(DEMO / "emulator.log").open("w"), text=True,
        )  # fmt: skip
        assert emulator.stdout is not None
        endpoint = emulator.stdout.readline().strip().rsplit(" ", 1)[-1]
        cmq_endpoint = emulator.stdout.readline().strip().rsplit(" ", 1)[-1]
        if not endpoint.startswith("http://") or not cmq_endpoint.startswith("http://"):
            print(f"emulator did not start; see {DEMO / 'emulator.log'}", file=sys.stderr)
            return 1

        (DEMO / "secret_key").write_text(SECRET_KEY + "\n")
        cfg = DEMO / "asrd.toml"
        values = {
            "secret_id": SECRET_ID,
            "demo": DEMO,
            "endpoint": endpoint,
            "cmq_endpoint": cmq_endpoint,
            "results": RESULTS,
            "http_port": _free_port(),
        }
        cfg.write_text(CONFIG.format(pulsar=pulsar_url, **values))
        from asrd import config
        from asrd.ci import CiClient

        ci = CiClient(config.load(cfg).ci)
        for key, sentences in SAMPLES.items():
            ci.put_object(key, b"not really audio")
            ci.put_object(f"{key}.transcript.txt", "\n".join(sentences).encode())

        step("starting the daemon: asrd run --config var/demo/asrd.toml (CMQ intake + consumer)")
        daemon = subprocess.Popen(
            [*ASRD, "run", "--config", str(cfg)], stderr=(DEMO / "daemon.log").open("w"), text=True
        )

        step(f"submitting {len(SAMPLES)} jobs with asrd submit (CallBackType=TDMQ → CMQ asr-demo)")
        jobs = {}
        for key in SAMPLES:
            out = subprocess.run(
                [*ASRD, "submit", "--config", str(cfg), "--input", key],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return 1
            jobs[out.stdout.strip()] = key
            print(f"    {out.stdout.strip()}  {key}")

        step("waiting for the results in var/results/")
        deadline = time.monotonic() + 60
        while not all((RESULTS / f"{j}.json").exists() for j in jobs):
            if time.monotonic() > deadline or daemon.poll() is not None:
                print(f"results did not arrive; see {DEMO / 'daemon.log'}", file=sys.stderr)
                return 1
            time.sleep(0.2)

        print(f"\n{'job id':34} {'state':8} {'audio s':>7}  {'input':18} transcript")
        for job_id, key in jobs.items():
            rec = json.loads((RESULTS / f"{job_id}.json").read_text())
            text = rec["transcript"].replace("\n", " ")
            print(f"{job_id:34} {rec['state']:8} {rec['audio_time']:7.2f}  {key:18} {text[:60]}")
        print(f"\nrecords: {RESULTS}/<job id>.json (also .txt and .srt)")
        console = f"http://127.0.0.1:{values['http_port']}/ui/"
        step("checking that the console shows each job with its transcript and timeline")
        missing = _console_misses(console, jobs)
        if missing:
            print(f"the console lacks {missing}; see {DEMO / 'daemon.log'}", file=sys.stderr)
            return 1

        step(
            "the canary, the last production step: asrd check --canary (its record reaches no sink)"
        )
        canary = subprocess.run(
            [*ASRD, "check", "--config", str(cfg), "--canary"], text=True, check=False
        )
        print(f"\nconsole: {console} (docs/console.md); the jobs: {console}jobs")
        if sys.stdin.isatty():
            input("press Enter to stop the demo (and the console with it) ")
        else:
            print("(not a terminal: the demo stops now, and the console with it)")
        return canary.returncode
    finally:
        step("stopping what the demo started")
        stop(daemon)
        stop(emulator)
        if not broker_was_running:
            subprocess.run([PULSAR, "stop"], capture_output=True)


if __name__ == "__main__":
    sys.exit(main())
