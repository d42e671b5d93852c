"""``/healthz``, ``/readyz`` and ``/metrics``: what service managers and Prometheus ask."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, Response

from ..metrics import OPENMETRICS
from .context import ApiContext, context
from .models import Health, Readiness

router = APIRouter(tags=["probes"])
Context = Annotated[ApiContext, Depends(context)]


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready"}},
)
def readyz(ctx: Context) -> JSONResponse:
    ready = ctx.ready()
    body: dict[str, Any] = {"ready": ready}
    reason = ctx.not_ready()
    if reason:
        body["reason"] = reason
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {
                "text/plain": {"schema": {"type": "string"}},
                "application/openmetrics-text": {"schema": {"type": "string"}},
            }
        }
    },
)
def metrics(ctx: Context, request: Request) -> Response:
    # Prometheus asks for OpenMetrics first when it scrapes exemplars; only that format has them.
    if ctx.openmetrics is not None and "application/openmetrics-text" in request.headers.get(
        "accept", ""
    ):
        return Response(ctx.openmetrics(), media_type=OPENMETRICS)
    return Response(ctx.metrics(), media_type="text/plain; version=0.0.4; charset=utf-8")
