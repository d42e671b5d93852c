"""``/v1/callbacks/{token}``: CI's URL callbacks (and a CMQ topic's HTTP push) onto the Pulsar
topic, when ``[intake.url]`` is set. The secret is in the path: no bearer token."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from .context import ApiContext, context
from .models import CALLBACK_BODY, Accepted, error, errors

router = APIRouter(prefix="/v1/callbacks", tags=["callbacks"])


@router.post(
    "/{token}",
    response_model=Accepted,
    responses=errors(400, 404, 411, 413, 503),
    openapi_extra={"requestBody": CALLBACK_BODY},
)
async def url_callback(
    token: Annotated[str, Path(max_length=256)],
    request: Request,
    ctx: Annotated[ApiContext, Depends(context)],
) -> JSONResponse:
    receiver = ctx.callbacks
    if receiver is None or not receiver.token_matches(token):
        # 404, not 401: a wrong token must not tell a scanner that the endpoint exists.
        return error(404, "no such callback endpoint")
    body = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    answer = await run_in_threadpool(receiver.accept, token, body, headers)
    return JSONResponse(answer.body, status_code=answer.status)
