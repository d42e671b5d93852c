"""The console in a real browser: Debian's chromium, headless, driven by Playwright (launched
with the system browser's path: no browser is ever downloaded), against ``asrd run`` wired as
in production (the emulator's CI and CMQ, the intake, the real broker, a file sink and a
webhook sink). Jobs are submitted with ``asrd submit``; the test opens the overview, filters
the jobs, reads one job's transcript, and replays a dead letter through the confirmation page
and sees it delivered. A screenshot of each page is written under the test's directory."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from playwright.sync_api import Browser, expect, sync_playwright

from asrd import config
from asrd.ci import CiClient

from .conftest import Broker
from .receiver import Received, Receiver
from .support import (
    Emulator,
    asrd,
    free_port,
    result_ids,
    start_daemon,
    stop_daemon,
    wait_for,
    webhook_sink,
    write_config,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TALKS = {
    "media/talks/monday.mp3": "Good morning, this is Monday.\nThe weekly meeting starts now.",
    "media/talks/tuesday.mp3": "Tuesday has a short agenda.",
    "media/other/flaky.mp3": "This one reached the webhook late.",
}


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


def _flaky(broken: list[bool]) -> Any:
    def reply(received: Received) -> tuple[int, float]:
        return (500 if broken[0] and b"flaky" in received.body else 200, 0.0)

    return reply


def _submit(cfg_path: Path, key: str) -> str:
    done = asrd("submit", "--config", str(cfg_path), "--input", key)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def _dlq_count(cfg_path: Path) -> int:
    listed = asrd("dlq", "list", "--config", str(cfg_path))
    assert listed.returncode == 0, listed.stderr
    return int(listed.stdout.split(" ", 1)[0])


def test_console_in_chromium(
    tmp_path: Path, broker: Broker, emulator: Emulator, browser: Browser
) -> None:
    shots = tmp_path / "screenshots"
    shots.mkdir()
    broken = [True]
    hook = Receiver(_flaky(broken))
    port = free_port()
    cfg = write_config(
        tmp_path,
        emulator,
        broker.service_url,
        # The flaky job is the last to reach the webhook, so nothing shows the webhook works
        # after its first try: with the breaker on it would be held, not dead-lettered.
        extra_pulsar="max_attempts = 2\nretry_base_s = 0.2\nretry_max_s = 0.5\n"
        "sink_breaker_failures = 0",
        extra_sinks=webhook_sink(hook.url(), "timeout_s = 5"),
        extra=f'\n[http]\nlisten = "127.0.0.1:{port}"\nconsole_actions = true\n',
    )
    ci = CiClient(config.load(cfg.path).ci)
    for key, text in TALKS.items():
        ci.put_object(key, b"not audio")
        ci.put_object(key + ".transcript.txt", text.encode())
    daemon = start_daemon(cfg, cfg.log)
    try:
        jobs = {key: _submit(cfg.path, key) for key in TALKS}
        flaky = jobs["media/other/flaky.mp3"]
        wait_for(lambda: result_ids(cfg) >= set(jobs.values()), 90, "every job in the files")
        wait_for(lambda: _dlq_count(cfg.path) == 1, 90, "the flaky job's dead letter")
        broken[0] = False
        page = browser.new_page(viewport={"width": 1200, "height": 900})
        base = f"http://127.0.0.1:{port}/ui"

        # Overview: the three jobs, the dead letter.
        page.goto(f"{base}/")
        expect(page.locator("#count-submitted")).to_have_text("3")
        expect(page.locator("#count-dead")).to_have_text("1")
        # Submitted and settled from the ledger; the intake's and CI's four from this process.
        assert page.locator("svg.chart rect").count() == 48 + 4 * 24
        expect(page.locator("#intake-lag")).to_have_text(re.compile(r"^\d+\.\d s$"))
        expect(page.locator("#figures")).to_contain_text("callbacks moved from CMQ onto Pulsar")
        page.screenshot(path=shots / "overview.png", full_page=True)

        # Jobs, filtered by input prefix through the form; the filter is in the URL.
        page.click("nav >> text=Jobs")
        page.fill("input[name=input]", "media/talks/")
        page.click("button:has-text('Filter')")
        expect(page).to_have_url(re.compile(r"/ui/jobs\?.*input=media%2Ftalks%2F"))
        rows = page.locator("table.jobs tbody tr")
        expect(rows).to_have_count(2)
        page.screenshot(path=shots / "jobs.png", full_page=True)

        # One job: its transcript and segments.
        page.click(f"a:has-text('{jobs['media/talks/monday.mp3']}')")
        expect(page.locator("#transcript")).to_contain_text("The weekly meeting starts now.")
        expect(page.locator("table.segments tbody tr")).to_have_count(2)
        timeline = page.locator("#timeline tbody")
        for step in (
            "submitted", "created", "callback received", "moved onto Pulsar", "delivered", "settled"
        ):  # fmt: skip
            expect(timeline).to_contain_text(step)
        page.screenshot(path=shots / "job.png", full_page=True)

        # Usage: the audio of the jobs delivered so far (the third one waits on the webhook).
        page.click("nav >> text=Usage")
        expect(page.locator("#usage tbody tr")).to_have_count(1)  # one UTC day
        expect(page.locator("#usage tbody td").nth(1)).to_have_text("2")
        assert float(page.locator("#total-hours").inner_text()) > 0
        page.screenshot(path=shots / "usage.png", full_page=True)

        # The dead letter, replayed through the confirmation page, then delivered.
        page.goto(f"{base}/dead-letters")
        expect(page.locator("main")).to_contain_text(flaky)
        page.screenshot(path=shots / "dead-letters.png", full_page=True)
        page.click("text=Replay this group…")
        expect(page.locator("#dry-run")).to_contain_text("Dry run: 1 message(s)")
        page.screenshot(path=shots / "confirm.png", full_page=True)
        page.click("#confirm")
        expect(page.locator("#replay-result")).to_contain_text("Replayed 1 message(s)")
        page.screenshot(path=shots / "replayed.png", full_page=True)
        # The webhook answers 200 now: the job page shows the delivery once the ledger has it.
        app_state = page.locator("#deliveries tr:has(td:text-is('app')) td").nth(1)

        def delivered() -> bool:
            page.goto(f"{base}/jobs/{flaky}")
            return app_state.inner_text() == "delivered"

        wait_for(delivered, 60, "the replayed job delivered to the webhook", interval=0.5)
        expect(page.locator("#timeline")).to_contain_text("replayed")
        page.screenshot(path=shots / "job-replayed.png", full_page=True)
        page.close()
        # The same timeline from the command line.
        shown = asrd("jobs", "show", flaky, "--config", str(cfg.path))
        assert shown.returncode == 0, shown.stderr
        steps = [event["stage"] for event in json.loads(shown.stdout)["events"]]
        assert steps[:2] == ["submitted", "created"] and steps[-1] == "settled"
        assert steps.count("delivered") == 2
        # The webhook refused it twice (max_attempts = 2): the dead letter, then the replay,
        # then its delivery.
        assert steps.index("dead-lettered") < steps.index("replayed") < len(steps) - 2
        # Each failed attempt is a step: the first one's retry, before the dead letter.
        assert steps.index("moved onto Pulsar") < steps.index("retry scheduled")
        assert steps.index("retry scheduled") < steps.index("dead-lettered")
        metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        audio = re.search(
            r'asrd_audio_seconds_total\{engine="16k_zh",queue="[^"]+"\} ([0-9.]+)', metrics
        )
        assert audio and float(audio.group(1)) > 0, "the settled jobs' audio is counted"
        used = asrd("usage", "--config", str(cfg.path), "--by", "engine", "--csv")
        assert used.returncode == 0, used.stderr
        assert used.stdout.startswith("engine,jobs,audio_hours\n16k_zh,3,"), used.stdout
    finally:
        assert stop_daemon(daemon) == 0
        hook.close()
    for name in ("overview", "jobs", "job", "usage", "dead-letters", "confirm", "replayed"):
        assert (shots / f"{name}.png").stat().st_size > 1000
