"""Build and send the create-job request, exactly once.

Every job asks CI to notify a TDMQ-CMQ queue or topic (``[ci.callback] type = "tdmq"``, the
default) or to POST to a URL (``type = "url"``), and carries a client token in ``UserData``
(``clienttoken.py``). The ledger records the token before the create is sent and the job id
once CI answers. A create whose outcome is unknown (connection lost, timeout, 5xx) is never
simply sent again: the token is first looked up among the queue's recently created jobs, and a
job found there is adopted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import structlog

from . import backoff, clienttoken
from .ci import CiClient, CiError, JobsDetail, ci_time
from .config import CiSettings
from .ledger import FAILED, PENDING, JobBook, JobEntry
from .limiter import RateLimiter
from .observers import Observers

log = structlog.get_logger("asrd.submit")


def build_request(
    settings: CiSettings,
    input_object: str | None = None,
    input_url: str | None = None,
    output_object: str | None = None,
    user_data: str | None = None,
    job_level: int | None = None,
    template_id: str | None = None,
    output_bucket: str | None = None,
    output_region: str | None = None,
) -> dict[str, Any]:
    """The ``<Request>`` body as a dict, in the element order the SDK itself uses.

    ``user_data`` is sent as given (callers put the client token in with ``clienttoken``).
    """
    if bool(input_object) == bool(input_url):
        raise ValueError("give exactly one of an input object or an input URL")
    if user_data is not None and (
        len(user_data) > clienttoken.MAX_USER_DATA or not clienttoken.printable(user_data)
    ):
        raise ValueError(
            f"user data must be printable ASCII of at most {clienttoken.MAX_USER_DATA} characters"
        )
    if job_level is not None and job_level not in (0, 1, 2):
        raise ValueError("job level must be 0, 1 or 2")
    rec = settings.recognition
    if output_object is None:
        name = input_object or (input_url or "").rstrip("/").rsplit("/", 1)[-1] or "input"
        output_object = f"{settings.output_prefix}{name}.{rec.output_file_type}"
    operation: dict[str, Any] = {
        "Output": {
            "Bucket": output_bucket or settings.bucket,
            "Region": output_region or settings.region,
            "Object": output_object,
        }
    }
    template = settings.template_id if template_id is None else template_id
    if template:
        operation["TemplateId"] = template
    else:
        operation["SpeechRecognition"] = {
            "EngineModelType": rec.engine_model_type,
            "ChannelNum": str(rec.channel_num),
            "ResTextFormat": str(rec.res_text_format),
            "SpeakerDiarization": str(rec.speaker_diarization),
            "FilterDirty": str(rec.filter_dirty),
            "FilterModal": str(rec.filter_modal),
            "ConvertNumMode": str(rec.convert_num_mode),
            "OutputFileType": rec.output_file_type,
        }
    if user_data:
        operation["UserData"] = user_data
    if job_level is not None:
        operation["JobLevel"] = str(job_level)
    cb = settings.callback
    request: dict[str, Any] = {
        "Input": {"Object": input_object} if input_object else {"Url": input_url},
        "Tag": "SpeechRecognition",
        "Operation": operation,
    }
    if settings.queue_id:
        request["QueueId"] = settings.queue_id
    if cb.type == "url":
        request.update({"CallBack": cb.url, "CallBackFormat": cb.format, "CallBackType": "Url"})
        return request
    request["CallBackFormat"] = cb.format
    request["CallBackType"] = "TDMQ"
    request["CallBackMqConfig"] = {
        "MqRegion": cb.mq_region,
        "MqMode": cb.mq_mode,
        "MqName": cb.mq_name,
    }
    return request


@dataclass(frozen=True)
class JobSpec:
    """What one job is made of: a manifest row, an object under a prefix, or a one-off submit."""

    input_object: str | None = None
    input_url: str | None = None
    output_object: str | None = None
    output_bucket: str | None = None
    output_region: str | None = None
    user_data: str | None = None
    job_level: int | None = None
    template_id: str | None = None
    client_token: str | None = None  # given by the caller; else derived (``token``)

    @property
    def input(self) -> str:
        return self.input_object or self.input_url or ""

    def token(self, bucket: str) -> str:
        """The given client token, or one derived from everything that defines the job."""
        if self.client_token:
            return self.client_token
        return clienttoken.derive(
            {
                "bucket": bucket,
                "object": self.input_object,
                "url": self.input_url,
                "output": self.output_object,
                "output_bucket": self.output_bucket,
                "output_region": self.output_region,
                "user_data": self.user_data,
                "job_level": self.job_level,
                "template_id": self.template_id,
            }
        )

    def request(self, settings: CiSettings, token: str) -> dict[str, Any]:
        """The create body, ``UserData`` carrying the token. Raises ValueError on bad input."""
        return build_request(
            settings,
            input_object=self.input_object,
            input_url=self.input_url,
            output_object=self.output_object,
            user_data=clienttoken.compose(token, self.user_data),
            job_level=self.job_level,
            template_id=self.template_id,
            output_bucket=self.output_bucket,
            output_region=self.output_region,
        )


def outcome_unknown(err: CiError) -> bool:
    """After this error CI may or may not have made the job: no HTTP answer at all (connection
    lost, timeout), an answer that is not one, or a 5xx (CI can fail after creating). Refused
    or missing keys are known: no job was made."""
    return not err.auth and (err.status is None or err.status >= 500)


class TokenLookup:
    """Finds jobs by client token among the queue's recently created jobs (list operation).

    Look-ups that wait at the same time share one scan of the list, so a burst of lost create
    answers costs a few list pages, not a scan each. A scan only answers look-ups registered
    before it started: a job created before the loss was noticed is then surely listed.
    """

    def __init__(
        self, ci: CiClient, queue_id: str, margin_s: float, clock: Callable[[], float] = time.time
    ) -> None:
        self._ci = ci
        self._queue_id = queue_id
        self._margin_s = margin_s
        self._clock = clock
        self._cond = threading.Condition()
        self._waiting: dict[str, tuple[float, float | None]] = {}
        self._results: dict[str, str | CiError | None] = {}
        self._scanning = False

    def find(self, token: str, since: float, until: float | None = None) -> str | None:
        """The job id carrying ``token``, created around ``[since, until]``; None if none.

        Raises ``CiError`` when CI's list cannot be read (then nothing is known).
        """
        with self._cond:
            self._waiting[token] = (since, until)
            while token not in self._results:
                if not self._scanning:
                    batch, self._waiting = self._waiting, {}
                    self._scanning = True
                    break
                self._cond.wait()
            else:
                return self._unwrap(self._results.pop(token))
        found: dict[str, str | CiError | None] = dict.fromkeys(batch)
        try:
            found.update(self._scan(batch))
        except CiError as exc:
            found = dict.fromkeys(batch, exc)
        finally:
            with self._cond:
                self._results.update(found)
                self._scanning = False
                self._cond.notify_all()
        with self._cond:
            return self._unwrap(self._results.pop(token))

    @staticmethod
    def _unwrap(value: str | CiError | None) -> str | None:
        if isinstance(value, CiError):
            raise value
        return value

    def _scan(self, batch: dict[str, tuple[float, float | None]]) -> dict[str, str]:
        start = min(since for since, _ in batch.values()) - self._margin_s
        ends = [until for _, until in batch.values()]
        end = None if None in ends else max(e for e in ends if e is not None) + self._margin_s
        found: dict[str, str] = {}
        jobs = self._ci.list_jobs(
            queue_id=self._queue_id or self._ci.queue_id(),
            start=ci_time(start),
            end=ci_time(end) if end is not None else None,
        )
        for detail in jobs:
            token, _ = clienttoken.split(_user_data(detail))
            if token in batch:
                # Newest first: the last one seen is the oldest, the one to keep.
                found[token] = str(detail.get("JobId", ""))
        log.info("client token look-up", looked_for=len(batch), found=len(found))
        return found


def _user_data(detail: JobsDetail) -> str | None:
    operation = detail.get("Operation")
    value = operation.get("UserData") if isinstance(operation, dict) else None
    return str(value) if value is not None else None


SUBMITTED, ADOPTED, SKIPPED, FAILED_ROW = "submitted", "adopted", "skipped", "failed"


@dataclass(frozen=True)
class SubmitOutcome:
    status: str  # submitted | adopted (found by token after a lost answer) | skipped | failed
    client_token: str
    job_id: str | None = None
    error: str | None = None
    attempts: int = 0
    submitted_at: float | None = None
    error_code: str | None = None
    permanent: bool = False  # CI refused the request itself (a 4xx): sending again cannot help

    @property
    def ok(self) -> bool:
        return self.status != FAILED_ROW


class Submitter:
    """Sends creates through the limiter and records every job in the ledger before returning."""

    def __init__(
        self,
        ci: CiClient,
        settings: CiSettings,
        ledger: JobBook,
        deadline_s: float,
        lookup: TokenLookup,
        limiter: RateLimiter | None = None,
        attempts: int = 5,
        retry_base_s: float = 0.5,
        stop: threading.Event | None = None,
        observers: Observers | None = None,
    ) -> None:
        self._ci = ci
        self._obs = observers or Observers()
        self._settings = settings
        self._ledger = ledger
        self._deadline_s = deadline_s
        self._lookup = lookup
        self._limiter = limiter
        self._attempts = attempts
        self._retry_base_s = retry_base_s
        self._stop = stop or threading.Event()

    def _queued_settings(self) -> CiSettings:
        """The settings with the queue id every create carries (looked up once if empty)."""
        if self._settings.queue_id:
            return self._settings
        return self._settings.model_copy(update={"queue_id": self._ci.queue_id()})

    @property
    def lookup(self) -> TokenLookup:
        return self._lookup

    def known(self, token: str) -> JobEntry | None:
        return self._ledger.job_by_token(token)

    def submit(self, spec: JobSpec, token: str) -> SubmitOutcome:
        """Create the job for ``spec`` unless the ledger already has ``token``.

        Raises ValueError when ``spec`` cannot make a valid request (nothing is sent).
        """
        self._obs.submit_started(token)
        out: SubmitOutcome | None = None
        try:
            out = self._submit(spec, token)
            return out
        finally:
            if out is None:
                self._obs.submit_ended(token, None, FAILED_ROW, "", "bad request")
            else:
                queue = self._settings.queue_id
                self._obs.submit_ended(token, out.job_id, out.status, queue, out.error or "")

    def _submit(self, spec: JobSpec, token: str) -> SubmitOutcome:
        try:
            settings = self._queued_settings()
        except CiError as exc:
            # Nothing was sent; the look-up is tried again with the next submit.
            error = f"cannot look up the bucket's ASR queue: {exc}"
            return SubmitOutcome(FAILED_ROW, token, None, error, permanent=not exc.transient)
        request = spec.request(settings, token)
        known = self._ledger.job_by_token(token)
        if known is not None and known.job_id is not None:
            return SubmitOutcome(SKIPPED, token, known.job_id, submitted_at=known.submitted_at)
        # A pending entry is a create whose answer an earlier run never saw: look it up first.
        unknown_since = known.submitted_at if known and known.status == PENDING else None
        now = time.time()
        entry = JobEntry(
            token, None, spec.input, PENDING, now, now + self._deadline_s,
            queue_id=self._settings.queue_id, user_data=spec.user_data or "",
        )  # fmt: skip
        if known is None or known.status == FAILED:
            self._ledger.record_pending(entry)
        return self._send(request, entry, unknown_since)

    def _send(
        self, request: dict[str, Any], entry: JobEntry, unknown_since: float | None
    ) -> SubmitOutcome:
        token = entry.client_token
        error = ""
        sent = 0
        for round_ in range(self._attempts + 1):
            if round_ > 0:
                # A pause first: after a lost answer it also lets CI's list catch up.
                wait = backoff.delay(round_, self._retry_base_s, 5.0)
                if self._stop.wait(wait):
                    break
            if unknown_since is not None:
                try:
                    job_id = self._lookup.find(token, unknown_since)
                except CiError as exc:
                    error = f"create outcome unknown and the look-up failed: {exc}"
                    continue  # never send blindly: look again after the pause
                if job_id:
                    return self._recorded(ADOPTED, entry, job_id, sent, unknown_since)
                unknown_since = None  # CI has no job with this token: sending again is safe
            if sent >= self._attempts:
                break
            if self._limiter is not None and not self._limiter.acquire(self._stop):
                break
            sent += 1
            sent_at = time.time()
            try:
                detail = self._ci.create_job(request)
            except CiError as exc:
                error = str(exc)
                self._obs.create_answered(token, sent, time.time() - sent_at, error)
                if outcome_unknown(exc):
                    unknown_since = sent_at
                    log.warning("create answer lost", idempotency_key=token, error=error)
                elif not exc.transient:
                    self._ledger.fail_job(token, error)
                    return SubmitOutcome(
                        FAILED_ROW, token, None, error, sent, error_code=exc.code, permanent=True
                    )
                continue
            job_id = str(detail.get("JobId") or "")
            self._obs.create_answered(token, sent, time.time() - sent_at, "")
            if job_id:
                # CI names the queue it chose (its default one when none was configured).
                queue = str(detail.get("QueueId") or entry.queue_id)
                entry = replace(entry, queue_id=queue)
                return self._recorded(SUBMITTED, entry, job_id, sent, sent_at)
            error = "CI answered the create without a JobId"
        if unknown_since is None:
            self._ledger.fail_job(token, error or "interrupted")
        # else: left pending; a re-run or the daemon's deadline sweep resolves it by token.
        return SubmitOutcome(FAILED_ROW, token, None, error or "interrupted", sent)

    def _recorded(
        self, status: str, entry: JobEntry, job_id: str, sent: int, sent_at: float
    ) -> SubmitOutcome:
        self._ledger.record_job(replace(entry, job_id=job_id, status=PENDING))
        return SubmitOutcome(status, entry.client_token, job_id, None, sent, sent_at)


def submit(client: CiClient, settings: CiSettings, **kwargs: Any) -> JobsDetail:
    """Create one job without a client token or ledger (wire tests, helpers)."""
    return client.create_job(build_request(settings, **kwargs))
