"""The console's routes (an APIRouter the sidecar API mounts at ``/ui``)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlencode

import structlog
from fastapi import APIRouter, Form, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape
from prometheus_client.parser import text_string_to_metric_families

from .. import dlq
from ..callback import JOB_ID
from ..ci import CiClient, CiError
from ..config import PulsarSettings, UsageSettings
from ..hourly import HourlyFigures
from ..ledger import (
    FAILED,
    OPEN_STATUSES,
    OWED,
    PENDING,
    SETTLED,
    USAGE_GROUPS,
    JobBook,
    JobEntry,
    JobEvent,
    JobQuery,
)
from ..result import InvalidResult, ResultRecord, normalise
from ..tracing import trace_id
from ..usage import report, to_csv
from .charts import hourly_bars
from .security import COOKIE, HEADERS, Guard, Session

log = structlog.get_logger("asrd.console")
HERE = Path(__file__).resolve().parent
STATIC = {"console.css": "text/css", "console.js": "text/javascript"}
STATES = ("owed", "overdue", "settled", "failed", "pending")
PAGE_SIZES = (25, 50, 100, 200)


@dataclass
class ConsoleContext:
    ledger: JobBook
    ci: CiClient
    pulsar: PulsarSettings
    sinks: list[str] = field(default_factory=list)  # configured sink names, in order
    token: str = ""  # the API's bearer token ("" = loopback, no login)
    actions: bool = False  # [http] console_actions: replay allowed
    max_replays: int = 3
    dlq_wait_ms: int = 500  # how long an idle dead-letter partition is waited on per page
    metrics: Callable[[], bytes] | None = None  # the Prometheus exposition /metrics serves
    prices: UsageSettings = field(default_factory=UsageSettings)  # [usage]: cost estimates
    # What lists and replays dead letters: the dlq module on the configured broker.
    list_dead: Callable[[], list[dlq.DeadLetter]] | None = None
    # Delivers a job to the sinks that lack it (the daemon's pipeline): (done, why not).
    # None where no pipeline runs (``asrd intake``): redelivery is not offered.
    redeliver: Callable[[str], tuple[bool, str]] | None = None
    replay: Callable[[set[str]], dlq.ReplayReport] | None = None
    # This process's intake and CI figures per hour (None: the overview leaves them out).
    hourly: HourlyFigures | None = None

    def __post_init__(self) -> None:
        if self.list_dead is None:
            self.list_dead = lambda: dlq.list_dead_letters(self.pulsar, wait_ms=self.dlq_wait_ms)
        if self.replay is None:
            self.replay = lambda ids: dlq.replay(
                self.pulsar, ids, self.max_replays, wait_ms=self.dlq_wait_ms
            )


def _iso(ts: float | None) -> str:
    if ts is None:
        return ""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S")


def _clock(ms: int) -> str:
    minutes, rest = divmod(ms, 60_000)
    return f"{minutes}:{rest / 1000:06.3f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 60:
        return f"+{seconds:.1f} s"
    if seconds < 3600:
        return f"+{seconds / 60:.1f} min"
    return f"+{seconds / 3600:.1f} h"


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(HERE / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["iso"] = _iso
    env.filters["clock"] = _clock
    env.filters["duration"] = _duration
    return env


def _parse_time(value: str, name: str) -> float | None:
    """A time from a filter: ISO 8601 (the browser's datetime-local has no offset: UTC)."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(f"{name}: not a time: {value!r} (use 2026-01-31T08:00)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.timestamp()


def _cursor(entry: JobEntry) -> str:
    return f"{entry.submitted_at!r},{entry.client_token}"


def _parse_cursor(value: str) -> tuple[float, str] | None:
    if not value:
        return None
    ts, sep, token = value.partition(",")
    try:
        return (float(ts), token) if sep else None
    except ValueError:
        return None


def _job_query(filters: dict[str, str], before: str, limit: int) -> JobQuery:
    statuses: tuple[str, ...] = ()
    overdue_at = None
    state = filters["state"]
    if state == "overdue":
        statuses, overdue_at = OPEN_STATUSES, time.time()
    elif state == "owed":
        statuses = OPEN_STATUSES
    elif state:
        statuses = ({"settled": SETTLED, "failed": FAILED, "pending": PENDING}[state],)
    return JobQuery(
        statuses=statuses,
        overdue_at=overdue_at,
        since=_parse_time(filters["since"], "since"),
        until=_parse_time(filters["until"], "until"),
        input_prefix=filters["input"],
        job_id=filters["job"].strip(),
        queue_id=filters["queue"].strip(),
        user_data=filters["user_data"],
        before=_parse_cursor(before),
        limit=limit,
    )


# The process's figures the overview shows: (label, metric sample name, label filter).
_FIGURES: tuple[tuple[str, str, dict[str, str]], ...] = (
    ("seconds since the intake's last CMQ poll", "asrd_intake_seconds_since_last_poll", {}),
    ("callbacks moved from CMQ onto Pulsar", "asrd_intake_messages_moved_total", {}),
    ("CI requests answered", "asrd_ci_requests_total", {"status": "ok"}),
    (
        "CI requests failed for now (throttled, busy)",
        "asrd_ci_requests_total",
        {"status": "transient"},
    ),
    ("CI requests refused for good", "asrd_ci_requests_total", {"status": "permanent"}),
    ("CI requests that got no answer", "asrd_ci_requests_total", {"status": "error"}),
    ("messages dead-lettered", "asrd_dead_letters_total", {}),
)


def _figures(exposition: bytes) -> list[tuple[str, float]]:
    """The overview's figures from this process's metrics (totals since it started)."""
    totals: dict[int, float] = {}
    found: set[int] = set()
    for family in text_string_to_metric_families(exposition.decode("utf-8", "replace")):
        for sample in family.samples:
            for i, (_, name, wanted) in enumerate(_FIGURES):
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in wanted.items()
                ):
                    totals[i] = totals.get(i, 0.0) + sample.value
                    found.add(i)
    return [(label, totals[i]) for i, (label, _, _) in enumerate(_FIGURES) if i in found]


def _flow(ctx: ConsoleContext, start: float) -> dict[str, Any] | None:
    """The intake's lag and CI's request rate and throttling: now, and per hour since this
    process started (within the last 24 h from ``start``)."""
    hourly = ctx.hourly
    if hourly is None:
        return None
    now = hourly.now()
    limiter = ctx.ci.limiter
    charts = {}
    for name, label in (
        ("requests", "CI requests"),
        ("later", "CI requests throttled or busy"),
        ("moved", "callbacks moved onto Pulsar"),
        ("lag_s", "intake lag, the longest (s)"),
    ):
        values = hourly.per_hour(name, start, 24)
        charts[label] = (hourly_bars(values, start), max(values))
    return {
        "now": now,
        "limit": None if limiter is None else (limiter.rate, limiter.ceiling),
        "throttled": None if limiter is None else limiter.throttled_total,
        "charts": charts,
    }


def _timeline(events: list[JobEvent]) -> list[dict[str, Any]]:
    """Each event with the time since the one before (how long each step took)."""
    rows = []
    for i, event in enumerate(events):
        since = event.at - events[i - 1].at if i else None
        rows.append({"at": event.at, "stage": event.stage, "detail": event.detail, "after": since})
    return rows


def _groups(letters: list[dlq.DeadLetter]) -> list[dict[str, Any]]:
    """Dead letters by reason, the largest group first; each with its first and last time."""
    by_reason: dict[str, list[dlq.DeadLetter]] = {}
    for letter in letters:
        by_reason.setdefault(letter.reason or "(no reason)", []).append(letter)
    groups = [
        {
            "reason": reason,
            "letters": items,
            "first": min(i.published_at for i in items),
            "last": max(i.published_at for i in items),
        }
        for reason, items in by_reason.items()
    ]
    return sorted(groups, key=lambda g: (-len(g["letters"]), g["reason"]))


def build_router(ctx: ConsoleContext) -> APIRouter:
    router = APIRouter(include_in_schema=False)
    guard = Guard(ctx.token)
    env = _environment()

    def page(
        request: Request,
        session: Session | None,
        template: str,
        status: int = 200,
        **values: Any,
    ) -> HTMLResponse:
        body = env.get_template(template).render(
            csrf=guard.csrf_token(session) if session is not None else "",
            actions=ctx.actions,
            login_required=guard.login_required,
            path=request.url.path,
            **values,
        )
        response = HTMLResponse(body, status_code=status, headers=HEADERS)
        if session is not None and session.fresh:
            _set_cookie(request, response, session)
        return response

    def _set_cookie(request: Request, response: Response, session: Session) -> None:
        response.set_cookie(
            COOKIE,
            guard.cookie_value(session),
            max_age=None,
            path="/ui",
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
        )

    def redirect(url: str) -> RedirectResponse:
        return RedirectResponse(url, status_code=303, headers=HEADERS)

    def who(request: Request) -> Session | None:
        """The caller's session; None when a login is needed first. A loopback console without
        a token makes one for any caller (it still anchors the CSRF tokens)."""
        session = guard.session(request.cookies.get(COOKIE))
        if session is not None:
            return session
        if not guard.login_required or guard.bearer_matches(request.headers.get("authorization")):
            return guard.new_session()
        return None

    def to_login(request: Request) -> RedirectResponse:
        # Back to the same view after signing in, filters and all.
        query = request.url.query
        here = f"{request.url.path}?{query}" if query else request.url.path
        return redirect(f"/ui/login?{urlencode({'next': here})}")

    def refused(request: Request, session: Session | None, status: int, message: str) -> Response:
        return page(request, session, "message.html", status=status, title="Refused", text=message)

    def check_action(request: Request, session: Session | None, csrf: str) -> Response | None:
        """Why a POST may not act, as the answer to give; None when it may."""
        if session is None or session.fresh:
            return refused(request, session, 403, "no session: open the page again and retry")
        if not guard.csrf_valid(session, csrf):
            return refused(request, session, 403, "the form's CSRF token is missing or invalid")
        if not ctx.actions:
            return refused(
                request,
                session,
                403,
                "this console is read-only: set [http] console_actions = true to replay",
            )
        return None

    # -- assets and login ------------------------------------------------------------------
    @router.get("/static/{name}")
    def static(name: str) -> Response:
        kind = STATIC.get(name)
        if kind is None:
            return Response("not found", status_code=404, media_type="text/plain")
        body = (HERE / "static" / name).read_bytes()
        return Response(body, media_type=kind, headers={**HEADERS, "Cache-Control": "max-age=300"})

    @router.get("/login")
    def login_form(request: Request, next: str = "/ui/") -> Response:
        if not guard.login_required:
            return redirect("/ui/")
        return page(request, None, "login.html", title="Sign in", next=_local(next), error="")

    @router.post("/login")
    def login(
        request: Request,
        token: Annotated[str, Form(max_length=4096)] = "",
        next: Annotated[str, Form(max_length=2048)] = "/ui/",
    ) -> Response:
        if not guard.token_matches(token):
            log.warning("console login refused", client=request.client and request.client.host)
            return page(
                request, None, "login.html", status=401, title="Sign in", next=_local(next),
                error="that is not the API's bearer token",
            )  # fmt: skip
        session = guard.new_session()
        response = redirect(_local(next))
        _set_cookie(request, response, session)
        return response

    @router.post("/logout")
    def logout(request: Request, csrf: Annotated[str, Form(max_length=512)] = "") -> Response:
        session = who(request)
        if not guard.csrf_valid(session, csrf):
            return refused(request, session, 403, "the form's CSRF token is missing or invalid")
        response = redirect("/ui/login" if guard.login_required else "/ui/")
        response.delete_cookie(COOKIE, path="/ui")
        return response

    # -- pages ---------------------------------------------------------------------------
    @router.get("/")
    def overview(request: Request) -> Response:
        session = who(request)
        if session is None:
            return to_login(request)
        now = time.time()
        start = (now // 3600 - 23) * 3600
        counts = ctx.ledger.status_counts()
        stats = ctx.ledger.job_stats(now)
        submitted = ctx.ledger.per_hour("submitted_at", start, 24)
        settled = ctx.ledger.per_hour("settled_at", start, 24)
        dead: int | None
        try:
            assert ctx.list_dead is not None
            dead = len(ctx.list_dead())
        except Exception as exc:  # noqa: BLE001 - a broker outage must not take the page down
            log.warning("console: cannot list dead letters", error=str(exc))
            dead = None
        return page(
            request,
            session,
            "overview.html",
            title="Overview",
            counts={
                "submitted": sum(counts.values()),
                "settled": counts.get(SETTLED, 0),
                "owed": counts.get(OWED, 0) + counts.get(PENDING, 0),
                "overdue": stats.overdue,
                "failed": counts.get(FAILED, 0),
            },
            oldest_owed=stats.oldest_owed_at,
            submitted_bars=hourly_bars(submitted, start),
            settled_bars=hourly_bars(settled, start),
            submitted_total=sum(submitted),
            settled_total=sum(settled),
            sinks={name: 0 for name in ctx.sinks} | ctx.ledger.deliveries_per_sink(),
            dead=dead,
            figures=_figures(ctx.metrics()) if ctx.metrics is not None else [],
            flow=_flow(ctx, start),
            refresh=True,
        )

    @router.get("/jobs")
    def jobs(
        request: Request,
        state: Annotated[str, Query(pattern=f"^({'|'.join(STATES)})?$")] = "",
        since: Annotated[str, Query(max_length=40)] = "",
        until: Annotated[str, Query(max_length=40)] = "",
        input: Annotated[str, Query(max_length=850)] = "",
        job: Annotated[str, Query(max_length=64)] = "",
        queue: Annotated[str, Query(max_length=64)] = "",
        user_data: Annotated[str, Query(max_length=1024)] = "",
        before: Annotated[str, Query(max_length=200)] = "",
        limit: Annotated[int, Query(ge=1, le=max(PAGE_SIZES))] = 50,
    ) -> Response:
        session = who(request)
        if session is None:
            return to_login(request)
        filters = {
            "state": state, "since": since, "until": until, "input": input, "job": job,
            "queue": queue, "user_data": user_data,
        }  # fmt: skip
        try:
            query = _job_query(filters, before, limit + 1)
        except ValueError as exc:
            return page(
                request, session, "jobs.html", status=400, title="Jobs", filters=filters,
                rows=[], error=str(exc), next_url="", first_url="", states=STATES,
                limit=limit, now=time.time(),
            )  # fmt: skip
        found = ctx.ledger.browse_jobs(query)
        rows, more = found[:limit], len(found) > limit
        kept = {k: v for k, v in filters.items() if v}
        if limit != 50:
            kept["limit"] = str(limit)
        next_url = f"/ui/jobs?{urlencode({**kept, 'before': _cursor(rows[-1])})}" if more else ""
        return page(
            request, session, "jobs.html", title="Jobs", filters=filters, rows=rows,
            error="", next_url=next_url, first_url=f"/ui/jobs?{urlencode(kept)}" if before else "",
            states=STATES, limit=limit, now=time.time(),
        )  # fmt: skip

    @router.get("/jobs/{job_id}")
    async def job_page(
        request: Request,
        job_id: str,
        redelivered: Annotated[str, Query(max_length=200)] = "",
        ok: Annotated[str, Query(pattern="^[01]?$")] = "",
        why: Annotated[str, Query(max_length=300)] = "",
    ) -> Response:
        session = who(request)
        if session is None:
            return to_login(request)
        outcome = {"sink": redelivered, "ok": ok == "1", "why": why} if redelivered else None
        if not JOB_ID.fullmatch(job_id):
            return page(
                request, session, "message.html", status=404, title="No such job",
                text=f"not a job id: {job_id}",
            )  # fmt: skip
        return await run_in_threadpool(_job_view, request, session, job_id, outcome)

    def _job_view(
        request: Request, session: Session, job_id: str, outcome: dict[str, Any] | None
    ) -> Response:
        entry = ctx.ledger.job(job_id)
        delivered = ctx.ledger.delivered(job_id)
        finished = ctx.ledger.finished_sinks(job_id)
        record: ResultRecord | None = None
        problem = ""
        try:
            detail = ctx.ci.get_job(job_id)
            if detail is None:
                problem = "CI does not know this job"
            else:
                record = normalise(detail)
        except CiError as exc:
            problem = f"CI could not be asked: {exc}"
        except InvalidResult as exc:
            problem = f"CI's answer is not a valid result: {exc}"
        if entry is None and record is None:
            return page(
                request, session, "message.html", status=404, title="No such job",
                text=f"neither the ledger nor CI knows job {job_id}: {problem}",
            )  # fmt: skip
        names = list(ctx.sinks) + sorted((delivered | finished) - set(ctx.sinks))
        sinks = [
            (
                name,
                "delivered"
                if name in delivered
                else "not selected"
                if name in finished
                else "owed",
            )
            for name in names
        ]
        return page(
            request, session, "job.html", title=f"Job {job_id}", job_id=job_id, entry=entry,
            record=record, problem=problem, sinks=sinks, now=time.time(),
            timeline=_timeline(ctx.ledger.events(job_id)), outcome=outcome,
            trace_id=trace_id(ctx.ledger.trace_parents([job_id]).get(job_id)),
            can_redeliver=ctx.actions and ctx.redeliver is not None,
        )  # fmt: skip

    @router.get("/usage")
    def usage(
        request: Request,
        days: Annotated[int, Query(ge=1, le=366)] = 30,
        by: Annotated[str, Query(pattern=f"^({'|'.join(USAGE_GROUPS)})$")] = "day",
        format: Annotated[str, Query(pattern="^(html|csv)$")] = "html",
    ) -> Response:
        session = who(request)
        if session is None:
            return to_login(request)
        since = (time.time() // 86400 - (days - 1)) * 86400  # whole UTC days
        lines = report(ctx.ledger, since, by, ctx.prices)
        if format == "csv":
            return Response(
                to_csv(lines, by, ctx.prices),
                media_type="text/csv; charset=utf-8",
                headers={
                    **HEADERS,
                    "Content-Disposition": f'attachment; filename="usage-{by}.csv"',
                },
            )
        return page(
            request, session, "usage.html", title="Usage", lines=lines, by=by, days=days,
            groups=USAGE_GROUPS, priced=bool(ctx.prices.prices), currency=ctx.prices.currency,
            total_hours=sum(line.audio_hours for line in lines),
            csv_url=f"/ui/usage?{urlencode({'days': days, 'by': by, 'format': 'csv'})}",
        )  # fmt: skip

    @router.post("/jobs/{job_id}/redeliver")
    async def redeliver(
        request: Request,
        job_id: str,
        sink: Annotated[str, Form(max_length=200)] = "",
        csrf: Annotated[str, Form(max_length=512)] = "",
    ) -> Response:
        session = guard.session(request.cookies.get(COOKIE))
        answer = check_action(request, session, csrf)
        if answer is not None:
            return answer
        if ctx.redeliver is None:
            return refused(request, session, 403, "redelivery runs where the consumer runs")
        if not JOB_ID.fullmatch(job_id) or sink not in ctx.sinks:
            return refused(request, session, 400, f"no sink {sink!r} for job {job_id}")
        if not await run_in_threadpool(ctx.ledger.forget_delivery, job_id, sink):
            return refused(request, session, 409, f"sink {sink} does not have job {job_id}")
        done, why = await run_in_threadpool(ctx.redeliver, job_id)
        log.info("console redelivery", job_id=job_id, sink=sink, done=done, reason=why)
        query = {"redelivered": sink, "ok": "1" if done else "0", "why": why[:300]}
        return redirect(f"/ui/jobs/{job_id}?{urlencode(query)}")

    @router.get("/dead-letters")
    async def dead_letters(
        request: Request,
        replayed: Annotated[int | None, Query(ge=0)] = None,
        refused_count: Annotated[int | None, Query(alias="refused", ge=0)] = None,
    ) -> Response:
        session = who(request)
        if session is None:
            return to_login(request)
        assert ctx.list_dead is not None
        try:
            letters = await run_in_threadpool(ctx.list_dead)
        except Exception as exc:  # noqa: BLE001 - shown, not raised: the broker may be away
            return page(
                request, session, "message.html", status=503, title="Dead letters",
                text=f"cannot read the dead-letter topic: {exc}",
            )  # fmt: skip
        return page(
            request, session, "dead_letters.html", title="Dead letters", groups=_groups(letters),
            total=len(letters), replayed=replayed, refused=refused_count,
            topic=ctx.pulsar.dlq_topic, max_replays=ctx.max_replays,
        )  # fmt: skip

    @router.get("/dead-letters/replay")
    async def confirm_replay(
        request: Request,
        id: Annotated[list[str] | None, Query(max_length=200)] = None,
        reason: Annotated[str | None, Query(max_length=2000)] = None,
    ) -> Response:
        """The dry run: what a replay would send, counted, before anything is sent."""
        session = who(request)
        if session is None:
            return to_login(request)
        assert ctx.list_dead is not None
        letters = await run_in_threadpool(ctx.list_dead)
        wanted = set(id or ())
        chosen = [
            letter
            for letter in letters
            if letter.message_id in wanted
            or (reason is not None and (letter.reason or "(no reason)") == reason)
        ]
        ready = [c for c in chosen if c.replays < ctx.max_replays]
        return page(
            request, session, "confirm.html", title="Replay dead letters", chosen=chosen,
            ready=ready, reason=reason, max_replays=ctx.max_replays, topic=ctx.pulsar.topic,
        )  # fmt: skip

    @router.post("/dead-letters/replay")
    async def replay(
        request: Request,
        id: Annotated[list[str] | None, Form(max_length=200)] = None,
        csrf: Annotated[str, Form(max_length=512)] = "",
    ) -> Response:
        session = guard.session(request.cookies.get(COOKIE))
        answer = check_action(request, session, csrf)
        if answer is not None:
            return answer
        ids = set(id or ())
        if not ids:
            return redirect("/ui/dead-letters")
        assert ctx.replay is not None
        report = await run_in_threadpool(ctx.replay, ids)
        await run_in_threadpool(ctx.ledger.note_events, report.events(), report.started_at)
        log.info(
            "console replay",
            replayed=len(report.replayed),
            refused=len(report.refused),
            asked=len(ids),
        )
        query = urlencode({"replayed": len(report.replayed), "refused": len(report.refused)})
        return redirect(f"/ui/dead-letters?{query}")

    return router


def _local(target: str) -> str:
    """Only a page of this console may be where a login goes next (no open redirect)."""
    return target if target.startswith("/ui/") and not target.startswith("/ui//") else "/ui/"
