"""How fast the console answers on a large ledger: the jobs page (first page, filtered pages,
a deep keyset page) and a job page (ledger entry, timeline, deliveries, and one CI read-back
from the emulator), with N jobs and 5 N timeline events in the ledger (default 1,000,000
jobs), on SQLite and on PostgreSQL (Debian's server, started as the tests start it).
Requests go through the ASGI app in process (no network): the figures are the server's own.
Writes benchmarks/results/console_pages.json (console_pages-<N>.json for another size, so a
trial at a reduced size leaves the full run's figures alone). Usage: .venv/bin/python
benchmarks/console_pages.py [--jobs 1000000] [--requests 200] [--backend both]; the size's
default comes from ``ASRD_BENCH_CONSOLE_JOBS`` (e.g. 50000 for a quick trial).
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: the harness lives in tests/
    sys.path.insert(0, str(ROOT))

from fastapi.testclient import TestClient  # noqa: E402
from tests import postgres as pg  # noqa: E402
from tests.support import start_emulator, write_config  # noqa: E402

from asrd import config  # noqa: E402
from asrd.api import ApiContext, create_app  # noqa: E402
from asrd.ci import CiClient  # noqa: E402
from asrd.console import ConsoleContext  # noqa: E402
from asrd.ledger import open_ledger  # noqa: E402

STAGES = ("submitted", "created", "delivered", "delivered", "settled")
FULL_SIZE = 1_000_000


JOB_COLUMNS = (
    "client_token, job_id, input, status, submitted_at, deadline_at, settled_at, queue_id,"
    " user_data"
)


def rows(
    jobs: int, batch: int = 50_000
) -> Iterator[tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]]:
    """``jobs`` jobs over the last 30 days and five events each, in batches."""
    now = time.time()
    for start in range(0, jobs, batch):
        job_rows, events = [], []
        for i in range(start, min(start + batch, jobs)):
            job_id = f"s{uuid.UUID(int=i + 1).hex}"
            at = now - 30 * 86400 * (1 - i / jobs)
            status = "owed" if i % 50 == 0 else "settled"
            job_rows.append((f"tok{i:08d}", job_id, f"batch-{i % 100:02d}/rec-{i:08d}.wav",
                             status, at, at + 3 * 3600, None if status == "owed" else at + 30,
                             f"q{i % 4}", f"team=t{i % 7}"))  # fmt: skip
            events += [(job_id, at + n, stage, "") for n, stage in enumerate(STAGES)]
        yield job_rows, events


def fill_sqlite(url: str, jobs: int) -> None:
    open_ledger(url).close()  # asrd's own schema and indexes
    db = sqlite3.connect(url.removeprefix("sqlite:///"))
    for job_rows, events in rows(jobs):
        db.executemany(
            f"INSERT INTO jobs ({JOB_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            job_rows,
        )
        db.executemany("INSERT INTO events (job_id, at, stage, detail) VALUES (?, ?, ?, ?)", events)
        db.commit()
    db.execute("ANALYZE")
    db.close()


def fill_postgresql(url: str, jobs: int) -> None:
    import psycopg

    open_ledger(url, password=pg.PASSWORD).close()
    with psycopg.connect(url, password=pg.PASSWORD) as conn:
        for job_rows, events in rows(jobs):
            with conn.cursor() as cur:
                with cur.copy(f"COPY jobs ({JOB_COLUMNS}) FROM STDIN".encode()) as copy:
                    for row in job_rows:
                        copy.write_row(row)
                with cur.copy(b"COPY events (job_id, at, stage, detail) FROM STDIN") as copy:
                    for row in events:
                        copy.write_row(row)
            conn.commit()
        conn.execute(b"ANALYZE")
        conn.commit()


def sample_ids(jobs: int) -> list[str]:
    return [f"s{uuid.UUID(int=i + 1).hex}" for i in range(0, jobs, max(1, jobs // 20))]


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


def measure(settings: config.Settings, url: str, jobs: int, count: int) -> dict[str, Any]:
    ledger = open_ledger(url, password=pg.PASSWORD)
    try:
        ci = CiClient(settings.ci)
        console = ConsoleContext(ledger, ci, settings.pulsar, sinks=["files"])
        ctx = ApiContext(ci, settings.ci, lambda: True, lambda: b"", ledger=ledger,
                         console=console)  # fmt: skip
        client = TestClient(create_app(ctx))
        page, href = client.get("/ui/jobs?limit=50").text, ""
        for _ in range(20):  # 20 pages down, for a deep cursor
            href = page.split('rel="next"')[0].rsplit('href="', 1)[1].split('"')[0]
            href = href.replace("&amp;", "&")
            page = client.get(href).text
        sample = sample_ids(jobs)
        pages = {
            "jobs, first page": "/ui/jobs?limit=50",
            "jobs, owed in batch-00/": "/ui/jobs?state=owed&input=batch-00/",
            "jobs, UserData contains t3": "/ui/jobs?user_data=t3",
            "jobs, 20 pages down": href,
            "one job (with a CI read-back)": f"/ui/jobs/{sample[len(sample) // 2]}",
        }
        return {name: timed(client, url, count) for name, url in pages.items()}
    finally:
        ledger.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    size = int(os.environ.get("ASRD_BENCH_CONSOLE_JOBS", "") or FULL_SIZE)
    parser.add_argument("--jobs", type=int, default=size)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    args = parser.parse_args()
    backends = ("sqlite", "postgresql") if args.backend == "both" else (args.backend,)
    result: dict[str, Any] = {"jobs": args.jobs, "events": args.jobs * len(STAGES)}
    with tempfile.TemporaryDirectory(prefix="asrd-console-bench-") as tmp:
        base = Path(tmp)
        emulator = start_emulator(base / "emulator", "pulsar://127.0.0.1:1", cmq=False)
        server = None
        try:
            cfg = write_config(base / "site", emulator.endpoint, "pulsar://127.0.0.1:1")
            settings = config.load(cfg.path)
            for backend in backends:
                if backend == "sqlite":
                    url, fill = settings.ledger.url, fill_sqlite
                else:
                    server = server or pg.start()
                    url, fill = server.url(server.create_database()), fill_postgresql
                started = time.monotonic()
                fill(url, args.jobs)
                filled_s = round(time.monotonic() - started, 1)
                figures = measure(settings, url, args.jobs, args.requests)
                result[backend] = {"fill_s": filled_s, "pages": figures}
                for name, f in figures.items():
                    print(f"{backend:10} {name:32} median {f['median_ms']:7.2f} ms"
                          f"  p99 {f['p99_ms']:7.2f} ms")  # fmt: skip
        finally:
            emulator.stop()
            if server is not None:
                server.stop()
    name = "console_pages" if args.jobs == FULL_SIZE else f"console_pages-{args.jobs}"
    out = ROOT / "benchmarks" / "results" / f"{name}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
