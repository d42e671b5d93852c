"""Constants and helpers shared by the emulator tests."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any
from urllib.parse import quote

import requests
import xmltodict
from cmq.account import Account
from qcloud_cos import CosS3Client
from qcloud_cos.cos_auth import CosS3Auth

SECRET_ID = "AKIDemulatortest"
SECRET_KEY = "emulator-secret-key"
TOKEN_ID = "AKIDtemporary"
TOKEN_KEY = "temporary-secret"
TOKEN = "session-token-123"
REGION = "ap-guangzhou"
BUCKET = "examplebucket-1250000000"


def unique(prefix: str = "k") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def create_job_raw(client: CosS3Client, request: dict[str, Any]) -> dict[str, Any]:
    """POST /asr_jobs with a body we build ourselves (the SDK drops CallBackType), signed by the
    SDK's own signer, sent through the SDK's request path (errors become CosServiceError)."""
    body = xmltodict.unparse({"Request": request})
    url = client._conf.uri(bucket=BUCKET, path="/asr_jobs", endpoint=client._conf._endpoint_ci)
    rt = client.send_request(
        method="POST",
        url=url,
        bucket=BUCKET,
        data=body.encode(),
        auth=CosS3Auth(client._conf, "/asr_jobs", params={}),
        params={},
        headers={"Content-Type": "application/xml"},
        ci_request=True,
    )
    return dict(xmltodict.parse(rt.content)["Response"])


def wait_state(
    client: CosS3Client,
    job_id: str,
    states: tuple[str, ...] = ("Success", "Failed"),
    timeout: float = 10,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        detail = client.ci_get_asr_job(Bucket=BUCKET, JobID=job_id)["JobsDetail"][0]
        if detail["State"] in states or time.monotonic() > deadline:
            return dict(detail)
        time.sleep(0.05)


def signed_request(
    client: CosS3Client,
    base_url: str,
    method: str,
    path: str,
    body: bytes = b"",
    params: dict[str, str] | None = None,
) -> requests.Response:
    """A raw request signed with the SDK's signer, for bodies the SDK would never send."""
    host = f"{BUCKET}.cos.{REGION}.myqcloud.com"
    prepared = requests.Request(
        method,
        base_url + quote(path),
        params=params,
        data=body,
        headers={"Host": host, "Content-Type": "application/xml"},
    ).prepare()
    CosS3Auth(client._conf, path, params=params or {})(prepared)
    with requests.Session() as s:
        return s.send(prepared, timeout=10)


def error_fields(resp: requests.Response) -> dict[str, str]:
    """The error document's fields; asserts the shape the SDK needs (all four non-empty)."""
    assert resp.headers["Content-Type"] == "application/xml"
    assert resp.headers["x-ci-request-id"]
    doc = xmltodict.parse(resp.content)["Error"]
    for name in ("Code", "Message", "Resource", "RequestId"):
        assert doc[name], name
    assert doc["RequestId"] == resp.headers["x-ci-request-id"]
    return dict(doc)


def cmq_account(url: str, secret_id: str = SECRET_ID, secret_key: str = SECRET_KEY) -> Account:
    """The official CMQ SDK's ``Account``. The SDK adds a log file in the working directory to
    its logger unless that logger has a handler already (docs/tencent-cloud.md §3.8): give it
    one."""
    sdk_log = logging.getLogger("CMQ_python_sdk")
    if not sdk_log.handlers:
        sdk_log.addHandler(logging.NullHandler())
    return Account(url, secret_id, secret_key)


def cmq_name(prefix: str = "q") -> str:
    """A fresh CMQ queue/topic name (letters, digits, '-')."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"
