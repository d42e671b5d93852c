"""``/v1/jobs``: submit a job, list the ledger's jobs, look one up in CI and the ledger."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import JSONResponse

from ..ci import CiError
from ..jobs import SINCE_DURATION
from ..result import InvalidResult, normalise
from ..tracing import trace_id
from .context import ApiContext, context
from .models import JOB_ID_PATTERN, JobList, JobRecord, JobRequest, JobSubmitted, error, errors

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
Context = Annotated[ApiContext, Depends(context)]

# As parse_since reads it: a pattern alone would let through days that do not exist, which the
# server refuses, so a time is documented by its format.
SINCE = Query(
    description="90s, 30m, 2h, 1d ago, or an RFC 3339 time (with its UTC offset)",
    json_schema_extra={
        "anyOf": [
            {"type": "string", "pattern": f"^{SINCE_DURATION}$"},
            {"type": "string", "format": "date-time"},
        ]
    },
)


@router.post(
    "",
    status_code=201,
    response_model=JobSubmitted,
    responses={
        200: {"model": JobSubmitted, "description": "Already submitted (same client_token)"},
        **errors(400, 401, 411, 413, 502, 503),
    },
)
def create_job(req: JobRequest, ctx: Context) -> JSONResponse:
    """Recorded in the ledger before CI is asked; a repeated client_token is not sent again."""
    if ctx.jobs is None:
        return error(503, "job submission is not available here")
    status, body = ctx.jobs.submit(req.model_dump(exclude_none=True))
    return JSONResponse(body, status_code=status)


@router.get("", response_model=JobList, responses=errors(400, 401, 503))
def list_jobs(
    ctx: Context,
    state: Literal["owed", "settled", "overdue", "failed"] | None = None,
    since: Annotated[str | None, SINCE] = None,
    limit: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> JSONResponse:
    """The jobs the ledger knows, as ``asrd jobs`` lists them."""
    if ctx.jobs is None:
        return error(503, "the job ledger is not available here")
    query = {"state": state or "", "limit": str(limit)}
    if since is not None:  # an empty one is refused, as the document says
        query["since"] = since
    status, body = ctx.jobs.listing(query)
    return JSONResponse(body, status_code=status)


@router.get("/{job_id}", response_model=JobRecord, responses=errors(400, 401, 404, 502))
def get_job(
    ctx: Context,
    job_id: Annotated[str, Path(pattern=JOB_ID_PATTERN, description="s + 32 hex digits")],
) -> dict[str, Any] | JSONResponse:
    """The job as CI has it now, which sinks have it, and its timeline in the ledger."""
    try:
        detail = ctx.ci.get_job(job_id)
        if detail is None:
            return error(404, f"CI does not know job {job_id}")
        record = normalise(detail).to_dict()
    except CiError as exc:
        return error(502 if exc.transient else 400, str(exc))
    except InvalidResult as exc:
        return error(502, f"invalid result from CI: {exc}")
    ledger = ctx.ledger
    delivered = ledger.delivered(job_id) if ledger is not None else set()
    events = ledger.events(job_id) if ledger is not None else []
    kept = ledger.trace_parents([job_id]) if ledger is not None else {}
    return {
        **record,
        "delivered_to": sorted(delivered),
        "events": [event.to_dict() for event in events],
        "trace_id": trace_id(kept.get(job_id)),
    }
