"""The emulator's own q-sign implementation against a test vector of COS's signature
documentation, and the verifier's verdicts (unit level; the SDK-level failures are in
test_api.py)."""

from __future__ import annotations

from asrd.emulator.signature import Credential, Verifier, authorization, sign, url_encode

VECTOR_PARAMS = {
    "tag": "SpeechRecognition",
    "size": "10",
    "nextToken": "",
    "startCreationTime": "2024-01-01T00:00:00+0800",
}
VECTOR_HEADERS = {
    "Content-Type": "application/xml",
    "Host": "examplebucket-1250000000.ci.ap-guangzhou.myqcloud.com",
    "x-ci-security-token": "TOKEN",
}
KEY_TIME = "1700000000;1700003600"


def test_reference_test_vector() -> None:
    got = sign("SECRETEXAMPLE", KEY_TIME, "GET", "/asr_jobs", VECTOR_PARAMS, VECTOR_HEADERS)
    assert got == "00f25112cf446a92811ea8bf03ad04b20c19fec5"


def test_authorization_header_lists_are_sorted_and_lowercase() -> None:
    auth = authorization(
        "AKIDEXAMPLE", "SECRETEXAMPLE", KEY_TIME, "get", "/asr_jobs", VECTOR_PARAMS, VECTOR_HEADERS
    )
    assert "q-header-list=content-type;host;x-ci-security-token&" in auth
    assert "q-url-param-list=nexttoken;size;startcreationtime;tag&" in auth
    assert auth.endswith("q-signature=00f25112cf446a92811ea8bf03ad04b20c19fec5")


def test_url_encode_matches_cos_rules() -> None:
    assert url_encode("a b/c+d~e_f.g-h") == "a%20b%2Fc%2Bd~e_f.g-h"
    assert url_encode("中") == "%E4%B8%AD"


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {k.lower(): v for k, v in headers.items()}


def _signed_headers(secret_id: str = "AKIDEXAMPLE", key: str = "SECRETEXAMPLE") -> dict[str, str]:
    headers = _lower(VECTOR_HEADERS)
    headers["authorization"] = authorization(
        secret_id, key, KEY_TIME, "get", "/asr_jobs", VECTOR_PARAMS, VECTOR_HEADERS
    )
    return headers


VERIFIER = Verifier([Credential("AKIDEXAMPLE", "SECRETEXAMPLE", "TOKEN")])


def test_verifier_accepts_the_vector_inside_its_key_time() -> None:
    assert VERIFIER.verify("GET", "/asr_jobs", VECTOR_PARAMS, _signed_headers(), 1700000100) is None


def test_verifier_rejects_expired_unknown_key_and_tampering() -> None:
    expired = VERIFIER.verify("GET", "/asr_jobs", VECTOR_PARAMS, _signed_headers(), 1700003601)
    assert expired is not None
    assert (expired.status, expired.code, expired.message) == (
        403,
        "AccessDenied",
        "Request has expired",
    )
    unknown = VERIFIER.verify(
        "GET", "/asr_jobs", VECTOR_PARAMS, _signed_headers("AKIDOTHER"), 1700000100
    )
    assert unknown is not None and unknown.code == "InvalidAccessKeyId"
    tampered = {**VECTOR_PARAMS, "size": "11"}
    bad = VERIFIER.verify("GET", "/asr_jobs", tampered, _signed_headers(), 1700000100)
    assert bad is not None and (bad.status, bad.code) == (403, "SignatureDoesNotMatch")
    wrong_key = VERIFIER.verify(
        "GET", "/asr_jobs", VECTOR_PARAMS, _signed_headers(key="nope"), 1700000100
    )
    assert wrong_key is not None and wrong_key.code == "SignatureDoesNotMatch"


def test_verifier_requires_the_configured_token() -> None:
    headers = _signed_headers()
    headers["x-ci-security-token"] = "OTHER"
    failure = VERIFIER.verify("GET", "/asr_jobs", VECTOR_PARAMS, headers, 1700000100)
    assert failure is not None and failure.status == 403


def test_verifier_accepts_host_signed_without_port() -> None:
    headers = {"host": "127.0.0.1", "content-type": "application/xml"}
    auth = authorization("AKIDEXAMPLE", "SECRETEXAMPLE", KEY_TIME, "get", "/x", {}, headers)
    received = {
        "host": "127.0.0.1:9000",
        "content-type": "application/xml",
        "authorization": auth,
        "x-cos-security-token": "TOKEN",
    }
    assert VERIFIER.verify("GET", "/x", {}, received, 1700000100) is None
    assert VERIFIER.verify("GET", "/y", {}, received, 1700000100) is not None
