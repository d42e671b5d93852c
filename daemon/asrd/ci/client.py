"""The client of Tencent Cloud CI and COS, always through ``cos-python-sdk-v5``.

It hides the SDK's shapes (dict-or-list, strings, ``None`` for empty) behind a few calls and
maps every failure to one of three kinds the pipeline can act on: transient (retry later),
permanent (dead-letter), and not found.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from functools import partial
from typing import Any, TypeVar
from urllib.parse import urlsplit
from xml.etree.ElementTree import Element, ParseError, fromstring

import requests
from qcloud_cos import CosConfig, CosS3Client
from qcloud_cos.cos_auth import CosS3Auth
from qcloud_cos.cos_comm import format_xml
from qcloud_cos.cos_exception import CosClientError, CosServiceError

from ..config import CiSettings
from ..credentials import CredentialError, Credentials, Snapshot, StaticSource, for_ci
from ..httppool import ExpiringAdapter
from ..limiter import AdaptiveLimiter
from ..observers import Observers
from .batcher import GetBatcher, JobsDetail
from .errors import Backoff, CiError, ErrorKind, classify, with_retry

# The SDK logs request headers (Authorization, security token) at DEBUG: never let that through.
logging.getLogger("qcloud_cos").setLevel(logging.WARNING)

T = TypeVar("T")
# CI's list filters take times as %Y-%m-%dT%H:%M:%S%z; CI itself prints Beijing time.
CI_TIME = "%Y-%m-%dT%H:%M:%S%z"
CI_ZONE = timezone(timedelta(hours=8))


def ci_time(ts: float) -> str:
    """A Unix time as CI's list operation takes it (``startCreationTime``)."""
    return datetime.fromtimestamp(ts, CI_ZONE).strftime(CI_TIME)


def answer_dict(content: bytes) -> dict[str, Any]:
    """CI's XML answer as the SDK's ``xml_to_dict`` gives it (the root's children; a repeated
    element becomes a list; a leaf is its text, ``None`` when empty; attributes are keys; XML
    namespaces dropped), without its round trip through ``eval(str(dict))``, which was a fifth
    of the daemon's CPU. The same mapping is checked against the SDK's on CI's answers
    (tests/test_ci_parse.py).

    The C parser, as the SDK's: defusedxml's parser is pure Python, several times slower. What
    it guards against needs a DTD (entity declarations), which CI never sends: one is refused
    before parsing."""
    if b"<!DOCTYPE" in content[:4096] or b"<!ENTITY" in content:
        raise ParseError("CI answered with a DTD")
    root = fromstring(content)  # noqa: S314 - a DTD was refused above; see the docstring
    return _children(root) if len(root) else {_tag(root): root.text}


def _tag(element: Element) -> str:
    tag = element.tag
    return tag.rpartition("}")[2] if tag[:1] == "{" else tag


def _children(parent: Element) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if parent.attrib:
        out.update(parent.attrib)
    for element in parent:
        if len(element):
            value: Any = _children(element)
        elif element.attrib:
            value = dict(element.attrib)
            if element.text:
                value[_tag(element)] = element.text
        else:
            value = element.text
        key = _tag(element)
        if key in out:
            # Xml2Dict's rule: a second element of one name makes the value a list.
            previous = out.pop(key)
            out[key] = [*previous, value] if type(previous) is list else [previous, value]
        else:
            out[key] = value
    return out


def _session(pool_size: int) -> requests.Session:
    session = requests.Session()
    # Connections a burst opened (CI slow, more calls overlapping) close once idle.
    adapter = ExpiringAdapter(pool_connections=2, pool_maxsize=pool_size)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    # requests re-reads the environment on every call (a measurable share of a describe's
    # CPU). Without proxy variables, read the CA bundle once and stop it; with them, keep the
    # per-call look-up, which is what honours NO_PROXY.
    if not any(os.environ.get(v) for v in _PROXY_ENV):
        session.trust_env = False
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
    return session


_PROXY_ENV = (
    "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy",
)  # fmt: skip


def sdk_config(settings: CiSettings, keys: Snapshot | None = None) -> CosConfig:
    """The SDK's configuration signing with ``keys`` (default: the configured static keys).

    The keys go in as ``SecretId``/``SecretKey``/``Token``, never as ``CredentialInstance``:
    the SDK sends the security-token header only from ``Token`` and reads an instance's id and
    key in two calls, so a refreshing instance would sign without its token, or pair an id with
    another snapshot's key."""
    if keys is None:
        keys = StaticSource.of(settings).fetch()
    common: dict[str, Any] = {
        "Region": settings.region,
        "SecretId": keys.secret_id,
        "SecretKey": keys.secret_key,
        "Token": keys.token or None,
        "Timeout": settings.timeout_s,
    }
    if settings.endpoint:
        # IP/Port mode: the SDK still sends the COS host name, which the emulator routes on.
        parts = urlsplit(settings.endpoint)
        return CosConfig(
            IP=parts.hostname,
            Port=parts.port or (443 if parts.scheme == "https" else 80),
            Scheme=parts.scheme,
            **common,
        )
    return CosConfig(Scheme="https", **common)


def service_url(settings: CiSettings) -> str:
    """CI's URL for the bucket: the configured endpoint, else Tencent Cloud's CI host."""
    return settings.endpoint or f"https://{settings.bucket}.ci.{settings.region}.myqcloud.com"


def only_queue(ids: list[str], bucket: str) -> str:
    """The one ASR queue id of a bucket; asrd does not guess among several."""
    if len(ids) == 1:
        return ids[0]
    if not ids:
        message = f"bucket {bucket} has no ASR queue: enable speech recognition on it"
    else:
        message = f"bucket {bucket} has {len(ids)} ASR queues ({', '.join(ids)})"
    raise CiError(ErrorKind.PERMANENT, "QueueId", f"{message}, or set ci.queue_id")


class CiClient:
    """CI ASR jobs and COS objects of one bucket.

    The SDK's built-in retry is off (``retry=0``): delays are decided here and by the pipeline,
    so they never multiply unseen, and a create is never re-sent blindly (it would make a
    second job).
    """

    def __init__(
        self,
        settings: CiSettings,
        backoff: Backoff | None = None,
        observers: Observers | None = None,
        credentials: Credentials | None = None,
        service: str = "ci",
    ) -> None:
        self.bucket = settings.bucket
        self._queue_id = settings.queue_id
        self._queue_lock = threading.Lock()
        self._settings = settings
        self.credentials = credentials or for_ci(settings)
        self._service = service  # what auth failures are counted as (ci, cos)
        # Its own connection pool, as large as the calls it may have in flight: the SDK's shared
        # default keeps 10 and opens (then discards) a connection for every call beyond that.
        self._session = _session(settings.max_connections + 4)
        self._signer: tuple[Snapshot, CosS3Client] | None = None
        self._backoff = backoff or Backoff()
        # Without observers of its own (a sink's client), what the process attached to its keys.
        self._obs = observers or self.credentials.observers
        # One limiter per client, and one client per process: the process's share of the quota.
        rate = settings.max_requests_per_s
        self.limiter = AdaptiveLimiter(rate) if rate > 0 else None
        self._gets = GetBatcher(
            partial(self._describe, paced=True),
            settings.max_connections,
            settings.get_batch_size,
            pace=self.limiter.acquire if self.limiter is not None else None,
        )

    def _sdk(self) -> CosS3Client:
        """The SDK client signing with the current keys: one snapshot for the whole request
        (a refresh makes a new client; the connection pool is shared)."""
        keys = self.credentials.snapshot()
        current = self._signer
        if current is not None and current[0] is keys:
            return current[1]
        client = CosS3Client(sdk_config(self._settings, keys), retry=0, session=self._session)
        self._signer = (keys, client)
        return client

    def probe(self) -> None:
        """One cheap signed request (a describe of an id no job has): raises ``CiError`` when
        the keys are refused or CI cannot be reached; used to find the end of an outage.
        Keys the service refused may have been replaced already: ask the provider first."""
        try:
            self.credentials.refresh()
        except CredentialError as exc:
            raise CiError(ErrorKind.AUTH, "CredentialsUnavailable", str(exc)) from None
        self._describe(["s0000000000000000000000000000000"])

    def _call(self, operation: str, fn: Callable[[CosS3Client], T], paced: bool = False) -> T:
        """One request to CI/COS, within the request quota (``paced``: its slot was already
        taken), timed for the observers, its SDK errors classified; throttling answers slow the
        limiter down."""
        limiter = self.limiter
        if limiter is not None and not paced:
            limiter.acquire()
        started = time.monotonic()
        status = "error"  # anything the SDK raises that classify does not know
        try:
            result = fn(self._sdk())
            status = "ok"
            if limiter is not None:
                limiter.passed()
            return result
        except CiError as exc:
            status = exc.kind.value
            if limiter is not None:
                limiter.passed()  # CI answered; the answer did not fit
            raise
        except CredentialError as exc:
            status = ErrorKind.AUTH.value
            self._obs.auth_failed("credentials", exc.cause)
            raise CiError(ErrorKind.AUTH, "CredentialsUnavailable", str(exc)) from None
        except (CosServiceError, CosClientError, ParseError) as exc:
            err = classify(exc)
            status = err.kind.value
            if err.auth:
                self._obs.auth_failed(_service_of(operation, self._service), str(err))
            if limiter is not None and err.throttling:
                limiter.throttled()
            elif limiter is not None and err.status is not None:
                limiter.passed()
            raise err from None
        finally:
            self._obs.ci_call(operation, status, time.monotonic() - started)

    def create_job(self, request: dict[str, Any]) -> JobsDetail:
        """POST /asr_jobs with a body asrd builds itself.

        ``ci_create_asr_job`` drops ``CallBackType`` and cannot send ``UserData``/``JobLevel``
        (SDK bug), so the body goes through the SDK's own XML writer, signing and transport.
        """
        body = format_xml(data=request, root="Request")

        def send(sdk: CosS3Client) -> JobsDetail:
            detail = self._ci_request(sdk, "POST", "/asr_jobs", body).get("JobsDetail")
            if not isinstance(detail, dict):
                raise CiError(
                    ErrorKind.TRANSIENT, "BadResponse", "create answered without JobsDetail"
                )
            return detail

        # Only a 503/throttle before the job exists is safe to retry; a timeout is not.
        return self._call("create_job", send)

    def get_job(self, job_id: str, retry: bool = True) -> JobsDetail | None:
        """The job as CI knows it now, or ``None`` when CI lists the id as non-existent.

        Concurrent calls share describe requests (see ``GetBatcher``).
        """
        fetch = partial(self._gets.get, job_id)
        return with_retry(fetch, self._backoff) if retry else fetch()

    def get_jobs(self, job_ids: list[str]) -> dict[str, JobsDetail | CiError | None]:
        """Several jobs as CI knows them now (``None``: CI does not know it; a ``CiError``: the
        look-up failed). Transient failures are tried again within the in-process backoff."""
        out: dict[str, JobsDetail | CiError | None] = {}
        pending = list(dict.fromkeys(job_ids))
        delays = self._backoff.delays()
        while pending:
            got = self._gets.get_many(pending)
            out.update(got)
            pending = [
                j for j, v in got.items() if isinstance(v, CiError) and v.transient and not v.auth
            ]
            delay = next(delays, None)
            if delay is None:
                break
            if pending:
                time.sleep(delay)
        return out

    def _describe(self, job_ids: list[str], paced: bool = False) -> dict[str, JobsDetail]:
        """One describe request for several ids; CI omits the ones it does not know."""
        path = "/asr_jobs/" + ",".join(job_ids)  # ``ci_get_asr_job``'s request, several ids
        data = self._call("get_jobs", lambda sdk: self._ci_request(sdk, "GET", path), paced)
        details = data.get("JobsDetail") or []
        wanted = set(job_ids)
        return {
            str(d["JobId"]): d
            for d in (details if isinstance(details, list) else [details])
            if isinstance(d, dict) and d.get("JobId") in wanted
        }

    def _ci_request(
        self, sdk: CosS3Client, method: str, path: str, body: str | None = None
    ) -> dict[str, Any]:
        """A CI request through the SDK's URL building, signing and transport, its XML answer
        parsed by ``answer_dict`` (the SDK's own parsing was most of a look-up's CPU)."""
        conf = sdk.get_conf()
        rt = sdk.send_request(
            method=method,
            url=conf.uri(bucket=self.bucket, path=path, endpoint=conf._endpoint_ci),
            bucket=self.bucket,
            auth=CosS3Auth(conf, path, params={}),
            params={},
            headers={"Content-Type": "application/xml"},
            ci_request=True,
            **({"data": body} if body is not None else {}),  # any "data" key is a body to it
        )
        return answer_dict(rt.content)

    def describe_jobs(self, job_ids: list[str], batch: int = 10) -> dict[str, JobsDetail]:
        """Several jobs by id, ``batch`` ids per describe request; ids CI does not know are
        absent from the answer."""
        found: dict[str, JobsDetail] = {}
        for i in range(0, len(job_ids), batch):
            chunk = job_ids[i : i + batch]
            found.update(with_retry(partial(self._describe, chunk), self._backoff))
        return found

    def queue_id(self) -> str:
        """``[ci] queue_id``, else the bucket's only ASR queue, looked up on first use and kept.

        The ``/asr_jobs`` documents require ``QueueId`` on create and list. A failed look-up is
        tried again at the next use; a bucket with no ASR queue or several is a permanent
        ``CiError`` naming them (set ``queue_id``).
        """
        with self._queue_lock:
            if not self._queue_id:
                ids = [str(q.get("QueueId") or "") for q in self.asr_queues()]
                self._queue_id = only_queue([i for i in ids if i], self.bucket)
            return self._queue_id

    def asr_queues(self) -> list[dict[str, Any]]:
        """The bucket's speech-recognition queues (``QueueId``, ``Name``, ``State``...): the
        SDK's queue description call (``GET /asrqueue``), one page of up to 100."""

        def fetch() -> dict[str, Any]:
            return self._call(
                "get_asr_queue",
                lambda sdk: sdk.ci_get_asr_queue(Bucket=self.bucket, PageSize=100),
            )

        queues = with_retry(fetch, self._backoff).get("QueueList") or []
        return [q for q in queues if isinstance(q, dict)]

    def list_objects(self, prefix: str, page_size: int = 1000) -> Iterator[tuple[str, int]]:
        """``(key, size)`` of every object under ``prefix`` in the bucket, following pages."""
        marker = ""
        while True:

            def page(marker: str = marker) -> dict[str, Any]:
                return self._call(
                    "list_objects",
                    lambda sdk: sdk.list_objects(
                        Bucket=self.bucket, Prefix=prefix, Marker=marker, MaxKeys=page_size
                    ),
                )

            data = with_retry(page, self._backoff)
            contents = data.get("Contents") or []
            for item in contents if isinstance(contents, list) else [contents]:
                yield str(item["Key"]), int(item.get("Size") or 0)
            if str(data.get("IsTruncated", "false")).lower() != "true":
                return
            marker = str(data.get("NextMarker") or (contents[-1]["Key"] if contents else ""))
            if not marker:
                return

    def list_jobs(
        self,
        queue_id: str | None = None,
        states: str = "All",
        start: str | None = None,
        end: str | None = None,
        page_size: int = 100,
        limit: int | None = None,
    ) -> Iterator[JobsDetail]:
        """Every job matching the filters, following ``NextToken`` pages."""

        def page_at(token: str) -> dict[str, Any]:
            return self._call(
                "list_jobs",
                lambda sdk: sdk.ci_list_asr_jobs(
                    Bucket=self.bucket,
                    QueueId=queue_id or None,
                    StartCreationTime=start,
                    EndCreationTime=end,
                    States=states,
                    Size=page_size,
                    NextToken=token,
                ),
            )

        token = ""
        seen = 0
        while True:
            page = with_retry(partial(page_at, token), self._backoff)
            for detail in page.get("JobsDetail") or []:
                yield detail
                seen += 1
                if limit is not None and seen >= limit:
                    return
            token = page.get("NextToken") or ""
            if not token:
                return

    def put_object(
        self,
        key: str,
        body: bytes,
        content_type: str = "application/octet-stream",
        bucket: str | None = None,
    ) -> None:
        self._call(
            "put_object",
            lambda sdk: sdk.put_object(
                Bucket=bucket or self.bucket, Key=key, Body=body, ContentType=content_type
            ),
        )

    def get_object(self, key: str, bucket: str | None = None) -> bytes:
        def read(sdk: CosS3Client) -> bytes:
            resp = sdk.get_object(Bucket=bucket or self.bucket, Key=key)
            data: bytes = resp["Body"].get_raw_stream().read()
            return data

        return with_retry(lambda: self._call("get_object", read), self._backoff)


# Object operations are COS's, whichever client makes them (the COS sink uses the process's one
# client): their refused keys are counted as COS's, as a separate COS client once counted them.
_COS_OPERATIONS = frozenset({"put_object", "get_object", "list_objects"})


def _service_of(operation: str, default: str) -> str:
    """What an auth failure of ``operation`` is counted as (``ci`` or ``cos``)."""
    return "cos" if operation in _COS_OPERATIONS else default
