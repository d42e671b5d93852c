"""How fast the CMQ intake drains a backlog, against baselines measured in the same run.

Baseline: the plain bridge a user might write with Tencent's own CMQ SDK
(``qcloud-cmq-sdk-py3``) and pulsar-client — batch receive 16, send each to Pulsar and wait,
batch delete — the same at-least-once move asrd's intake makes. Target: the intake drains at
least 3 times as fast. For scale, the same SDK loop moving messages nowhere (receive + delete
only) is reported without a target. All run against the emulator's CMQ endpoint on this
machine, with the broker of the tests (``PULSAR_SERVICE_URL`` or ``scripts/pulsar``). Writes
benchmarks/results/intake_move.json.

Usage: .venv/bin/python benchmarks/intake_move.py [--messages 5000]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.support import (  # noqa: E402 - the one harness shared by tests and benchmarks
    ASRD,
    Emulator,
    official_cmq_queue,
    quiet_client,
    start_emulator,
    wait_for,
    write_config,
)

from benchmarks.harness import provenance  # noqa: E402

RESULT = ROOT / "benchmarks" / "results" / "intake_move.json"
TARGET = 3.0


def broker_urls() -> tuple[str, str, bool]:
    """(service URL, admin URL, started here)."""
    if os.environ.get("PULSAR_SERVICE_URL"):
        admin = os.environ.get("PULSAR_ADMIN_URL", "http://127.0.0.1:8080")
        return os.environ["PULSAR_SERVICE_URL"], admin, False
    script = ROOT / "scripts" / "pulsar"
    running = subprocess.run([str(script), "status"], capture_output=True).returncode == 0
    out = subprocess.run([str(script), "start"], capture_output=True, text=True, check=True)
    admin = subprocess.run([str(script), "admin-url"], capture_output=True, text=True, check=True)
    return out.stdout.strip(), admin.stdout.strip(), not running


def body(i: int) -> str:
    # A TaskFinish notification of realistic size (about 1.5 KB of JSON).
    detail = {
        "Code": "Success",
        "CreationTime": "2026-11-26T10:00:00+0800",
        "EndTime": "2026-11-26T10:00:09+0800",
        "Input": {"BucketId": "bench-1250000000", "Object": f"media/{i}.mp3"},
        "JobId": f"s{i:032x}",
        "Message": "",
        "Operation": {"UserData": "x" * 900, "JobLevel": "0"},
        "QueueId": "p" + "0" * 32,
        "State": "Success",
        "Tag": "SpeechRecognition",
    }
    return json.dumps({"EventName": "TaskFinish", "JobsDetail": detail})


def fill(queue: Any, count: int) -> None:
    from cmq.queue import Message

    for start in range(0, count, 16):
        queue.batch_send_message([Message(body(i)) for i in range(start, min(start + 16, count))])


def drain_with_sdk(queue: Any, count: int, producer: Any = None) -> float:
    """Receive 16, (send each to Pulsar and wait,) delete them; messages per second."""
    from cmq.cmq_exception import CMQServerException

    moved = 0
    started = time.monotonic()
    while moved < count:
        try:
            got = queue.batch_receive_message(16, 1)
        except CMQServerException as exc:
            if int(exc.code) == 7000:
                continue
            raise
        if producer is not None:
            for m in got:
                producer.send(m.msgBody.encode())
        queue.batch_delete_message([m.receiptHandle for m in got])
        moved += len(got)
    return count / (time.monotonic() - started)


def drain_with_intake(cfg_path: Path, admin: str, topic: str, count: int) -> float:
    stats = f"{admin}/admin/v2/persistent/{topic.removeprefix('persistent://')}/stats"

    def on_topic() -> int:
        r = requests.get(stats, timeout=5)
        return int(r.json()["msgInCounter"]) if r.status_code == 200 else 0

    log = (cfg_path.parent / "intake.log").open("ab")
    proc = subprocess.Popen([*ASRD, "intake", "--config", str(cfg_path)], stderr=log)
    try:
        # From the first message on the topic: process start and connecting are not the rate.
        wait_for(lambda: on_topic() > 0, 60, "the intake's first move", 0.01)
        started, first = time.monotonic(), on_topic()
        wait_for(lambda: on_topic() >= count, 600, "the intake to move the backlog", 0.05)
        took = time.monotonic() - started
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    return (count - first) / took


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=20000)
    args = ap.parse_args()
    service_url, admin, started_here = broker_urls()
    tmp = Path(tempfile.mkdtemp(prefix="intake-bench-"))
    emu: Emulator = start_emulator(tmp / "emulator", service_url)
    try:
        (tmp / "noop").mkdir()
        noop_cfg = write_config(tmp / "noop", emu, service_url, queue_attrs={"visibility": 30})
        noop_queue = official_cmq_queue(emu.cmq_endpoint, noop_cfg.mq_name)
        fill(noop_queue, args.messages)
        noop = drain_with_sdk(noop_queue, args.messages)

        (tmp / "baseline").mkdir()
        base_cfg = write_config(tmp / "baseline", emu, service_url, queue_attrs={"visibility": 30})
        sdk_queue = official_cmq_queue(emu.cmq_endpoint, base_cfg.mq_name)
        fill(sdk_queue, args.messages)
        client = quiet_client(service_url)
        try:
            producer = client.create_producer(base_cfg.topic, batching_enabled=False)
            baseline = drain_with_sdk(sdk_queue, args.messages, producer)
            producer.close()
        finally:
            client.close()

        run = tmp / "intake"
        run.mkdir()
        cfg = write_config(run, emu, service_url, queue_attrs={"visibility": 30})
        fill(official_cmq_queue(emu.cmq_endpoint, cfg.mq_name), args.messages)
        intake = drain_with_intake(cfg.path, admin, cfg.topic, args.messages)
    finally:
        emu.stop()
        if started_here:
            subprocess.run([str(ROOT / "scripts" / "pulsar"), "stop"], check=False)
    ratio = intake / baseline
    result = {
        "key": "intake_move_vs_baseline_bridge",
        "messages": args.messages,
        "sdk_receive_delete_only_msgs_per_s": round(noop, 1),
        "baseline_msgs_per_s": round(baseline, 1),
        "intake_msgs_per_s": round(intake, 1),
        "ratio": round(ratio, 3),
        "bound": TARGET,
        "verdict": "pass" if ratio >= TARGET else "miss",
        **provenance(),
    }
    RESULT.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
