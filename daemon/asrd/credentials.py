"""Tencent Cloud credentials: where the keys come from, and one consistent snapshot per request.

``[ci] credentials`` picks a provider: ``static`` (the configured keys; ``*_file`` keys are read
again when the file changes, as Kubernetes rotates mounted Secrets in place), ``env`` and
``profile`` (the SDK's environment and profile-file providers), ``cvm-role`` (the CVM metadata
service), ``tke-oidc`` (TKE pod identity: STS ``AssumeRoleWithWebIdentity``), ``sts-assume-role``
(STS ``AssumeRole`` signed with the configured long-lived key) and ``default`` (env, profile,
CVM role, TKE pod identity: the first that answers).

The providers are ``tencentcloud-sdk-python-common``'s, subclassed for what they lack: every
metadata and STS call has a timeout, and a failure is raised (and logged and counted by
``Credentials``), never swallowed. Their own refresh rules (three separate property reads, a
refresh inside each) are not used: ``Credentials`` holds one immutable ``Snapshot`` (id, key,
token, expiry) that every caller takes whole, refreshes it ahead of expiry with jitter, one
refresh at a time per process, and keeps the old keys until they expire when a refresh fails.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.error import URLError
from urllib.parse import urlsplit
from urllib.request import ProxyHandler, build_opener

import structlog
from pydantic import SecretStr
from tencentcloud.common.common_client import CommonClient
from tencentcloud.common.credential import (
    Credential,
    CVMRoleCredential,
    EnvironmentVariableCredential,
    OIDCRoleArnCredential,
    ProfileCredential,
    STSAssumeRoleCredential,
)
from tencentcloud.common.exception.tencent_cloud_sdk_exception import TencentCloudSDKException
from tencentcloud.common.profile.client_profile import ClientProfile
from tencentcloud.common.profile.http_profile import HttpProfile

from . import backoff
from .config import CiSettings, CmqIntakeSettings
from .observers import Observers

__all__ = [
    "CredentialError",
    "Credentials",
    "Snapshot",
    "for_ci",
    "for_intake",
    "mask",
]

log = structlog.get_logger("asrd.credentials")

# A snapshot this close to its expiry is no longer handed out (clock skew, time on the wire).
EXPIRY_SKEW_S = 1.0
# How often a static provider with ``*_file`` keys looks at its files again.
FILE_RECHECK_S = 1.0


def mask(secret_id: str) -> str:
    """A key id as logs and ``asrd check`` show it: enough to tell keys apart, not to use one."""
    if len(secret_id) <= 8:
        return "****"
    return f"{secret_id[:4]}****{secret_id[-4:]}"


@dataclass(frozen=True)
class Snapshot:
    """Keys taken together: a request signs with ``secret_id`` and ``secret_key`` of one
    snapshot and sends its ``token``, never parts of two."""

    secret_id: str = field(repr=False)
    secret_key: str = field(repr=False)
    token: str = field(default="", repr=False)
    expires_at: float | None = None  # Unix time; None: the keys do not expire

    @property
    def masked_id(self) -> str:
        return mask(self.secret_id)

    def usable(self, now: float) -> bool:
        return self.expires_at is None or now < self.expires_at - EXPIRY_SKEW_S


class CredentialError(Exception):
    """No usable keys: the provider failed and the keys it gave last have expired (or it never
    gave any). A setup fault: work pauses until the keys come back."""

    def __init__(self, provider: str, cause: str) -> None:
        super().__init__(f"credentials ({provider}): {cause}")
        self.provider = provider
        self.cause = cause


class Source(Protocol):
    """One provider: ``fetch`` gets the keys it has now (raising ``CredentialError``)."""

    @property
    def name(self) -> str: ...

    @property
    def hint(self) -> str:
        """What an operator should look at when these keys are refused."""
        ...

    @property
    def recheck_s(self) -> float | None:
        """Keys without expiry: fetch again this often (None: never)."""
        ...

    def fetch(self) -> Snapshot: ...


# -- the providers ---------------------------------------------------------------------------


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value() if value is not None else ""


def _read(path: Path, key: str) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        cause = f"cannot read {key} {str(path)!r}: {exc.strerror}"
        raise CredentialError("static", cause) from None


@dataclass
class StaticSource:
    """The configured keys; those given as ``*_file`` are read again when the file changes."""

    secret_id: str
    secret_key: str
    token: str = ""
    files: dict[str, Path] = field(default_factory=dict)  # "secret_id" | ... -> file
    name: str = "static"
    hint: str = (
        "renew the key or token in the configuration (secret_key_file and token_file are "
        "read again when they change)"
    )

    @property
    def recheck_s(self) -> float | None:
        return FILE_RECHECK_S if self.files else None

    @classmethod
    def of(cls, section: CiSettings | CmqIntakeSettings) -> StaticSource:
        # Relative file names resolve in systemd's $CREDENTIALS_DIRECTORY, as at load time.
        base = os.environ.get("CREDENTIALS_DIRECTORY")
        files: dict[str, Path] = {}
        for key in ("secret_id", "secret_key", "token"):
            path: Path | None = getattr(section, f"{key}_file")
            if path is None:
                continue
            if not path.is_absolute() and base:
                path = Path(base) / path
            # Only a value that came from its file follows the file (a value given as well, in
            # the TOML or the environment, wins at load time and stays).
            try:
                from_file = path.read_text(encoding="utf-8").strip() == _secret(
                    getattr(section, key)
                )
            except OSError:
                from_file = True  # unreadable now: say so at the first fetch
            if from_file:
                files[key] = path
        return cls(
            _secret(section.secret_id), _secret(section.secret_key), _secret(section.token), files
        )

    def fetch(self) -> Snapshot:
        values = {"secret_id": self.secret_id, "secret_key": self.secret_key, "token": self.token}
        for key, path in self.files.items():
            values[key] = _read(path, f"{key}_file")
        if not values["secret_id"] or not values["secret_key"]:
            raise CredentialError(self.name, "secret_id or secret_key is empty")
        return Snapshot(values["secret_id"], values["secret_key"], values["token"])


class _SdkStatic:
    """The SDK's environment-variable or profile-file provider (keys without expiry)."""

    recheck_s: float | None = None

    def __init__(self, name: str, provider: Callable[[], Credential | None], hint: str) -> None:
        self.name = name
        self._provider = provider
        self.hint = hint

    def fetch(self) -> Snapshot:
        cred = self._provider()
        if cred is None:
            raise CredentialError(self.name, "no keys found")
        secret_id, secret_key, token = cred.get_credential_info()
        return Snapshot(str(secret_id), str(secret_key), str(token or ""))


def _env_source() -> _SdkStatic:
    return _SdkStatic(
        "env",
        EnvironmentVariableCredential().get_credential,
        "check TENCENTCLOUD_SECRET_ID and TENCENTCLOUD_SECRET_KEY",
    )


def _profile_source() -> _SdkStatic:
    return _SdkStatic(
        "profile",
        ProfileCredential().get_credential,
        "check ~/.tencentcloud/credentials or /etc/tencentcloud/credentials",
    )


class CvmRoleSource(CVMRoleCredential):  # type: ignore[misc]  # untyped SDK base
    """The CVM metadata service, as the SDK's provider asks it, with a timeout on each call."""

    name = "cvm-role"
    hint = "check the CAM role bound to this CVM and its policy"
    recheck_s: float | None = None

    def __init__(self, metadata_url: str, role_name: str, timeout_s: float) -> None:
        super().__init__(role_name or None)
        self.role: str | None = role_name or None
        # The SDK keeps the URLs as class attributes; an instance may point elsewhere.
        base = metadata_url.rstrip("/") + "/"
        self._metadata_endpoint = base
        self._role_endpoint = base + "cam/security-credentials/"
        self._timeout_s = timeout_s
        # The metadata service is link-local to the instance: never through a proxy.
        self._opener = build_opener(ProxyHandler({}))

    def _get(self, url: str) -> str:
        try:
            with self._opener.open(url, timeout=self._timeout_s) as resp:
                return str(resp.read().decode("utf-8"))
        except (URLError, OSError, ValueError) as exc:
            raise CredentialError(self.name, f"metadata service: {_oneline(exc)}") from None

    def fetch(self) -> Snapshot:
        if not self.role:
            # The metadata service names the role bound to the instance (one at most).
            names = self._get(self._role_endpoint).split()
            if not names:
                raise CredentialError(self.name, "no CAM role is bound to this instance")
            self.role = names[0]
        text = self._get(self._role_endpoint + self.role)
        try:
            doc = json.loads(text)
            if doc.get("Code") != "Success":
                code = doc.get("Code")
                raise CredentialError(self.name, f"metadata service answered Code {code}")
            return Snapshot(
                str(doc["TmpSecretId"]),
                str(doc["TmpSecretKey"]),
                str(doc["Token"]),
                float(doc["ExpiredTime"]),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            raise CredentialError(self.name, "metadata service answer is not the keys") from None


def _sts_client(endpoint: str, region: str, timeout_s: float, cred: Credential | None) -> Any:
    """An API 3.0 client for STS at ``endpoint`` (``https://host`` or ``http://host:port``)."""
    parts = urlsplit(endpoint if "://" in endpoint else f"https://{endpoint}")
    http = HttpProfile(
        protocol=parts.scheme or "https", endpoint=parts.netloc, reqTimeout=max(1, int(timeout_s))
    )
    profile = ClientProfile(httpProfile=http)
    return CommonClient("sts", "2018-08-13", cred, region or "ap-guangzhou", profile=profile)


def _sts_snapshot(name: str, answer: Any) -> Snapshot:
    try:
        resp = answer["Response"]
        creds = resp["Credentials"]
        return Snapshot(
            str(creds["TmpSecretId"]),
            str(creds["TmpSecretKey"]),
            str(creds["Token"]),
            float(resp["ExpiredTime"]),
        )
    except (KeyError, TypeError, ValueError):
        raise CredentialError(name, "STS answer has no credentials") from None


def _sts_error(name: str, exc: Exception) -> CredentialError:
    if isinstance(exc, TencentCloudSDKException):
        return CredentialError(name, f"STS: {exc.get_code()}: {_oneline(exc.get_message())}")
    return CredentialError(name, f"STS: {type(exc).__name__}: {_oneline(exc)}")


class TkeOidcSource(OIDCRoleArnCredential):  # type: ignore[misc]  # untyped SDK base
    """TKE pod identity: the SDK's TKE provider (``TKE_REGION``, ``TKE_PROVIDER_ID``,
    ``TKE_WEB_IDENTITY_TOKEN_FILE`` read again at every refresh, ``TKE_ROLE_ARN``), its STS call
    made with a timeout."""

    name = "tke-oidc"
    hint = "check the pod's service account annotation, the TKE_* variables and the CAM role"
    recheck_s: float | None = None

    def __init__(
        self, endpoint: str, role_arn: str, session_name: str, duration_s: int, timeout_s: float
    ) -> None:
        super().__init__("", "", "", role_arn, session_name, duration_s, endpoint=endpoint)
        self._is_tke = True
        self._configured_arn = role_arn
        self._timeout_s = timeout_s

    def fetch(self) -> Snapshot:
        try:
            self._init_from_tke()  # the SDK's: environment and the projected token file
        except (OSError, EnvironmentError) as exc:  # noqa: UP024 - what the SDK raises
            raise CredentialError(self.name, _oneline(exc)) from None
        if self._configured_arn:
            self._role_arn = self._configured_arn
        params = {
            "ProviderId": self._provider_id,
            "WebIdentityToken": self._web_identity_token,
            "RoleArn": self._role_arn,
            "RoleSessionName": self._role_session_name or "asrd",
            "DurationSeconds": self._duration_seconds,
        }
        try:
            client = _sts_client(self._endpoint, self._region, self._timeout_s, None)
            answer = client.call_json(self._action, params, options={"SkipSign": True})
        except Exception as exc:  # noqa: BLE001 - every SDK or transport failure is one answer
            raise _sts_error(self.name, exc) from None
        return _sts_snapshot(self.name, answer)


class AssumeRoleSource(STSAssumeRoleCredential):  # type: ignore[misc]  # untyped SDK base
    """STS ``AssumeRole`` signed with the configured long-lived key, with a timeout."""

    name = "sts-assume-role"
    hint = "check role_arn, the long-lived key that assumes it, and the role's trust policy"
    recheck_s: float | None = None

    def __init__(
        self,
        long_term: StaticSource,
        endpoint: str,
        role_arn: str,
        session_name: str,
        duration_s: int,
        timeout_s: float,
    ) -> None:
        super().__init__("", "", role_arn, session_name, duration_s, endpoint=endpoint)
        self._long_term = long_term
        self._timeout_s = timeout_s

    def fetch(self) -> Snapshot:
        key = self._long_term.fetch()  # its files are read again here too
        params = {
            "RoleArn": self._role_arn,
            "RoleSessionName": self._role_session_name,
            "DurationSeconds": self._duration_seconds,
        }
        try:
            cred = Credential(key.secret_id, key.secret_key, key.token or None)
            client = _sts_client(self._endpoint, self._region, self._timeout_s, cred)
            answer = client.call_json("AssumeRole", params)
        except Exception as exc:  # noqa: BLE001 - every SDK or transport failure is one answer
            raise _sts_error(self.name, exc) from None
        return _sts_snapshot(self.name, answer)


class DefaultSource:
    """Environment, profile file, CVM role, TKE pod identity: the first that gives keys is
    kept (as the SDK's ``DefaultCredentialProvider``)."""

    recheck_s: float | None = None

    def __init__(self, candidates: list[Source]) -> None:
        self._candidates = candidates
        self._chosen: Source | None = None

    @property
    def name(self) -> str:
        return f"default ({self._chosen.name})" if self._chosen is not None else "default"

    @property
    def hint(self) -> str:
        return self._chosen.hint if self._chosen is not None else "no provider gave keys"

    def fetch(self) -> Snapshot:
        if self._chosen is not None:
            return self._chosen.fetch()
        causes = []
        for source in self._candidates:
            try:
                snap = source.fetch()
            except CredentialError as exc:
                causes.append(f"{source.name}: {exc.cause}")
                continue
            self._chosen = source
            return snap
        raise CredentialError("default", "; ".join(causes))


def _oneline(value: object, limit: int = 200) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _cvm(s: CiSettings) -> Source:
    return CvmRoleSource(s.metadata_url, s.role_name, s.credentials_timeout_s)


def _tke(s: CiSettings) -> Source:
    return TkeOidcSource(
        s.sts_endpoint, s.role_arn, s.session_name, s.duration_s, s.credentials_timeout_s
    )


def _assume_role(s: CiSettings) -> Source:
    return AssumeRoleSource(
        StaticSource.of(s),
        s.sts_endpoint,
        s.role_arn,
        s.session_name,
        s.duration_s,
        s.credentials_timeout_s,
    )


def _default(s: CiSettings) -> Source:
    # TKE only where its webhook put the variables: no STS call anywhere else.
    chain = [_env_source(), _profile_source(), _cvm(s)]
    if os.environ.get("TKE_WEB_IDENTITY_TOKEN_FILE"):
        chain.append(_tke(s))
    return DefaultSource(chain)


# ``[ci] credentials`` -> how its provider is made from the section.
PROVIDERS: dict[str, Callable[[CiSettings], Source]] = {
    "static": StaticSource.of,
    "env": lambda s: _env_source(),
    "profile": lambda s: _profile_source(),
    "cvm-role": _cvm,
    "tke-oidc": _tke,
    "sts-assume-role": _assume_role,
    "default": _default,
}


def source_for(settings: CiSettings) -> Source:
    return PROVIDERS[settings.credentials](settings)


# -- the snapshot holder ---------------------------------------------------------------------


class Credentials:
    """The current ``Snapshot`` of one provider, refreshed ahead of expiry.

    A refresh is due when less than ``max(margin_s, fraction x lifetime)`` remains (at most half
    the lifetime), less a random share of that window, so replicas started together do not ask
    together. One caller refreshes while the others go on with the current keys; a refresh that
    fails keeps them until they expire and is tried again with backoff. Only when no usable keys
    are left does ``snapshot`` raise ``CredentialError``.
    """

    def __init__(
        self,
        source: Source,
        margin_s: float = 300.0,
        fraction: float = 0.1,
        clock: Callable[[], float] = time.time,
        uniform: backoff.Uniform = random.uniform,
        retry_base_s: float = 1.0,
        retry_max_s: float = 30.0,
    ) -> None:
        self.source = source
        self.observers = Observers()
        self._margin_s = margin_s
        self._fraction = fraction
        self._clock = clock
        self._uniform = uniform
        self._retry = (retry_base_s, retry_max_s)
        self._snap: Snapshot | None = None
        self._refresh_at = 0.0
        self._next_try = 0.0
        self._failures = 0
        self._last_error = ""
        self._lock = threading.Lock()  # held by the one refresh in flight

    @property
    def provider(self) -> str:
        return str(self.source.name)

    @property
    def hint(self) -> str:
        return str(self.source.hint)

    def current(self) -> Snapshot | None:
        """The keys held now, without refreshing (for status lines)."""
        return self._snap

    def snapshot(self) -> Snapshot:
        """Keys to sign one request with. Raises ``CredentialError`` when none are usable."""
        snap = self._snap
        now = self._clock()
        if snap is not None and now < self._refresh_at:
            return snap
        return self._slow(now)

    def refresh(self) -> Snapshot:
        """Fetch new keys now (after the service refused the current ones; a refresh in flight
        is waited for first); raises ``CredentialError`` when the provider fails."""
        with self._lock:
            return self._refresh(self._clock())

    def _slow(self, now: float) -> Snapshot:
        snap = self._snap
        if snap is not None and snap.usable(now):
            # Due, not expired: one caller refreshes, the rest keep signing with these keys.
            if now >= self._next_try and self._lock.acquire(blocking=False):
                try:
                    if self._clock() >= self._refresh_at:  # not done while we came here
                        self._refresh(now)
                except CredentialError:
                    pass  # logged and counted in _refresh; the old keys are still good
                finally:
                    self._lock.release()
            return self._snap or snap
        with self._lock:  # no usable keys: wait for the refresh in flight, or make one
            now = self._clock()
            snap = self._snap
            if snap is not None and snap.usable(now):  # refreshed while we waited
                return snap
            if now < self._next_try:
                raise CredentialError(self.provider, self._last_error or "no keys yet")
            return self._refresh(now)

    def _refresh(self, now: float) -> Snapshot:
        """Fetch new keys (the caller holds ``_lock``); on failure keep the old ones."""
        try:
            snap = self.source.fetch()
        except CredentialError as exc:
            self._failures += 1
            self._last_error = exc.cause
            delay = backoff.delay(self._failures, *self._retry, self._uniform)
            self._next_try = now + delay
            old = self._snap
            keeps = old is not None and old.usable(now)
            log.warning(
                "credentials refresh failed",
                provider=self.provider,
                error=exc.cause,
                keeping_old_keys_until=old.expires_at if keeps and old is not None else None,
                retry_in_s=round(delay, 2),
            )
            self.observers.credentials_refreshed(self.provider, None, exc.cause)
            raise
        changed = self._snap != snap  # a static key's file read again is usually the same
        # The first read of keys that never expire is no news (and one-off commands print only
        # their own lines); temporary keys and a changed static key are worth a line.
        quiet = self._snap is None and snap.expires_at is None
        self._snap = snap
        self._failures = 0
        self._last_error = ""
        self._next_try = 0.0
        self._refresh_at = self._due(snap, now)
        if changed:
            (log.debug if quiet else log.info)(
                "credentials refreshed",
                provider=self.provider,
                key_id=snap.masked_id,
                expires_at=snap.expires_at,
            )
        if changed or snap.expires_at is not None:  # not the static files' re-reads
            self.observers.credentials_refreshed(self.provider, snap.expires_at, "")
        return snap

    def _due(self, snap: Snapshot, now: float) -> float:
        if snap.expires_at is None:
            recheck = self.source.recheck_s
            return now + recheck if recheck else float("inf")
        lifetime = max(snap.expires_at - now, 0.0)
        ahead = min(max(self._margin_s, self._fraction * lifetime), lifetime / 2)
        return snap.expires_at - ahead - self._uniform(0.0, ahead * 0.2)


# -- one holder per provider and process ------------------------------------------------------

_shared: dict[tuple[Any, ...], Credentials] = {}
_shared_lock = threading.Lock()


def _key(settings: CiSettings) -> tuple[Any, ...]:
    s = settings
    return (
        s.credentials, _secret(s.secret_id), _secret(s.secret_key), _secret(s.token),
        s.secret_id_file, s.secret_key_file, s.token_file, s.role_name, s.role_arn,
        s.session_name, s.duration_s, s.metadata_url, s.sts_endpoint,
    )  # fmt: skip


def for_ci(settings: CiSettings) -> Credentials:
    """The process's holder for ``[ci]``'s keys: every client built from the same settings (CI,
    the COS sink, the intake when it shares them) signs with it, so there is one refresh."""
    key = _key(settings)
    with _shared_lock:
        found = _shared.get(key)
        if found is None:
            found = _shared[key] = Credentials(
                source_for(settings),
                margin_s=settings.refresh_margin_s,
                fraction=settings.refresh_fraction,
            )
        return found


def for_intake(cmq: CmqIntakeSettings, ci: CiSettings) -> Credentials:
    """The intake signs with ``[ci]``'s keys unless ``[intake.cmq]`` names a key of its own."""
    own = cmq.secret_id is not None and _secret(cmq.secret_id) != _secret(ci.secret_id)
    if not own:
        return for_ci(ci)
    return Credentials(StaticSource.of(cmq))
