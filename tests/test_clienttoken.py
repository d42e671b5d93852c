"""The client token's place in UserData (pure logic): CI's 1,024 printable ASCII characters."""

from __future__ import annotations

import pytest

from asrd import clienttoken


def test_compose_and_split_round_trip_within_cis_limit() -> None:
    token = clienttoken.derive({"bucket": "b-1", "object": "media/a.mp3", "job_level": 2})
    assert len(token) == 32 and token == clienttoken.derive(
        {"job_level": 2, "object": "media/a.mp3", "bucket": "b-1", "url": None}
    )
    assert token != clienttoken.derive({"bucket": "b-1", "object": "media/b.mp3"})
    longest = "x" * 986
    composed = clienttoken.compose(token, longest)
    assert len(composed) == clienttoken.MAX_USER_DATA
    assert clienttoken.split(composed) == (token, longest)
    assert clienttoken.split(clienttoken.compose(token, None)) == (token, None)
    assert clienttoken.split("order-1") == (None, "order-1")
    with pytest.raises(ValueError, match="at most 986 characters"):
        clienttoken.compose(token, longest + "x")
    with pytest.raises(ValueError, match="printable ASCII"):
        clienttoken.compose(token, "naïve")
    with pytest.raises(ValueError, match="client token"):
        clienttoken.compose("has space", None)
    assert clienttoken.valid_token("a" * 64) and not clienttoken.valid_token("a" * 65)
