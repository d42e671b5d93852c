"""The API's request and response shapes: the OpenAPI document is generated from these, so
each constraint here is what the document promises and what validation enforces."""

from __future__ import annotations

from typing import Any, Literal

from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..callback import JOB_ID

JOB_ID_PATTERN = f"^{JOB_ID.pattern}$"  # a path pattern is searched, not matched: anchor it


class ApiError(BaseModel):
    error: str = Field(description="What is wrong, in one line.")
    code: str | None = Field(default=None, description="CI's error code, when CI refused.")
    client_token: str | None = Field(default=None, description="The submit's client token.")


class Health(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    ready: bool
    reason: str | None = Field(default=None, description="Why work is paused, when it is.")


# No control characters (CI's request is XML, which should not carry them) and no whitespace
# at either end (XML text is trimmed: " a" would name another object, " " none). Classes are
# spelled out because \s differs between the regex dialects that read this pattern.
_END = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff]"
_TEXT = rf"^{_END}([^\x00-\x1f\x7f-\x9f]*{_END})?$"


class JobRequest(BaseModel):
    """Exactly one of ``input`` (an object key in the configured bucket) and ``url``."""

    model_config = ConfigDict(
        extra="forbid",
        strict=True,  # no true for 1, no "2" for 2
        json_schema_extra={
            "oneOf": [
                {"required": [key], "properties": {key: {"type": "string"}}}
                for key in ("input", "url")
            ]
        },
    )
    input: str | None = Field(default=None, max_length=850, pattern=_TEXT)
    # No brackets: an IPv6 literal host is not accepted (and a stray one breaks URL parsers).
    url: str | None = Field(
        default=None, max_length=2048, pattern=r"^https?://[^\x00-\x20\x7f\[\]]+$"
    )
    output: str | None = Field(default=None, max_length=850, pattern=_TEXT)
    output_bucket: str | None = Field(default=None, pattern=r"^[a-z0-9-]+-\d+$")
    output_region: str | None = Field(default=None, pattern=r"^[a-z]+-[a-z0-9-]+$")
    # CI's 1,024 characters of UserData less "asrd:", the longest client token and a space.
    user_data: str | None = Field(default=None, max_length=954, pattern=r"^[ -~]*$")
    template_id: str | None = Field(default=None, max_length=128, pattern=_TEXT)
    client_token: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    job_level: int | None = Field(default=None, ge=0, le=2, strict=False, description="2 = soonest")

    @field_validator("job_level", mode="before")
    @classmethod
    def _json_integer(cls, value: Any) -> Any:
        # JSON Schema's integer: 1 and 1.0, never true or "1".
        if isinstance(value, bool) or not isinstance(value, int | float | None):
            raise ValueError("must be an integer")
        return value

    @model_validator(mode="after")
    def _one_source(self) -> JobRequest:
        if (self.input is None) == (self.url is None):
            raise ValueError("give exactly one of an input object or an input URL")
        return self


class JobSubmitted(BaseModel):
    job_id: str | None
    client_token: str
    status: str = Field(description="submitted, adopted, or skipped (the token was seen before)")


class JobList(BaseModel):
    jobs: list[dict[str, Any]]


class JobRecord(BaseModel):
    """The normalised result record (docs/configuration.md), plus which sinks asrd delivered
    it to."""

    model_config = ConfigDict(extra="allow")
    schema_version: int
    job_id: str
    state: str
    transcript: str
    segments: list[dict[str, Any]]
    delivered_to: list[str] = Field(description="Sinks that have this job, per the ledger.")
    events: list[dict[str, Any]] = Field(
        default_factory=list, description="The job's timeline in the ledger, oldest first."
    )
    trace_id: str | None = Field(
        default=None, description="The job's trace id (32 hex digits) when it was traced."
    )


# What CI (a JSON or XML TaskFinish) and a CMQ topic's HTTP push send, read raw and never parsed
# here; an XML body may come with any content type.
_NON_BLANK = {"type": "string", "pattern": r"\S"}
CALLBACK_BODY = {
    "required": True,
    "content": {
        "application/json": {"schema": {}},
        "text/plain": {"schema": _NON_BLANK},
    },
}


class Accepted(BaseModel):
    accepted: bool


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The documented error answers of an operation."""
    return {code: {"model": ApiError} for code in codes}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """Every error's one shape: ``{"error": "<one line>"}``."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)
