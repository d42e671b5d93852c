"""The keys the emulator accepts: static ones (``--key``) and temporary ones it issues through
the CVM metadata paths and STS, each valid for ``--credential-ttl`` seconds.

One keyring serves CI, COS and CMQ, so a temporary key works on all three until it expires and
is then refused with the expired-token answers (README). Tests drive it through
``/-/credentials``: mark a key expired, give a static key a new token, take the issuer down;
its state counts, per key and service, the requests each key signed.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

DEFAULT_ROLE = "asrd-emulator-role"
# Issued keys are forgotten this long after they expired (a long run does not grow without end).
FORGET_AFTER_S = 3600.0


@dataclass(frozen=True)
class Credential:
    """A key pair from ``--key`` (with a token, requests must carry it)."""

    secret_id: str
    secret_key: str
    token: str | None = None


@dataclass
class Key:
    secret_id: str
    secret_key: str
    token: str | None = None
    expires_at: float | None = None  # None: a static key that does not expire
    issuer: str = "static"  # static | metadata | AssumeRole | AssumeRoleWithWebIdentity
    expired: bool = False  # marked expired through /-/credentials
    uses: Counter[str] = field(default_factory=Counter)  # service -> requests accepted

    def is_expired(self, now: float) -> bool:
        return self.expired or (self.expires_at is not None and now >= self.expires_at)

    def public(self) -> dict[str, Any]:
        return {
            "secret_id": self.secret_id,
            "token": self.token,
            "issuer": self.issuer,
            "expires_at": self.expires_at,
            "expired": self.expired,
            "uses": dict(self.uses),
        }


class Keyring:
    """Thread-safe: the CI and CMQ listeners share it (one event loop, but tests read it)."""

    def __init__(
        self,
        static: Iterable[Credential],
        ttl_s: float = 3600.0,
        role: str = DEFAULT_ROLE,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._keys = {c.secret_id: Key(c.secret_id, c.secret_key, c.token) for c in static}
        self.ttl_s = ttl_s
        self.role = role
        self.issuer_down = False  # metadata service and STS answer 503
        self.refused: Counter[str] = Counter()  # "<service>:<code>" -> requests refused
        self._clock = clock
        self._lock = threading.Lock()
        self._metadata_key: Key | None = None

    def find(self, secret_id: str) -> Key | None:
        with self._lock:
            return self._keys.get(secret_id)

    def used(self, key: Key, service: str) -> None:
        with self._lock:
            key.uses[service] += 1

    def refuse(self, service: str, code: str) -> None:
        with self._lock:
            self.refused[f"{service}:{code}"] += 1

    def issue(self, issuer: str, duration_s: float | None = None) -> Key:
        """A new temporary key, valid for ``duration_s`` (at most the TTL)."""
        ttl = self.ttl_s if duration_s is None else min(duration_s, self.ttl_s)
        now = self._clock()
        key = Key(
            "AKIDtmp" + secrets.token_hex(12),
            secrets.token_hex(16),
            secrets.token_urlsafe(48),
            float(int(now + ttl)),  # whole seconds, as ExpiredTime tells it
            issuer,
        )
        with self._lock:
            self._keys[key.secret_id] = key
            old = now - FORGET_AFTER_S
            for stale in [
                k for k in self._keys.values() if k.expires_at is not None and k.expires_at < old
            ]:
                del self._keys[stale.secret_id]
        return key

    def metadata_key(self) -> Key:
        """The CVM role's key: the same one until less than half of its life is left, then a
        new one (the metadata service hands out keys well before they expire)."""
        now = self._clock()
        current = self._metadata_key
        if (
            current is not None
            and current.expires_at is not None
            and current.expires_at - now > self.ttl_s / 2
            and not current.expired
        ):
            return current
        self._metadata_key = self.issue("metadata")
        return self._metadata_key

    def update(self, doc: dict[str, Any]) -> None:
        """``expire``: ids to treat as expired; ``tokens``: {id: new token} (clears expired);
        ``issuer_down``: bool; ``ttl_s``: lifetime of keys issued from now on."""
        expire = doc.get("expire", [])
        tokens = doc.get("tokens", {})
        if not isinstance(expire, list) or not isinstance(tokens, dict):
            raise ValueError("expire is a list of ids, tokens a {id: token} object")
        with self._lock:
            unknown = [i for i in [*expire, *tokens] if i not in self._keys]
            if unknown:
                raise ValueError(f"unknown key id {unknown[0]!r}")
            for secret_id in expire:
                self._keys[secret_id].expired = True
            for secret_id, token in tokens.items():
                key = self._keys[secret_id]
                key.token, key.expired = str(token) if token else None, False
            if "issuer_down" in doc:
                self.issuer_down = bool(doc["issuer_down"])
            if "ttl_s" in doc:
                ttl = float(doc["ttl_s"])
                if ttl <= 0:
                    raise ValueError("ttl_s must be positive")
                self.ttl_s = ttl

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "ttl_s": self.ttl_s,
                "role": self.role,
                "issuer_down": self.issuer_down,
                "refused": dict(self.refused),
                "keys": [k.public() for k in self._keys.values()],
            }


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
