"""Temporary keys, as Tencent Cloud hands them out: the CVM metadata service's
``/latest/meta-data/cam/security-credentials/`` paths, and STS ``AssumeRole`` /
``AssumeRoleWithWebIdentity`` as API 3.0 actions (a JSON POST naming the action in
``X-TC-Action``), both served on the CI listener. Every key issued goes into the keyring CI,
COS and CMQ check. ``AssumeRole`` is signed (TC3-HMAC-SHA256, verified here with the caller's
static key); ``AssumeRoleWithWebIdentity`` is not (the web identity token is the proof).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from asrd.emulator.http import Request, Response
from asrd.emulator.keys import Key, Keyring, iso

METADATA_PREFIX = "/latest/meta-data/"
ROLE_PATH = METADATA_PREFIX + "cam/security-credentials/"
STS_VERSION = "2018-08-13"
MAX_SKEW_S = 300


class StsError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Issuer:
    def __init__(self, keys: Keyring, clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self._clock = clock

    # ---- the CVM metadata service ----------------------------------------------------------

    def metadata(self, req: Request) -> Response:
        if self.keys.issuer_down:
            return Response(503, b"service unavailable", content_type="text/plain")
        if req.method != "GET":
            return Response(405, b"method not allowed", content_type="text/plain")
        if req.path == ROLE_PATH:
            return Response(200, self.keys.role.encode(), content_type="text/plain")
        if req.path != ROLE_PATH + self.keys.role:
            return Response(404, b"Not Found", content_type="text/plain")
        key = self.keys.metadata_key()
        assert key.expires_at is not None
        doc = {
            "TmpSecretId": key.secret_id,
            "TmpSecretKey": key.secret_key,
            "ExpiredTime": int(key.expires_at),
            "Expiration": iso(key.expires_at),
            "Token": key.token,
            "Code": "Success",
        }
        return Response(200, json.dumps(doc).encode(), content_type="application/json")

    # ---- STS (API 3.0) ---------------------------------------------------------------------

    def sts(self, req: Request) -> Response:
        request_id = str(uuid.uuid4())
        if self.keys.issuer_down:
            return Response(503, b"service unavailable", content_type="text/plain")
        try:
            action = req.headers.get("x-tc-action", "")
            if req.method != "POST":
                raise StsError("UnsupportedProtocol", "only POST is supported here")
            if req.headers.get("x-tc-version", "") != STS_VERSION:
                raise StsError("InvalidParameter", f"version must be {STS_VERSION}")
            try:
                params = json.loads(req.body or b"{}")
            except ValueError as exc:
                raise StsError("InvalidParameter", "the body is not JSON") from exc
            if not isinstance(params, dict):
                raise StsError("InvalidParameter", "the body is not a JSON object")
            if action == "AssumeRoleWithWebIdentity":
                for name in ("ProviderId", "WebIdentityToken", "RoleArn", "RoleSessionName"):
                    if not str(params.get(name) or ""):
                        raise StsError("MissingParameter", f"{name} is required")
            elif action == "AssumeRole":
                self._verify_tc3(req)
                for name in ("RoleArn", "RoleSessionName"):
                    if not str(params.get(name) or ""):
                        raise StsError("MissingParameter", f"{name} is required")
            else:
                raise StsError("InvalidAction", f"action {action!r} is not supported")
            key = self.keys.issue(action, _duration(params))
        except StsError as err:
            body: dict[str, Any] = {
                "Response": {
                    "Error": {"Code": err.code, "Message": err.message},
                    "RequestId": request_id,
                }
            }
            return Response(200, json.dumps(body).encode(), content_type="application/json")
        issued = json.dumps(_issued(key, request_id)).encode()
        return Response(200, issued, content_type="application/json")

    def _verify_tc3(self, req: Request) -> None:
        """TC3-HMAC-SHA256 over ``content-type;host`` (what the SDK signs) with the caller's
        static key; an issued key may not assume a role here."""
        auth = req.headers.get("authorization", "")
        fields = _tc3_fields(auth)
        if fields is None:
            raise StsError("AuthFailure.SignatureFailure", "Authorization is not TC3")
        secret_id, date, service, _ = [*fields["Credential"].split("/"), "", "", "", ""][:4]
        key = self.keys.find(secret_id)
        if key is None or key.expires_at is not None:
            raise StsError("AuthFailure.SecretIdNotFound", "the SecretId is unknown")
        if key.expired:
            raise StsError("AuthFailure.TokenFailure", "the key is marked expired")
        try:
            timestamp = int(req.headers.get("x-tc-timestamp", ""))
        except ValueError as exc:
            raise StsError("AuthFailure.InvalidAuthorization", "X-TC-Timestamp missing") from exc
        if abs(self._clock() - timestamp) > MAX_SKEW_S:
            raise StsError("AuthFailure.SignatureExpire", "the signature has expired")
        names = fields["SignedHeaders"].split(";")
        canonical_headers = "".join(f"{n}:{req.headers.get(n, '').strip()}\n" for n in names)
        payload = hashlib.sha256(req.body).hexdigest()
        path, _, query = req.target.partition("?")
        canonical = "\n".join(
            [req.method, path, query, canonical_headers, fields["SignedHeaders"], payload]
        )
        scope = f"{date}/{service}/tc3_request"
        to_sign = "\n".join(
            [
                "TC3-HMAC-SHA256",
                str(timestamp),
                scope,
                hashlib.sha256(canonical.encode()).hexdigest(),
            ]
        )
        signing = _hmac(f"TC3{key.secret_key}".encode(), date)
        signing = _hmac(_hmac(signing, service), "tc3_request")
        expected = hmac.new(signing, to_sign.encode(), hashlib.sha256).hexdigest()
        if not hmac.compare_digest(expected, fields["Signature"]):
            raise StsError("AuthFailure.SignatureFailure", "the signature does not match")


def _hmac(key: bytes, msg: str) -> bytes:
    return hmac.new(key, msg.encode(), hashlib.sha256).digest()


def _tc3_fields(auth: str) -> dict[str, str] | None:
    algorithm, _, rest = auth.partition(" ")
    if algorithm != "TC3-HMAC-SHA256":
        return None
    fields = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if sep:
            fields[name] = value
    if {"Credential", "SignedHeaders", "Signature"} - fields.keys():
        return None
    return fields


def _duration(params: dict[str, Any]) -> float | None:
    value = params.get("DurationSeconds")
    if value is None:
        return None
    try:
        seconds = float(value)
    except (TypeError, ValueError) as exc:
        raise StsError("InvalidParameter", "DurationSeconds must be a number") from exc
    if not 0 < seconds <= 43_200:
        raise StsError("InvalidParameter", "DurationSeconds must be 1..43200")
    return seconds


def _issued(key: Key, request_id: str) -> dict[str, Any]:
    assert key.expires_at is not None
    return {
        "Response": {
            "Credentials": {
                "Token": key.token,
                "TmpSecretId": key.secret_id,
                "TmpSecretKey": key.secret_key,
            },
            "ExpiredTime": int(key.expires_at),
            "Expiration": datetime.fromtimestamp(key.expires_at, UTC).strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "RequestId": request_id,
        }
    }
