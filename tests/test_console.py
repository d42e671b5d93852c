"""The operator console through FastAPI's test client, on real parts: the SQLite ledger, the
emulator's CI (transcripts read back through asrd's client) and the real broker's dead-letter
topic. Every page and action: filters in the URL and keyset paging, the confirmation step with
its dry-run count, CSRF and read-only refusals, login, and escaping of hostile transcripts,
UserData and dead-letter bodies."""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
from fastapi.testclient import TestClient

from asrd import config, queueid
from asrd.api import ApiContext, create_app
from asrd.broker import ATTEMPTS, REASON
from asrd.ci import CiClient
from asrd.config import UsageSettings
from asrd.console import ConsoleContext
from asrd.dlq import REPLAYS
from asrd.hourly import HourlyFigures
from asrd.ledger import JobEntry, Ledger, LedgerWrites, Usage, from_settings
from asrd.metrics import Metrics
from asrd.observers import MessageInfo, MovedCallback, Observers
from asrd.pipeline import Outcome, Pipeline, Verdict
from asrd.settle import Action, Settlement
from asrd.sinks import build_routes
from asrd.sinks.routing import Router
from asrd.submit import build_request
from asrd.timeline_observer import TimelineObserver

from .conftest import Broker
from .support import Clock, quiet_client, read_topic, start_emulator, wait_for, write_config

HOSTILE = "<script>alert('transcript')</script>"
HOSTILE_USER_DATA = "<script>alert('userdata')</script>"
TOKEN = "console-test-token-0123456789"
SYNTHETIC = 120  # ledger-only jobs, for filters and paging
REASON_A = "gave up after 3 attempts: sink app: HTTP 500"
REASON_B = "unparseable body: <b>not JSON</b>"


@dataclass
class Site:
    settings: config.Settings
    ledger: Ledger
    ci: CiClient
    jobs: dict[str, str]  # name -> job id (real CI jobs)
    synthetic: list[str]  # ledger-only job ids, newest first
    started: float
    tmp: Path

    def app(
        self,
        actions: bool = False,
        token: str = "",
        metrics: Metrics | None = None,
        prices: UsageSettings | None = None,
        redeliver: bool = False,
        hourly: HourlyFigures | None = None,
    ) -> TestClient:
        console = ConsoleContext(
            self.ledger,
            self.ci,
            self.settings.pulsar,
            sinks=["files", "app"],
            actions=actions,
            dlq_wait_ms=500,
            prices=prices or UsageSettings(),
            redeliver=self.redeliverer() if redeliver else None,
            hourly=hourly,
        )
        ctx = ApiContext(
            self.ci,
            self.settings.ci,
            lambda: True,
            metrics.exposition if metrics is not None else lambda: b"",
            ledger=self.ledger,
            token=token,
            console=console,
        )
        return TestClient(create_app(ctx), follow_redirects=False)

    def redeliverer(self) -> Callable[[str], tuple[bool, str]]:
        """The daemon's own pipeline, with the site's file sink."""
        routes = build_routes(self.settings)
        pipeline = Pipeline(
            self.ci,
            Router(routes),
            self.ledger,
            Observers(),
            self.settings.pulsar.max_message_bytes,
        )

        def redeliver(job_id: str) -> tuple[bool, str]:
            verdict = pipeline.deliver_jobs([job_id])[job_id]
            return verdict.outcome is Outcome.DONE, verdict.reason

        return redeliver


def _job_id(n: int) -> str:
    return f"s{uuid.UUID(int=n).hex}"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, broker: Broker) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("console")
    emu = start_emulator(tmp / "emulator", broker.service_url, "--job-delay", "0.2")
    try:
        cfg = write_config(tmp / "site", emu, broker.service_url)
        settings = queueid.resolved(config.load(cfg.path))  # as asrd submit does
        ledger = from_settings(settings.ledger)
        ci = CiClient(settings.ci)
        ci.put_object("media/calm.mp3", b"not audio")
        ci.put_object("media/calm.mp3.transcript.txt", b"Good morning.\nThe second sentence.")
        ci.put_object("media/evil.mp3", b"not audio")
        ci.put_object("media/evil.mp3.transcript.txt", HOSTILE.encode())
        now = time.time()
        jobs: dict[str, str] = {}
        for name, user_data in (("calm", "batch=7"), ("evil", HOSTILE_USER_DATA)):
            request = build_request(
                settings.ci, input_object=f"media/{name}.mp3", user_data=user_data
            )
            job_id = str(ci.create_job(request)["JobId"])
            jobs[name] = job_id
            entry = JobEntry(
                f"tok-{name}", job_id, f"media/{name}.mp3", "owed", now, now + 3600,
                user_data=user_data,
            )  # fmt: skip
            ledger.record_job(entry)
        # Usage: what the consumer records when it settles a job (engine, queue, AudioTime).
        ledger.commit(LedgerWrites(delivered=[(jobs["calm"], "files")], usage=[
            Usage(jobs["calm"], "pq-main", "16k_zh", 5400.0),
            Usage(jobs["evil"], "pq-main", "8k_zh", 1800.0),
        ]))  # fmt: skip
        for job_id in jobs.values():
            wait_for(lambda j=job_id: (ci.get_job(j) or {}).get("State") == "Success", 30, "CI")
        # Ledger-only jobs, one per minute back from an hour ago: every third settled, every
        # fifth failed, the rest owed (their deadline passed: overdue).
        synthetic = []
        for i in range(SYNTHETIC):
            job_id = _job_id(i + 1)
            at = now - 3600 - i * 60
            folder = "batch-a" if i % 2 == 0 else "batch-b"
            entry = JobEntry(
                f"syn-{i:04d}", job_id, f"{folder}/rec-{i:04d}.wav", "owed", at, at + 60,
                queue_id=f"pq{i % 4}", user_data=f"Team=Speech&run={i % 3}",
            )  # fmt: skip
            ledger.record_job(entry)
            if i % 3 == 0:
                ledger.commit(LedgerWrites(settled=[(job_id, "Success")]))
            elif i % 5 == 0:
                ledger.fail_job(entry.client_token, "CI ended it Failed")
            synthetic.append(job_id)
        _park_dead_letters(broker, settings)
        yield Site(settings, ledger, ci, jobs, synthetic, now, tmp)
        ledger.close()
    finally:
        emu.stop()


def _park_dead_letters(broker: Broker, settings: config.Settings) -> None:
    client = quiet_client(broker.service_url)
    producer = client.create_producer(settings.pulsar.dlq_topic, batching_enabled=False)
    producer.send(b'{"JobId": "one"}', properties={REASON: REASON_A, ATTEMPTS: "3"})
    producer.send(HOSTILE.encode(), properties={REASON: REASON_A, ATTEMPTS: "3"})
    producer.send(b"<b>not JSON</b>", properties={REASON: REASON_B, ATTEMPTS: "1"})
    client.close()


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html) or re.search(
        r'<meta name="csrf-token" content="([^"]+)">', html
    )
    assert found, "no CSRF token in the page"
    return found.group(1)


def job_ids(html: str) -> list[str]:
    return re.findall(r'<a href="/ui/jobs/(s[0-9a-f]{32})">', html)


def next_url(html: str) -> str:
    found = re.search(r'<a href="([^"]+)" rel="next">', html)
    return found.group(1).replace("&amp;", "&") if found else ""


# -- pages -----------------------------------------------------------------------------------
def test_overview_counts_chart_and_headers(site: Site) -> None:
    r = site.app().get("/ui/")
    assert r.status_code == 200, r.text
    html = r.text
    settled = len(range(0, SYNTHETIC, 3))
    failed = len([i for i in range(SYNTHETIC) if i % 3 and i % 5 == 0])  # settled wins
    assert f'id="count-submitted">{SYNTHETIC + 2}<' in html
    assert f'id="count-settled">{settled}<' in html
    assert f'id="count-failed">{failed}<' in html
    assert f'id="count-owed">{SYNTHETIC + 2 - settled - failed}<' in html
    assert f'id="count-overdue">{SYNTHETIC - settled - failed}<' in html
    assert 'id="count-dead">3<' in html
    assert html.count("<rect ") == 48  # two charts, 24 hours each
    assert '<td>files</td><td class="num">1</td>' in html
    csp = r.headers["content-security-policy"]
    assert "unsafe-inline" not in csp and "script-src 'self'" in csp
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    # Every asset is served by asrd itself.
    assert not re.search(r'(src|href)="(https?:)?//', html)
    for asset in ("/ui/static/console.css", "/ui/static/console.js"):
        assert site.app().get(asset).status_code == 200
    assert site.app().get("/ui/static/../api.py").status_code == 404


def test_overview_shows_the_process_figures(site: Site) -> None:
    metrics = Metrics(ready=lambda: True)
    for status, count in (("ok", 5), ("transient", 2)):
        for _ in range(count):
            metrics.ci_call("DescribeAsrJob", status, 0.01)
    metrics.ci_call("CreateAsrJobs", "ok", 0.01)
    html = site.app(metrics=metrics).get("/ui/").text
    figures = html[html.index('id="figures"') :]
    assert '<td>CI requests answered</td><td class="num">6</td>' in figures
    assert '<td>CI requests failed for now (throttled, busy)</td><td class="num">2</td>' in figures
    assert "no answer" not in figures  # no such request: not shown as 0
    assert 'id="figures"' not in site.app().get("/ui/").text  # no metrics, no section


def test_overview_shows_intake_lag_and_ci_rate_per_hour(site: Site) -> None:
    clock = Clock()
    clock.now = 1_800_000_000.0
    hourly = HourlyFigures(clock=clock)
    for _ in range(30):
        hourly.ci_call("DescribeAsrJob", "ok", 0.01)
    for _ in range(6):
        hourly.ci_call("DescribeAsrJob", "transient", 0.01)
    hourly.intake_lag("q", 42.5)
    clock.now += 60  # a minute later: the rates are over that minute
    hourly.intake_lag("q", 3.0)
    app = site.app(hourly=hourly)
    # The page's hours are the real clock's; the figures' hours, the fake clock's: look at the
    # figures' own hour through the ``per_hour`` the page uses.
    start = (clock.now // 3600 - 23) * 3600
    assert hourly.per_hour("requests", start, 24)[-1] == 36
    assert hourly.per_hour("later", start, 24)[-1] == 6
    assert hourly.per_hour("lag_s", start, 24)[-1] == 42  # the longest of the hour
    html = app.get("/ui/").text
    flow = html[html.index('id="flow"') :]
    assert 'id="intake-lag">3.0 s<' in flow  # the latest poll's
    assert 'id="ci-rate">0.60<' in flow  # 36 requests over the 60 s since the start
    assert html.count("<rect ") == 48 + 4 * 24  # four more charts, 24 hours each
    assert "intake lag, the longest (s) per hour" in flow
    assert 'id="flow"' not in site.app().get("/ui/").text  # not wired: not shown


def test_usage_hours_and_cost_only_with_a_price_table(site: Site) -> None:
    plain = site.app().get("/ui/usage?by=engine").text
    assert 'id="total-hours">2.0000<' in plain
    assert '<td>16k_zh</td><td class="num">1</td><td class="num">1.500</td></tr>' in plain
    assert "Estimated cost" not in plain and "no cost is shown" in plain
    prices = UsageSettings(currency="CNY", prices={"16k_zh": 2.0})
    priced = site.app(prices=prices).get("/ui/usage?by=engine").text
    assert "Estimated cost (CNY)" in priced
    assert '<td class="num">1.500</td><td class="num">3.00</td>' in priced
    assert '<td class="num">0.500</td><td class="num">no price</td>' in priced  # 8k_zh
    by_queue = site.app(prices=prices).get("/ui/usage?by=queue&format=csv")
    assert by_queue.headers["content-type"].startswith("text/csv")
    assert by_queue.text == "queue,jobs,audio_hours,cost_CNY\npq-main,2,2.0000,\n"
    assert site.app().get("/ui/usage?by=colour").status_code == 400


def test_jobs_filters_live_in_the_url(site: Site) -> None:
    app = site.app()
    settled = job_ids(app.get("/ui/jobs?state=settled&limit=200").text)
    assert set(settled) == {site.synthetic[i] for i in range(0, SYNTHETIC, 3)}
    prefixed = job_ids(app.get("/ui/jobs?input=batch-b/&limit=200").text)
    assert set(prefixed) == {site.synthetic[i] for i in range(1, SYNTHETIC, 2)}
    assert job_ids(app.get("/ui/jobs?input=BATCH-B/").text) == []  # a prefix is exact
    one = app.get(f"/ui/jobs?job={site.jobs['evil']}").text
    assert job_ids(one) == [site.jobs["evil"]]
    # A time range: the ledger-only jobs 10..19 minutes past the first hour back.
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(site.started - 3600 - 19 * 60 - 1))
    until = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(site.started - 3600 - 10 * 60 + 1))
    ranged = job_ids(app.get(f"/ui/jobs?since={since}&until={until}").text)
    assert ranged == site.synthetic[10:20]
    overdue = job_ids(app.get("/ui/jobs?state=overdue&limit=200").text)
    assert len(overdue) == SYNTHETIC - len(settled) - len(
        [i for i in range(SYNTHETIC) if i % 3 and i % 5 == 0]
    )
    queued = job_ids(app.get("/ui/jobs?queue=pq1&limit=200").text)
    assert set(queued) == {site.synthetic[i] for i in range(1, SYNTHETIC, 4)}
    tagged = job_ids(app.get("/ui/jobs?user_data=team%3Dspeech%26run%3D2&limit=200").text)
    assert set(tagged) == {site.synthetic[i] for i in range(2, SYNTHETIC, 3)}  # any case
    assert job_ids(app.get("/ui/jobs?user_data=%25").text) == []  # a % is a %, no wildcard
    bad = app.get("/ui/jobs?since=yesterday")
    assert bad.status_code == 400 and "since: not a time: &#39;yesterday&#39;" in bad.text
    assert app.get("/ui/jobs?state=lost").status_code == 400


def test_jobs_keyset_paging_sees_every_job_once(site: Site) -> None:
    app = site.app()
    seen: list[str] = []
    url = "/ui/jobs?limit=25&input=batch-"
    pages = 0
    while url:
        html = app.get(url).text
        seen += job_ids(html)
        url = next_url(html)
        if url:
            query = parse_qs(urlsplit(url).query)
            assert "before" in query and "offset" not in query and query["input"] == ["batch-"]
        pages += 1
    assert pages == 5  # 120 jobs, 25 a page
    assert seen == site.synthetic  # newest first, none twice, none missed


def test_job_page_transcript_segments_and_deliveries(site: Site) -> None:
    html = site.app().get(f"/ui/jobs/{site.jobs['calm']}").text
    assert "Good morning." in html and "The second sentence." in html
    assert re.search(r"<td>0:0\d\.\d{3}</td><td>0:0\d\.\d{3}</td>", html), "segment times"
    assert "<tr><td>files</td><td>delivered</td></tr>" in html
    assert "<tr><td>app</td><td>owed</td></tr>" in html
    assert "batch=7" in html and "media/calm.mp3" in html
    # The timeline from the ledger, in order: each step with the time since the one before.
    timeline = html[html.index('id="timeline"') :]
    steps = re.findall(
        r"<td>(submitted|created|delivered)</td><td class=\"wrap\">([^<]*)</td>", timeline
    )
    assert steps == [("submitted", "media/calm.mp3"), ("created", "client token tok-calm"),
                     ("delivered", "files")]  # fmt: skip
    assert "+0.0 s" in timeline or "+0.1 s" in timeline


def test_job_page_shows_the_trace_id_when_the_job_was_traced(site: Site) -> None:
    job = site.jobs["calm"]
    assert 'id="trace-id"' not in site.app().get(f"/ui/jobs/{job}").text
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    site.ledger.set_trace_parent(job, f"00-{trace}-00f067aa0ba902b7-01")
    html = site.app().get(f"/ui/jobs/{job}").text
    assert f'<dd id="trace-id">{trace}</dd>' in html


def test_hostile_transcript_and_user_data_show_as_text(site: Site) -> None:
    listed = site.app().get(f"/ui/jobs?job={site.jobs['evil']}").text
    assert "&lt;script&gt;alert(&#39;userdata&#39;)&lt;/script&gt;" in listed
    assert "<script>alert" not in listed
    html = site.app().get(f"/ui/jobs/{site.jobs['evil']}").text
    assert "<script>alert" not in html
    assert "&lt;script&gt;alert(&#39;transcript&#39;)&lt;/script&gt;" in html
    assert "&lt;script&gt;alert(&#39;userdata&#39;)&lt;/script&gt;" in html


def test_job_page_shows_the_intake_and_failed_attempt_steps(site: Site) -> None:
    job = site.jobs["evil"]
    timeline = TimelineObserver(site.ledger)
    body = f'{{"EventName": "TaskFinish", "JobsDetail": {{"JobId": "{job}"}}}}'.encode()
    timeline.callbacks_moved("persistent://public/default/t", [MovedCallback(body, 1.0, "URL")])
    timeline.described([job], {job: {"JobId": job, "State": "Success"}}, 0.02)
    retry = Settlement(Action.RETRY, "CI answered <b>503</b>", 8.0)
    timeline.settled(MessageInfo("1:1:1", 1, 0), Verdict(Outcome.RETRY, "", job), retry)
    timeline.drain()
    html = site.app().get(f"/ui/jobs/{job}").text
    steps = html[html.index('id="timeline"') :]
    for stage in ("callback received", "moved onto Pulsar", "read back", "retry scheduled"):
        assert f"<td>{stage}</td>" in steps
    assert "CI said Success (0.02 s)" in steps
    assert "attempt 1 failed: CI answered &lt;b&gt;503&lt;/b&gt;; retry in 8 s" in steps


def test_unknown_job_is_404(site: Site) -> None:
    app = site.app()
    assert app.get(f"/ui/jobs/s{'f' * 32}").status_code == 404
    r = app.get("/ui/jobs/%3Cscript%3E")
    assert r.status_code == 404 and "<script>" not in r.text


def test_dead_letters_grouped_by_reason_and_escaped(site: Site) -> None:
    html = site.app().get("/ui/dead-letters").text
    assert "3 message(s) parked" in html
    assert html.index("gave up after 3 attempts") < html.index("unparseable body")  # 2 before 1
    assert "&lt;b&gt;not JSON&lt;/b&gt;" in html and "<b>not JSON</b>" not in html
    assert "<script>alert" not in html


# -- actions ---------------------------------------------------------------------------------
def _confirm(app: TestClient, reason: str) -> tuple[str, list[str], str]:
    r = app.get("/ui/dead-letters/replay", params={"reason": reason})
    assert r.status_code == 200
    ids = re.findall(r'name="id" value="([^"]+)"', r.text)
    return r.text, ids, csrf_of(r.text) if 'name="csrf"' in r.text else ""


def test_read_only_console_refuses_replay(site: Site) -> None:
    app = site.app(actions=False)
    app.get("/ui/")  # the session cookie
    html, ids, csrf = _confirm(app, REASON_A)
    assert re.search(r'id="dry-run">Dry run: <strong>2</strong> message\(s\)', html)
    assert "read-only" in html and 'id="confirm"' not in html
    # The server refuses a well-formed request all the same.
    r = app.post("/ui/dead-letters/replay", data={"csrf": csrf, "id": ids})
    assert r.status_code == 403 and "read-only" in r.text
    assert "3 message(s) parked" in app.get("/ui/dead-letters").text


def test_replay_needs_csrf_then_goes_through_the_confirmation(site: Site) -> None:
    app = site.app(actions=True)
    app.get("/ui/")
    html, ids, csrf = _confirm(app, REASON_A)
    assert len(ids) == 2 and "Replay 2 message(s)" in html
    assert app.post("/ui/dead-letters/replay", data={"id": ids}).status_code == 403
    forged = app.post("/ui/dead-letters/replay", data={"id": ids, "csrf": csrf + "x"})
    assert forged.status_code == 403 and "CSRF" in forged.text
    other = site.app(actions=True)  # another browser's token is not this session's
    other.get("/ui/")
    assert other.post("/ui/dead-letters/replay", data={"id": ids, "csrf": csrf}).status_code == 403

    done = app.post("/ui/dead-letters/replay", data={"id": ids, "csrf": csrf})
    assert done.status_code == 303
    assert done.headers["location"] == "/ui/dead-letters?replayed=2&refused=0"
    after = app.get(done.headers["location"]).text
    assert 'id="replay-result">Replayed 2 message(s)' in after
    assert "1 message(s) parked" in after
    copies = read_topic(site.settings.pulsar.service_url, site.settings.pulsar.topic)
    assert sorted(m.data() for m in copies) == sorted([b'{"JobId": "one"}', HOSTILE.encode()])
    assert {m.properties()[REPLAYS] for m in copies} == {"1"}


def test_redelivery_to_one_sink(site: Site) -> None:
    job = site.jobs["calm"]
    record = site.settings.sinks[0].dir / f"{job}.json"  # type: ignore[union-attr]
    assert not record.exists()  # the ledger says "files" has it; it never did (tests' set-up)
    read_only = site.app(redeliver=True)
    csrf = csrf_of(read_only.get(f"/ui/jobs/{job}").text)
    refused = read_only.post(f"/ui/jobs/{job}/redeliver", data={"sink": "files", "csrf": csrf})
    assert refused.status_code == 403 and "read-only" in refused.text
    assert not record.exists()

    app = site.app(actions=True, redeliver=True)
    page = app.get(f"/ui/jobs/{job}").text
    assert 'action="/ui/jobs/' + job + '/redeliver"' in page
    csrf = csrf_of(page)
    assert app.post(f"/ui/jobs/{job}/redeliver", data={"sink": "files"}).status_code == 403
    owed = app.post(f"/ui/jobs/{job}/redeliver", data={"sink": "app", "csrf": csrf})
    assert owed.status_code == 409  # "app" does not have it: nothing to deliver again
    done = app.post(f"/ui/jobs/{job}/redeliver", data={"sink": "files", "csrf": csrf})
    assert done.status_code == 303
    assert done.headers["location"].startswith(f"/ui/jobs/{job}?redelivered=files&ok=1")
    assert record.exists()
    after = app.get(done.headers["location"]).text
    assert 'id="redelivery">Delivered again to files.' in after
    steps = [e.stage for e in site.ledger.events(job)]
    assert steps[-3:] == ["redelivery asked", "delivered", "settled"]  # files was all it owed
    # Without a pipeline in the process (asrd intake), nothing is offered or done.
    assert "/redeliver" not in site.app(actions=True).get(f"/ui/jobs/{job}").text


def test_login_exchanges_the_token_for_a_session(site: Site) -> None:
    app = site.app(token=TOKEN)
    r = app.get("/ui/jobs")
    assert r.status_code == 303 and r.headers["location"] == "/ui/login?next=%2Fui%2Fjobs"
    assert "set-cookie" not in r.headers
    filtered = app.get("/ui/jobs?state=owed&input=batch-a/")
    assert (
        filtered.headers["location"]
        == "/ui/login?next=%2Fui%2Fjobs%3Fstate%3Dowed%26input%3Dbatch-a%2F"
    )
    form = app.get("/ui/login?next=/ui/jobs")
    assert form.status_code == 200 and 'type="password"' in form.text
    wrong = app.post("/ui/login", data={"token": "guess", "next": "/ui/jobs"})
    assert wrong.status_code == 401 and "not the API" in wrong.text
    assert app.get("/ui/").status_code == 303
    # An open redirect is not on offer.
    r = app.post("/ui/login", data={"token": TOKEN, "next": "//evil.example/"})
    assert r.status_code == 303 and r.headers["location"] == "/ui/"
    cookie = r.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/ui" in cookie
    assert app.get("/ui/jobs").status_code == 200
    assert app.get("/v1/jobs").status_code == 401  # the cookie is the console's only

    stranger = site.app(token=TOKEN)
    stranger.cookies.set("asrd_console", "forged.value.here", path="/ui")
    assert stranger.get("/ui/").status_code == 303
    bearer = stranger.get("/ui/", headers={"Authorization": f"Bearer {TOKEN}"})
    assert bearer.status_code == 200

    out = app.post("/ui/logout", data={"csrf": csrf_of(app.get("/ui/").text)})
    assert out.status_code == 303 and out.headers["location"] == "/ui/login"
    assert app.get("/ui/").status_code == 303
