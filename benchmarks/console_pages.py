"""How fast the console answers on a large ledger: the jobs page (first page, a filtered page,
a deep keyset page) and a job page (ledger entry, timeline, deliveries, and one CI read-back
from the emulator), with N jobs and 5 N timeline events in a SQLite ledger (default 1,000,000
jobs). Requests go through the ASGI app in process (no network), so the figures are the
server's own. Writes benchmarks/results/console_pages.json. Usage: .venv/bin/python
benchmarks/console_pages.py [--jobs 1000000] [--requests 200]
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the harness lives in tests/
    sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402
from tests.support import start_emulator, write_config  # noqa: E402

from asrd import config  # noqa: E402
from asrd.api import ApiContext, create_app  # noqa: E402
from asrd.ci import CiClient  # noqa: E402
from asrd.console import ConsoleContext  # noqa: E402
from asrd.ledger import open_ledger  # noqa: E402

STAGES = ("submitted", "created", "delivered", "delivered", "settled")


def fill(path: Path, jobs: int) -> list[str]:
    """``jobs`` jobs over the last 30 days, five events each; returns a sample of job ids."""
    open_ledger(f"sqlite:///{path}").close()  # asrd's own schema and indexes
    db = sqlite3.connect(path)
    now = time.time()
    sample: list[str] = []
    batch = 50_000
    for start in range(0, jobs, batch):
        rows, events = [], []
        for i in range(start, min(start + batch, jobs)):
            job_id = f"s{uuid.UUID(int=i + 1).hex}"
            at = now - 30 * 86400 * (1 - i / jobs)
            status = "owed" if i % 50 == 0 else "settled"
            rows.append((f"tok{i:08d}", job_id, f"batch-{i % 100:02d}/rec-{i:08d}.wav", status,
                         at, at + 3 * 3600, None if status == "owed" else at + 30, f"q{i % 4}",
                         f"team=t{i % 7}"))  # fmt: skip
            events += [(job_id, at + n, stage, "") for n, stage in enumerate(STAGES)]
            if i % (jobs // 20 or 1) == 0:
                sample.append(job_id)
        db.executemany(
            "INSERT INTO jobs (client_token, job_id, input, status, submitted_at, deadline_at,"
            " settled_at, queue_id, user_data) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        db.executemany("INSERT INTO events (job_id, at, stage, detail) VALUES (?, ?, ?, ?)", events)
        db.commit()
    db.execute("ANALYZE")
    db.close()
    return sample


def timed(client: TestClient, url: str, count: int) -> dict[str, float]:
    spent = []
    for _ in range(count):
        started = time.perf_counter()
        answer = client.get(url)
        spent.append((time.perf_counter() - started) * 1000)
        assert answer.status_code == 200, (url, answer.status_code)
    spent.sort()
    return {
        "median_ms": round(statistics.median(spent), 2),
        "p99_ms": round(spent[min(len(spent) - 1, int(len(spent) * 0.99))], 2),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--jobs", type=int, default=1_000_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="asrd-console-bench-") as tmp:
        base = Path(tmp)
        emulator = start_emulator(base / "emulator", "pulsar://127.0.0.1:1", cmq=False)
        try:
            cfg = write_config(base / "site", emulator.endpoint, "pulsar://127.0.0.1:1")
            settings = config.load(cfg.path)
            started = time.monotonic()
            sample = fill(settings.ledger.path, args.jobs)
            filled_s = time.monotonic() - started
            ledger = open_ledger(settings.ledger.url)
            ci = CiClient(settings.ci)
            console = ConsoleContext(ledger, ci, settings.pulsar, sinks=["files"])
            ctx = ApiContext(ci, settings.ci, lambda: True, lambda: b"", ledger=ledger,
                             console=console)  # fmt: skip
            client = TestClient(create_app(ctx))
            first = client.get("/ui/jobs?limit=50").text
            deep = first  # follow 20 pages down for a deep cursor
            for _ in range(20):
                href = deep.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0]
                deep = client.get(href.replace("&amp;", "&")).text
            deep_url = href.replace("&amp;", "&")
            pages = {
                "jobs, first page": "/ui/jobs?limit=50",
                "jobs, owed in batch-00/": "/ui/jobs?state=owed&input=batch-00/",
                "jobs, UserData contains t3": "/ui/jobs?user_data=t3",
                "jobs, 20 pages down": deep_url,
                "one job (with a CI read-back)": f"/ui/jobs/{sample[len(sample) // 2]}",
            }
            figures = {name: timed(client, url, args.requests) for name, url in pages.items()}
            ledger.close()
        finally:
            emulator.stop()
    result = {"jobs": args.jobs, "events": args.jobs * len(STAGES), "backend": "sqlite",
              "fill_s": round(filled_s, 1), "pages": figures}  # fmt: skip
    out = ROOT / "benchmarks" / "results" / "console_pages.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    for name, f in figures.items():
        print(f"{name:34} median {f['median_ms']:7.2f} ms  p99 {f['p99_ms']:7.2f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
