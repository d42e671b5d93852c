"""COS v5 "q-sign" (sha1) request signatures: compute and verify.

Own implementation of COS's request signature (docs/tencent-cloud.md §1.6), not the SDK's.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote

from asrd.emulator.keys import Credential, Keyring

__all__ = ["AuthFailure", "Credential", "Keyring", "Verifier", "authorization", "sign"]

_SAFE = "-_.~"


def url_encode(value: str) -> str:
    """Percent-encode everything but ``A-Za-z0-9-_.~`` with uppercase hex (COS UrlEncode)."""
    return quote(value.encode("utf-8"), safe=_SAFE)


def _canonical(pairs: Mapping[str, str], names: list[str]) -> str:
    """``k1=v1&k2=v2`` over the listed names, keys lower-cased+encoded, values encoded."""
    encoded = {url_encode(k).lower(): url_encode(v) for k, v in pairs.items()}
    return "&".join(f"{n}={encoded.get(n, '')}" for n in sorted(names))


def sign(
    secret_key: str,
    key_time: str,
    method: str,
    path: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
    param_names: list[str] | None = None,
    header_names: list[str] | None = None,
) -> str:
    """Return the hex q-signature. ``path`` is the decoded path; names default to all keys."""
    if param_names is None:
        param_names = [url_encode(k).lower() for k in params]
    if header_names is None:
        header_names = [url_encode(k).lower() for k in headers]
    http_string = (
        f"{method.lower()}\n{path}\n"
        f"{_canonical(params, param_names)}\n{_canonical(headers, header_names)}\n"
    )
    digest = hashlib.sha1(http_string.encode("utf-8")).hexdigest()  # noqa: S324 - protocol
    string_to_sign = f"sha1\n{key_time}\n{digest}\n"
    sign_key = hmac.new(secret_key.encode(), key_time.encode(), hashlib.sha1).hexdigest()
    return hmac.new(sign_key.encode(), string_to_sign.encode(), hashlib.sha1).hexdigest()


def authorization(
    secret_id: str,
    secret_key: str,
    key_time: str,
    method: str,
    path: str,
    params: Mapping[str, str],
    headers: Mapping[str, str],
) -> str:
    """A complete ``Authorization`` header value signing every given param and header."""
    signature = sign(secret_key, key_time, method, path, params, headers)
    header_list = ";".join(sorted(url_encode(k).lower() for k in headers))
    param_list = ";".join(sorted(url_encode(k).lower() for k in params))
    return (
        f"q-sign-algorithm=sha1&q-ak={secret_id}&q-sign-time={key_time}&q-key-time={key_time}"
        f"&q-header-list={header_list}&q-url-param-list={param_list}&q-signature={signature}"
    )


@dataclass(frozen=True)
class AuthFailure:
    status: int
    code: str
    message: str


_FIELDS = (
    "q-sign-algorithm",
    "q-ak",
    "q-sign-time",
    "q-key-time",
    "q-header-list",
    "q-url-param-list",
    "q-signature",
)


def parse_authorization(value: str) -> dict[str, str] | None:
    """Split the header into its q-* fields; None when a field is missing."""
    fields: dict[str, str] = {}
    for part in value.split("&"):
        name, sep, val = part.partition("=")
        if sep:
            fields[name.strip()] = val.strip()
    if any(f not in fields for f in _FIELDS):
        return None
    return fields


def _key_time_valid(key_time: str, now: float) -> bool | None:
    """True inside the window, False outside, None when unparsable."""
    start, sep, end = key_time.partition(";")
    if not sep or not start.isdigit() or not end.isdigit():
        return None
    return int(start) <= now <= int(end)


# What CI and COS answer for a temporary key past its expiry (COS error codes, README).
EXPIRED_TOKEN = AuthFailure(400, "ExpiredToken", "The provided token has expired.")


class Verifier:
    """Checks requests against the keyring (static and issued keys)."""

    def __init__(self, keys: Keyring | Iterable[Credential]) -> None:
        self.keys = keys if isinstance(keys, Keyring) else Keyring(keys)

    def verify(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        now: float,
        service: str = "ci",
    ) -> AuthFailure | None:
        """None when the request is authentic. ``headers`` keys must be lower case. Every
        answer is counted on the keyring under ``service`` (ci or cos)."""
        failure = self._verify(method, path, params, headers, now, service)
        if failure is not None:
            self.keys.refuse(service, failure.code)
        return failure

    def _verify(
        self,
        method: str,
        path: str,
        params: Mapping[str, str],
        headers: Mapping[str, str],
        now: float,
        service: str = "ci",
    ) -> AuthFailure | None:
        value = headers.get("authorization", "")
        if not value:
            return AuthFailure(403, "AccessDenied", "Access Denied. Authorization header missing.")
        fields = parse_authorization(value)
        if fields is None or fields["q-sign-algorithm"] != "sha1":
            return AuthFailure(403, "AccessDenied", "Access Denied. Authorization malformed.")
        cred = self.keys.find(fields["q-ak"])
        if cred is None:
            return AuthFailure(
                403, "InvalidAccessKeyId", "The access key Id you provided is unknown."
            )
        key_time = fields["q-key-time"]
        valid = _key_time_valid(key_time, now)
        if valid is None:
            return AuthFailure(403, "AccessDenied", "Access Denied. Invalid q-key-time.")
        if not valid:
            # UNCONFIRMED: COS convention for an expired key time, wording as documented.
            return AuthFailure(403, "AccessDenied", "Request has expired")
        if cred.token is not None:
            token = headers.get("x-ci-security-token") or headers.get("x-cos-security-token")
            if token != cred.token:
                # UNCONFIRMED: code for a missing/wrong STS token.
                return AuthFailure(403, "InvalidAccessKeyId", "The security token is invalid.")
        if cred.is_expired(now):
            return EXPIRED_TOKEN
        header_names = [h for h in fields["q-header-list"].split(";") if h]
        param_names = [p for p in fields["q-url-param-list"].split(";") if p]
        sent = fields["q-signature"].lower()
        candidates = [dict(headers)]
        host = headers.get("host", "")
        if ":" in host:
            # The SDK signs the host without the port when it derives it from the URL.
            candidates.append({**headers, "host": host.rsplit(":", 1)[0]})
        for cand in candidates:
            expected = sign(
                cred.secret_key, key_time, method, path, params, cand, param_names, header_names
            )
            if hmac.compare_digest(expected, sent):
                self.keys.used(cred, service)
                return None
        return AuthFailure(
            403,
            "SignatureDoesNotMatch",
            "The request signature we calculated does not match the signature you provided.",
        )
