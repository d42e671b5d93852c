"""The emulator's keyring (unit level, a fake clock): issued keys work until they expire and are
then refused with the expired-token answer; the CVM role's key is handed out again until half
its life is gone; administration validates what it is given."""

from __future__ import annotations

import pytest

from asrd.emulator.keys import FORGET_AFTER_S, Credential, Keyring
from asrd.emulator.signature import Verifier, authorization

from ..support import Clock

HOST = "examplebucket-1250000000.ci.ap-guangzhou.myqcloud.com"


def signed(secret_id: str, key: str, token: str | None, now: float) -> dict[str, str]:
    headers = {"host": HOST, **({"x-ci-security-token": token} if token else {})}
    key_time = f"{int(now) - 60};{int(now) + 3600}"
    headers["authorization"] = authorization(
        secret_id, key, key_time, "get", "/asr_jobs", {}, headers
    )
    return headers


def test_an_issued_key_works_until_it_expires_then_is_refused_as_expired() -> None:
    clock = Clock()
    keys = Keyring([Credential("AKIDstatic", "static")], ttl_s=10, clock=clock)
    verifier = Verifier(keys)
    key = keys.issue("metadata")
    headers = signed(key.secret_id, key.secret_key, key.token, clock.now)
    assert verifier.verify("GET", "/asr_jobs", {}, headers, clock.now, "ci") is None
    wrong = signed(key.secret_id, key.secret_key, "another token", clock.now)
    assert verifier.verify("GET", "/asr_jobs", {}, wrong, clock.now, "ci") is not None
    clock.now += 11
    failure = verifier.verify("GET", "/asr_jobs", {}, headers, clock.now, "ci")
    assert failure is not None and (failure.status, failure.code) == (400, "ExpiredToken")
    state = keys.state()
    issued = next(k for k in state["keys"] if k["secret_id"] == key.secret_id)
    assert issued["uses"] == {"ci": 1}
    assert state["refused"] == {"ci:InvalidAccessKeyId": 1, "ci:ExpiredToken": 1}


def test_a_static_key_marked_expired_then_given_a_new_token() -> None:
    clock = Clock()
    keys = Keyring([Credential("AKIDstatic", "static", "one")], clock=clock)
    verifier = Verifier(keys)
    keys.update({"expire": ["AKIDstatic"]})
    old = signed("AKIDstatic", "static", "one", clock.now)
    failure = verifier.verify("GET", "/asr_jobs", {}, old, clock.now)
    assert failure is not None and failure.code == "ExpiredToken"
    keys.update({"tokens": {"AKIDstatic": "two"}})
    assert verifier.verify("GET", "/asr_jobs", {}, old, clock.now) is not None
    new = signed("AKIDstatic", "static", "two", clock.now)
    assert verifier.verify("GET", "/asr_jobs", {}, new, clock.now) is None


def test_the_role_key_is_reused_until_half_its_life_is_gone() -> None:
    clock = Clock()
    keys = Keyring([], ttl_s=100, clock=clock)
    first = keys.metadata_key()
    clock.now += 40
    assert keys.metadata_key() is first
    clock.now += 20
    assert keys.metadata_key() is not first


def test_long_expired_keys_are_forgotten() -> None:
    clock = Clock()
    keys = Keyring([Credential("AKIDstatic", "static")], ttl_s=10, clock=clock)
    old = keys.issue("AssumeRole")
    clock.now += FORGET_AFTER_S + 20
    keys.issue("AssumeRole")
    assert keys.find(old.secret_id) is None and keys.find("AKIDstatic") is not None


@pytest.mark.parametrize(
    "doc",
    [{"expire": ["AKIDnobody"]}, {"expire": "AKIDstatic"}, {"ttl_s": 0}, {"tokens": ["x"]}],
)
def test_administration_refuses_what_it_cannot_apply(doc: dict[str, object]) -> None:
    keys = Keyring([Credential("AKIDstatic", "static")])
    with pytest.raises(ValueError):
        keys.update(doc)
