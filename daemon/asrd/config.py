"""Typed configuration: one TOML file, overridden by ``ASRD_SECTION__KEY`` environment variables.

Secrets are ``SecretStr`` (never printed) and may come from ``*_file`` keys instead, which is how
systemd credentials (``$CREDENTIALS_DIRECTORY``) reach the daemon. Any problem raises
``ConfigError`` with one line naming the key; the CLI turns it into exit status 78.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    PrivateAttr,
    SecretStr,
    Tag,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

ENV_PREFIX = "ASRD_"
JobState = Literal["Submitted", "Running", "Success", "Failed", "Pause", "Cancel"]
OutputFormat = Literal["json", "txt", "srt", "vtt"]
CredentialsProvider = Literal[
    "static", "env", "profile", "cvm-role", "tke-oidc", "sts-assume-role", "default"
]


def _terminal_states() -> list[JobState]:
    return ["Success", "Failed"]


def _json_only() -> list[OutputFormat]:
    return ["json"]


class ConfigError(Exception):
    """The configuration cannot be used; the message is one line naming the key."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    # Secrets of the section that may come from a ``<key>_file`` instead (see _resolve_secret).
    secret_keys: ClassVar[tuple[str, ...]] = ()

    @model_validator(mode="before")
    @classmethod
    def _secret_files(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict) and cls.secret_keys:
            data = dict(data)
            for key in cls.secret_keys:
                data = _resolve_secret(data, key, info)
        return data


def _read_secret_file(path: Path, key: str) -> SecretStr:
    try:
        return SecretStr(path.read_text(encoding="utf-8").strip())
    except OSError as exc:
        raise ValueError(f"cannot read {key} {str(path)!r}: {exc.strerror}") from None


def _resolve_secret(data: dict[str, Any], key: str, info: ValidationInfo) -> dict[str, Any]:
    """Fill ``key`` from ``key_file`` (relative paths resolve in $CREDENTIALS_DIRECTORY)."""
    file_key = f"{key}_file"
    file_value = data.get(file_key)
    if file_value and not data.get(key):
        path = Path(str(file_value))
        creds = (info.context or {}).get("CREDENTIALS_DIRECTORY")
        if not path.is_absolute() and creds:
            path = Path(creds) / path
        data[key] = _read_secret_file(path, file_key)
        data[file_key] = path  # resolved, for whatever reads the file again later
    elif file_value:
        data[file_key] = None  # the value given directly wins; the file is never read
    return data


# CMQ's queue and topic name rule (docs/tencent-cloud.md §3.6): CI writes into that queue.
CMQ_NAME = r"^[A-Za-z][A-Za-z0-9-]{0,63}$"
CMQ_NAME_RULE = "at most 64 characters: a letter, then letters, digits and '-'"


# CI's MqRegion codes; the CMQ host names carry the same codes (docs/tencent-cloud.md §3.1).
MqRegion = Literal["sh", "bj", "gz", "cd", "hk"]
# cmq-<r>.public….tencenttdmq.com, the legacy cmq-queue-<r>/cmq-topic-<r>.api…, <r>.mqadapter.…
_ENDPOINT_REGION = re.compile(
    r"^(?:cmq-(?:queue-|topic-)?(?P<public>[a-z]+)\.|(?P<private>[a-z]+)\.mqadapter\.)"
)


def endpoint_region(endpoint: str) -> str:
    """The region code a CMQ endpoint's host name carries, or "" (an IP address, a proxy, a
    local emulator): the host decides which region's queues a request reaches."""
    host = (urlsplit(endpoint).hostname or "").lower()
    m = _ENDPOINT_REGION.match(host)
    return (m["public"] or m["private"]) if m else ""


def _cmq_name(value: str) -> str:
    if not re.fullmatch(CMQ_NAME, value):
        raise ValueError(f"{value!r} is not a CMQ queue or topic name ({CMQ_NAME_RULE})")
    return value


class CallbackSettings(_Section):
    """What every submitted job asks CI for when it ends: a message in a TDMQ-CMQ queue or topic
    (``type = "tdmq"``, moved to Pulsar by ``[intake.cmq]``) or a POST to ``url``."""

    type: Literal["tdmq", "url"] = "tdmq"
    format: Literal["JSON", "XML"] = "JSON"
    mq_region: MqRegion = "gz"
    mq_mode: Literal["Queue", "Topic"] = "Queue"
    mq_name: str = ""
    url: str = Field(default="", pattern=r"^$|^https?://[^\s]+$")

    @field_validator("mq_name")
    @classmethod
    def _mq_name_rule(cls, value: str) -> str:
        return _cmq_name(value) if value else value

    @model_validator(mode="after")
    def _target(self) -> CallbackSettings:
        if self.type == "tdmq" and not self.mq_name:
            raise ValueError('mq_name is required when type is "tdmq"')
        if self.type == "url" and not self.url:
            raise ValueError('url is required when type is "url"')
        return self


class RecognitionSettings(_Section):
    """Inline ``SpeechRecognition`` parameters of each job (unless ``template_id`` is set)."""

    engine_model_type: str = "16k_zh"
    channel_num: int = Field(default=1, ge=1, le=2)
    res_text_format: int = Field(default=0, ge=0, le=3)
    speaker_diarization: int = Field(default=0, ge=0, le=1)
    filter_dirty: int = Field(default=0, ge=0, le=2)
    filter_modal: int = Field(default=0, ge=0, le=2)
    convert_num_mode: int = Field(default=0, ge=0, le=3)
    output_file_type: Literal["txt", "srt"] = "txt"


class CiSettings(_Section):
    region: str = Field(pattern=r"^[a-z]+-[a-z0-9-]+$")
    bucket: str = Field(pattern=r"^[a-z0-9-]+-\d+$", description="name-appid")
    queue_id: str = ""
    secret_id: SecretStr | None = None
    secret_id_file: Path | None = None
    secret_key: SecretStr | None = None
    secret_key_file: Path | None = None
    token: SecretStr | None = None
    token_file: Path | None = None
    # Where the keys come from (docs/credentials.md): the keys above, or a provider of
    # temporary keys that asrd refreshes ahead of their expiry.
    credentials: CredentialsProvider = "static"
    role_name: str = ""  # cvm-role: empty = the role the metadata service names
    role_arn: str = ""  # sts-assume-role; tke-oidc (empty: TKE_ROLE_ARN)
    session_name: str = Field(default="asrd", pattern=r"^[\w+=,.@-]{2,128}$")
    duration_s: int = Field(default=7200, ge=1, le=43_200)
    metadata_url: str = Field(
        default="http://metadata.tencentyun.com/latest/meta-data/", pattern=r"^https?://\S+$"
    )
    sts_endpoint: str = Field(default="https://sts.tencentcloudapi.com", pattern=r"^https?://\S+$")
    credentials_timeout_s: float = Field(default=5.0, gt=0, le=60)
    # Refresh when less than max(refresh_margin_s, refresh_fraction x lifetime) remains.
    refresh_margin_s: float = Field(default=300.0, ge=0)
    refresh_fraction: float = Field(default=0.1, ge=0, lt=1)
    endpoint: str = ""
    timeout_s: float = Field(default=10.0, gt=0)
    max_connections: int = Field(default=16, ge=1, le=256)
    get_batch_size: int = Field(default=10, ge=1, le=100)
    # CI's request quota as this process may use it (0: no client-side limit). Every CI call of
    # the process (consumer, reconciler, sweep, submit) draws on it; throttling answers slow it.
    max_requests_per_s: float = Field(default=0.0, ge=0)
    output_prefix: str = "asr-results/"
    template_id: str = ""
    recognition: RecognitionSettings = RecognitionSettings()
    callback: CallbackSettings

    secret_keys = ("secret_id", "secret_key", "token")

    @model_validator(mode="after")
    def _need_credentials(self) -> CiSettings:
        if self.credentials in ("sts-assume-role",) and not self.role_arn:
            raise ValueError('role_arn is required with credentials = "sts-assume-role"')
        if self.credentials not in ("static", "sts-assume-role"):
            return self  # the provider brings the keys
        if self.secret_id is None or not self.secret_id.get_secret_value():
            raise ValueError("secret_id (or secret_id_file) is required")
        if self.secret_key is None or not self.secret_key.get_secret_value():
            raise ValueError("secret_key (or secret_key_file) is required")
        return self

    @field_validator("endpoint")
    @classmethod
    def _endpoint_form(cls, value: str) -> str:
        if value and not re.fullmatch(r"https?://[^/:]+(:\d+)?/?", value):
            raise ValueError("must look like http://HOST:PORT (or be empty for Tencent Cloud)")
        return value.rstrip("/")


class PulsarSettings(_Section):
    service_url: str = Field(
        default="pulsar://127.0.0.1:6650", pattern=r"^(pulsar(\+ssl)?|https?)://"
    )
    topic: str = Field(min_length=1)
    subscription: str = Field(default="asrd", min_length=1)
    token: SecretStr | None = None
    # Read again whenever it changes (a rotated TDMQ role token needs no restart).
    token_file: Path | None = None
    # CA bundle that signed the broker's certificate (pulsar+ssl://); empty: the system's.
    tls_trust_certs_file: Path | None = None
    tls_validate_hostname: bool = True
    # Accept any certificate (no verification at all): for a test broker only.
    tls_allow_insecure: bool = False
    dead_letter_topic: str = ""
    retry_topic: str = ""
    max_in_flight: int = Field(default=256, ge=1, le=100_000)
    concurrency: int = Field(default=32, ge=1, le=1024)
    # Messages handled together when they are waiting (one CI describe, one ledger transaction
    # each way); 1 handles every message on its own.
    batch_size: int = Field(default=10, ge=1, le=100)
    # Consumer processes on the subscription under one supervisor (each uses a core).
    workers: int = Field(default=1, ge=1, le=64)
    receiver_queue_size: int = Field(default=100, ge=1, le=50_000)
    nack_delay_ms: int = Field(default=10_000, ge=100)
    max_attempts: int = Field(default=10, ge=1, le=1000)
    retry_base_s: float = Field(default=1.0, gt=0)
    retry_max_s: float = Field(default=300.0, gt=0)
    retry_window_s: float = Field(default=6 * 3600.0, gt=0)
    # A sink whose transient failures hit this many different jobs in a row, none delivered in
    # between, is down as a whole: an outage, no attempts spent (docs/guarantees.md). 0: never.
    sink_breaker_failures: int = Field(default=5, ge=0, le=10_000)
    foreign_messages: Literal["ack", "dead-letter"] = "ack"
    max_message_bytes: int = Field(default=5 * 1024 * 1024, ge=1024)
    shutdown_deadline_s: float = Field(default=30.0, gt=0)

    secret_keys = ("token",)

    @field_validator("tls_trust_certs_file")
    @classmethod
    def _readable_ca(cls, value: Path | None) -> Path | None:
        # The client would only say "ConnectError" for a CA file it cannot read.
        if value is not None:
            try:
                with value.open("rb"):
                    pass
            except OSError as exc:
                raise ValueError(f"cannot read {str(value)!r}: {exc.strerror}") from None
        return value

    @property
    def dlq_topic(self) -> str:
        # TDMQ names the auto-created DLQ <topic>-<subscription>-DLQ; always name it explicitly.
        return self.dead_letter_topic or f"{self.topic}-{self.subscription}-DLQ"

    @property
    def retry_letter_topic(self) -> str:
        # TDMQ's retry-letter naming; retries wait there (deliver_after) instead of in memory.
        return self.retry_topic or f"{self.topic}-{self.subscription}-RETRY"


class LedgerSettings(_Section):
    # SQLite: always an absolute path. A relative one would follow the working directory, and a
    # one-off `asrd reconcile` run elsewhere would keep a second ledger (and deliver its jobs
    # twice). PostgreSQL: postgresql://user@host:port/dbname, shared by workers, hosts and pods.
    url: str = Field(
        default="sqlite:////var/lib/asrd/ledger.db", pattern=r"^(sqlite:///|postgres(ql)?://)"
    )
    # PostgreSQL's password, kept out of the URL (libpq's PGPASSWORD/PGPASSFILE work as well).
    password: SecretStr | None = None
    password_file: Path | None = None
    # Connections per process to PostgreSQL (each worker has its own pool).
    pool_size: int = Field(default=4, ge=1, le=64)
    secret_keys = ("password",)
    # How long a delivery is remembered: the window in which a duplicate is recognised.
    retention_days: float = Field(default=30.0, gt=0)

    @model_validator(mode="before")
    @classmethod
    def _in_state_directory(cls, data: Any, info: ValidationInfo) -> Any:
        """Without a url, or with a relative one, use systemd's ``$STATE_DIRECTORY`` if set."""
        state = str((info.context or {}).get("STATE_DIRECTORY") or "").split(":")[0]
        if not isinstance(data, dict) or not state:
            return data
        url = str(data.get("url") or "sqlite:///ledger.db")
        if not url.startswith("sqlite:///"):
            return data
        data = dict(data)
        path = url.removeprefix("sqlite:///")
        if path and not Path(path).is_absolute():
            data["url"] = f"sqlite:///{Path(state) / path}"
        return data

    @field_validator("url")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if (
            value.startswith("sqlite:///")
            and not Path(value.removeprefix("sqlite:///")).is_absolute()
        ):
            raise ValueError(
                "needs an absolute path, e.g. sqlite:////var/lib/asrd/ledger.db (four slashes)"
                " (relative paths resolve only in systemd's $STATE_DIRECTORY)"
            )
        return value

    @property
    def is_sqlite(self) -> bool:
        return self.url.startswith("sqlite:///")

    @property
    def path(self) -> Path:
        """The SQLite file (only meaningful when ``is_sqlite``)."""
        return Path(self.url.removeprefix("sqlite:///"))


class HttpSettings(_Section):
    # Empty = no HTTP API (the local broker's admin API already has 8080).
    listen: str = Field(default="", pattern=r"^$|^[^:]+:\d+$")
    # Bearer token for /v1/* (except /v1/callbacks, which carries its own); required when
    # ``listen`` is not a loopback address.
    token: SecretStr | None = None
    token_file: Path | None = None
    max_body_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)
    # The console (/ui/) is read-only unless this is set: replay is refused by the server.
    console_actions: bool = False

    secret_keys = ("token",)

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @model_validator(mode="after")
    def _token_off_loopback(self) -> HttpSettings:
        if self.listen and not is_loopback(self.host) and not self.bearer_token:
            raise ValueError(
                f"listen: {self.host} is not a loopback address: set token (or token_file) "
                "so /v1/* needs a bearer token"
            )
        return self

    @property
    def bearer_token(self) -> str:
        return self.token.get_secret_value() if self.token is not None else ""


def is_loopback(host: str) -> bool:
    """Only 127.0.0.0/8, ::1 and ``localhost``; any other name may resolve anywhere."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ReconcileSettings(_Section):
    """Periodic pass over finished jobs whose callback never came (0 = only ``asrd reconcile``)."""

    interval_s: float = Field(default=600.0, ge=0)
    lookback_s: float = Field(default=86_400.0, gt=0)
    grace_s: float = Field(default=300.0, ge=0)
    # A submitted job still owed a result this long after its submit is overdue: the deadline
    # sweep (every sweep_interval_s, 0 = off) looks it up by id, whatever the list window.
    deadline_s: float = Field(default=3 * 3600.0, gt=0)
    sweep_interval_s: float = Field(default=300.0, ge=0)


class DlqSettings(_Section):
    """Replaying dead letters (``asrd dlq replay``, the console)."""

    # A message replayed this many times is refused: it keeps failing, and must not loop.
    max_replays: int = Field(default=3, ge=1, le=1000)


class UsageSettings(_Section):
    """Estimated cost in usage reports: no prices are built in (they change; take them from
    the provider's price page). Without prices no cost is shown."""

    currency: str = Field(default="", max_length=8)
    # Price per audio hour, by engine model name (``16k_zh``...), in ``currency``.
    prices: dict[str, float] = Field(default_factory=dict)

    @field_validator("prices")
    @classmethod
    def _not_negative(cls, prices: dict[str, float]) -> dict[str, float]:
        for engine, price in prices.items():
            if price < 0:
                raise ValueError(f"{engine}: a price cannot be negative")
        return prices


class SubmitSettings(_Section):
    """``asrd submit`` in batches (``--manifest``, ``--prefix``)."""

    rate: float = Field(default=20.0, gt=0, description="creates per second")
    concurrency: int = Field(default=8, ge=1, le=256)
    attempts: int = Field(default=5, ge=1, le=100)
    # How far before a lost create the token look-up searches CI's job list (clock skew and
    # CI's one-second creation times).
    lookup_margin_s: float = Field(default=120.0, ge=0)
    list_page_size: int = Field(default=1000, ge=1, le=1000)
    progress_interval_s: float = Field(default=5.0, gt=0)


class CmqIntakeSettings(_Section):
    """The CMQ queue CI writes its notifications into; the intake moves them onto [pulsar] topic.

    Credentials default to [ci]'s (the same Tencent Cloud key usually may do both).
    """

    endpoint: str = Field(pattern=r"^https?://[^\s/]+(/[^\s]*)?$")
    queue: str
    # The queue's region when the endpoint's host name does not carry it (an IP address, a
    # proxy); compared with [ci.callback] mq_region.
    region: MqRegion | Literal[""] = ""
    polling_wait_s: int = Field(default=10, ge=0, le=30)
    batch_size: int = Field(default=16, ge=1, le=16)
    # Receive loops in parallel: one waits for Pulsar to persist while the others poll.
    loops: int = Field(default=4, ge=1, le=64)
    # After a receive that brought a partial batch, a loop waits this long before its next one,
    # so that at a steady rate one receive and one delete carry several messages, not one each
    # (fewer requests, bigger batches on the topic); a notification waits at most this long more.
    linger_s: float = Field(default=0.2, ge=0, le=5)
    secret_id: SecretStr | None = None
    secret_id_file: Path | None = None
    secret_key: SecretStr | None = None
    secret_key_file: Path | None = None
    token: SecretStr | None = None
    token_file: Path | None = None
    signature_method: Literal["HmacSHA256", "HmacSHA1"] = "HmacSHA256"
    timeout_s: float = Field(default=10.0, gt=0)
    # /readyz fails once no poll has succeeded for this long.
    unreachable_after_s: float = Field(default=60.0, gt=0)
    # How long one move waits for Pulsar to persist a batch before leaving it in CMQ. Keep it
    # below the queue's visibility timeout (default 30 s), or CMQ hands the batch to another
    # loop while this one still waits (a warning says so when a message arrives like that).
    produce_timeout_s: float = Field(default=20.0, gt=0, le=600)
    # The queue's "max unacknowledged time" in the TDMQ console (30 s to 12 h): a message left
    # undeleted that long is acknowledged by TDMQ and gone. `asrd check` compares it with
    # [reconcile] lookback_s.
    max_unacked_s: float = Field(default=43_200.0, ge=30, le=43_200)

    secret_keys = ("secret_id", "secret_key", "token")

    @field_validator("queue")
    @classmethod
    def _queue_rule(cls, value: str) -> str:
        return _cmq_name(value)

    @model_validator(mode="after")
    def _region_agrees(self) -> CmqIntakeSettings:
        host_region = endpoint_region(self.endpoint)
        if self.region and host_region and self.region != host_region:
            raise ValueError(
                f"region = {self.region!r} but endpoint = {self.endpoint!r} is in {host_region!r}"
            )
        return self

    @property
    def queue_region(self) -> str:
        """Where the queue is: ``region``, else the endpoint's, else "" (unknown)."""
        return self.region or endpoint_region(self.endpoint)


class UrlIntakeSettings(_Section):
    """``POST /v1/callbacks/<token>`` on [http] listen: URL callbacks (``CallBackType=Url``) or a
    CMQ topic's HTTP push, produced onto [pulsar] topic before the answer."""

    token: SecretStr | None = None
    token_file: Path | None = None
    max_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, le=5 * 1024 * 1024)

    secret_keys = ("token",)

    @model_validator(mode="after")
    def _need_token(self) -> UrlIntakeSettings:
        token = self.token.get_secret_value() if self.token is not None else ""
        if len(token) < 16:
            raise ValueError("token (or token_file) of at least 16 characters is required")
        return self


class IntakeSettings(_Section):
    """What feeds the Pulsar topic. Either part may be absent."""

    cmq: CmqIntakeSettings | None = None
    url: UrlIntakeSettings | None = None


class CanarySettings(_Section):
    """``asrd check --canary``: one short job through the whole production path."""

    # Where the bundled audio is uploaded in the [ci] bucket (when ``object`` is empty).
    prefix: str = "asrd-canary/"
    # An object already in the bucket to use instead of the bundled audio.
    object: str = ""
    # How long the canary waits for every stage before naming the first one missing.
    timeout_s: float = Field(default=300.0, gt=0)


class LogSettings(_Section):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["json", "console"] = "json"


class When(_Section):
    """Route selector: a sink receives a record only if every listed field matches (an empty
    list or table matches anything)."""

    state: list[JobState] = Field(default_factory=_terminal_states)
    queue_id: list[str] = Field(default_factory=list)
    # The input object key (or URL) starts with one of these.
    input_prefix: list[str] = Field(default_factory=list)
    # Fields of the job's UserData (a JSON object or key=value&... text): each listed field
    # has the value, or one of the values.
    user_data: dict[str, str | list[str]] = Field(default_factory=dict)


class _SinkBase(_Section):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    when: When = When()


class FileSinkSettings(_SinkBase):
    type: Literal["file"]
    dir: Path
    formats: list[OutputFormat] = Field(default_factory=_json_only)
    # Readable by other users by default: an application container with another uid reads the
    # results from a shared volume. "0o640" / "0640" in TOML or ASRD_* (octal), or 0o640.
    file_mode: int = Field(default=0o644)

    @field_validator("file_mode", mode="before")
    @classmethod
    def _octal(cls, value: Any) -> Any:
        if isinstance(value, str):
            try:
                value = int(value.removeprefix("0o"), 8)
            except ValueError:
                raise ValueError(f'{value!r} is not an octal mode such as "0640"') from None
        if isinstance(value, int) and not 0 <= value <= 0o777:
            raise ValueError(f"{value} is not a file mode 0..0o777 (write octal: 0o640)")
        return value


class StdoutSinkSettings(_SinkBase):
    type: Literal["stdout"]


class WebhookSinkSettings(_SinkBase):
    """POST the record as JSON; ``Idempotency-Key`` is the job id, the body is HMAC-signed."""

    type: Literal["webhook"]
    url: str = Field(pattern=r"^https?://[^\s]+$")
    secret: SecretStr | None = None
    secret_file: Path | None = None
    timeout_s: float = Field(default=10.0, gt=0)
    headers: dict[str, str] = Field(default_factory=dict)

    secret_keys = ("secret",)


class PulsarSinkSettings(_SinkBase):
    """Publish the record as JSON to a Pulsar topic; empty connection keys reuse [pulsar]'s."""

    type: Literal["pulsar"]
    topic: str = Field(min_length=1)
    service_url: str = Field(default="", pattern=r"^$|^(pulsar(\+ssl)?|https?)://")
    token: SecretStr | None = None
    token_file: Path | None = None
    send_timeout_ms: int = Field(default=30_000, ge=1000)

    secret_keys = ("token",)


class CosSinkSettings(_SinkBase):
    """Put ``<prefix><job_id>.<format>`` objects into a COS bucket with the [ci] credentials."""

    type: Literal["cos"]
    bucket: str = Field(default="", pattern=r"^$|^[a-z0-9-]+-\d+$")  # empty = [ci] bucket
    prefix: str = "asr-records/"
    formats: list[OutputFormat] = Field(default_factory=_json_only)


class PluginSinkSettings(_SinkBase):
    """A sink from another package: ``factory`` is ``module:callable``, called with
    ``(name, options)`` and returning an object with ``name``, ``deliver`` and ``close``."""

    type: Literal["plugin"]
    factory: str = Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    options: dict[str, Any] = Field(default_factory=dict)


class ExtensionSinkSettings(_SinkBase):
    """A sink type another package registers as an ``asrd.sinks`` entry point; its own keys go
    in ``options``. Whether such a type is installed is checked when the sinks are built."""

    type: str = Field(pattern=r"^[A-Za-z_][\w.-]*$")
    options: dict[str, Any] = Field(default_factory=dict)


_BUILTIN_SINKS = {"file", "stdout", "webhook", "pulsar", "cos", "plugin"}


def _sink_kind(value: Any) -> str:
    kind = value.get("type") if isinstance(value, dict) else getattr(value, "type", None)
    return kind if kind in _BUILTIN_SINKS else "extension"


SinkSettings = Annotated[
    Annotated[FileSinkSettings, Tag("file")]
    | Annotated[StdoutSinkSettings, Tag("stdout")]
    | Annotated[WebhookSinkSettings, Tag("webhook")]
    | Annotated[PulsarSinkSettings, Tag("pulsar")]
    | Annotated[CosSinkSettings, Tag("cos")]
    | Annotated[PluginSinkSettings, Tag("plugin")]
    | Annotated[ExtensionSinkSettings, Tag("extension")],
    Discriminator(_sink_kind),
]


_S = TypeVar("_S", bound=_Section)


class Settings(_Section):
    # Each command asks for the sections it uses: ``settings.ci`` and ``settings.pulsar`` name
    # a missing one then (``asrd submit`` needs no [pulsar], ``asrd dlq`` no [ci]).
    ci_section: CiSettings | None = Field(default=None, alias="ci")
    pulsar_section: PulsarSettings | None = Field(default=None, alias="pulsar")
    ledger: LedgerSettings = LedgerSettings()
    http: HttpSettings = HttpSettings()
    log: LogSettings = LogSettings()
    reconcile: ReconcileSettings = ReconcileSettings()
    submit: SubmitSettings = SubmitSettings()
    dlq: DlqSettings = DlqSettings()
    usage: UsageSettings = UsageSettings()
    intake: IntakeSettings = IntakeSettings()
    canary: CanarySettings = CanarySettings()
    # Only the commands that deliver (run, reconcile) need a sink; build_routes says so.
    sinks: list[SinkSettings] = Field(default_factory=list)

    _source: str = PrivateAttr(default="")  # the file, for the message about a missing section

    @property
    def ci(self) -> CiSettings:
        return self._required(self.ci_section, "ci")

    @property
    def pulsar(self) -> PulsarSettings:
        return self._required(self.pulsar_section, "pulsar")

    def _required(self, section: _S | None, name: str) -> _S:
        if section is None:
            where = f"{self._source}: " if self._source else ""
            raise ConfigError(f"config error: {where}{name}: no [{name}] section; this needs one")
        return section

    @model_validator(mode="before")
    @classmethod
    def _ledger_section(cls, data: Any) -> Any:
        # An absent [ledger] still goes through its validator ($STATE_DIRECTORY default).
        if isinstance(data, dict) and "ledger" not in data:
            data = {**data, "ledger": {}}
        return data

    @model_validator(mode="after")
    def _intake_credentials(self) -> Settings:
        cmq = self.intake.cmq
        if cmq is None or (cmq.secret_id is not None and cmq.secret_key is not None):
            return self
        if self.ci_section is None:  # a command without [ci] (asrd dlq) runs no intake
            return self
        # Frozen sections: fill the defaults from [ci] into a copy.
        filled = cmq.model_copy(
            update={
                "secret_id": cmq.secret_id or self.ci.secret_id,
                "secret_key": cmq.secret_key or self.ci.secret_key,
                "token": cmq.token if cmq.secret_id else (cmq.token or self.ci.token),
            }
        )
        intake = self.intake.model_copy(update={"cmq": filled})
        object.__setattr__(self, "intake", intake)
        return self

    @model_validator(mode="after")
    def _url_receiver_needs_listener(self) -> Settings:
        if self.intake.url is not None and not self.http.listen:
            raise ValueError(
                "intake.url needs [http] listen (the callback endpoint is served there)"
            )
        return self

    @model_validator(mode="after")
    def _callback_reaches_intake(self) -> Settings:
        if self.ci_section is None:  # a command without [ci] submits nothing, so sets no target
            return self
        problem = callback_mismatch(self.ci_section.callback, self.intake)
        if problem:
            raise ValueError(problem)
        return self

    @model_validator(mode="after")
    def _unique_sink_names(self) -> Settings:
        names = [s.name for s in self.sinks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"sink names must be unique, repeated: {', '.join(dupes)}")
        return self


CALLBACK_PATH = re.compile(r"/v1/callbacks/(?P<token>[^/?#]+)$")


def callback_mismatch(cb: CallbackSettings, intake: IntakeSettings) -> str:
    """Why the callback target CI is given is not what this configuration's intake reads ("" when
    it is, or when there is nothing to compare): otherwise callbacks are lost silently and only
    the reconciler delivers, minutes later. Secrets are named, never printed."""
    cmq = intake.cmq
    if cb.type == "tdmq" and cmq is not None:
        region = cmq.queue_region
        if region and region != cb.mq_region:
            where = "intake.cmq.region" if cmq.region else "intake.cmq.endpoint"
            shown = cmq.region if cmq.region else cmq.endpoint
            return (
                f"ci.callback.mq_region = {cb.mq_region!r} but {where} = {shown!r} "
                f"reads region {region!r}: CI would notify a queue the intake never polls"
            )
        if cb.mq_mode == "Queue" and cb.mq_name != cmq.queue:
            return (
                f"ci.callback.mq_name = {cb.mq_name!r} but intake.cmq.queue = {cmq.queue!r}: "
                "CI would notify a queue the intake never polls"
            )
    if cb.type == "url" and intake.url is not None:
        path = urlsplit(cb.url).path
        m = CALLBACK_PATH.search(path)
        token = intake.url.token.get_secret_value() if intake.url.token is not None else ""
        if m is None:
            return (
                f"ci.callback.url = {cb.url!r} is not an intake.url endpoint "
                "(…/v1/callbacks/<intake.url.token>)"
            )
        if not hmac.compare_digest(m["token"].encode(), token.encode()):
            shown = cb.url.replace(m["token"], "<token>")
            return (
                f"ci.callback.url = {shown!r} carries a token other than intake.url.token: "
                "the receiver would answer CI 404"
            )
    return ""


def _env_value(raw: str) -> Any:
    # Lists and tables can be given as JSON (ASRD_SINKS__0__FORMATS='["json","txt"]').
    if raw[:1] in "[{":
        try:
            return json.loads(raw)
        except ValueError:
            return raw
    return raw


def _set_path(tree: dict[str, Any], path: list[str], value: Any, var: str) -> None:
    node: Any = tree
    for i, part in enumerate(path[:-1]):
        nxt = path[i + 1]
        if isinstance(node, list):
            index = int(part)
            while len(node) <= index:
                node.append({})
            node = node[index]
            continue
        if part not in node or not isinstance(node[part], dict | list):
            node[part] = [] if nxt.isdigit() else {}
        node = node[part]
    last = path[-1]
    if isinstance(node, list):
        if not last.isdigit():
            raise ConfigError(f"config error: {var}: expected a list index after {path[-2]}")
        while len(node) <= int(last):
            node.append({})
        node[int(last)] = value
    else:
        node[last] = value


def apply_env(tree: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Overlay ``ASRD_A__B__C=value`` onto ``tree["a"]["b"]["c"]``; sinks by index."""
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or "__" not in var:
            continue
        path = [p.lower() for p in var[len(ENV_PREFIX) :].split("__")]
        if any(not p for p in path):
            raise ConfigError(f"config error: {var}: empty path segment")
        _set_path(tree, path, _env_value(environ[var]), var)
    return tree


def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"] if not str(p).startswith("function-"))
    # Discriminated unions put the tag in the location (sinks.0.file.dir); keep it readable.
    loc = re.sub(r"\.(file|stdout|webhook|pulsar|cos|plugin|extension)\.", ".", loc)
    extra = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    msg = first["msg"].removeprefix("Value error, ")
    # A check across sections names its keys in the message itself.
    where = f"{loc}: " if loc else ""
    return f"config error: {source}: {where}{msg}{extra}"


def load(path: Path, environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``path``, apply the environment, validate. Raises ``ConfigError``."""
    env = os.environ if environ is None else environ
    try:
        tree = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"config error: {path}: cannot read: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config error: {path}: not valid TOML: {exc}") from None
    tree = apply_env(tree, env)
    try:
        context = {
            "CREDENTIALS_DIRECTORY": env.get("CREDENTIALS_DIRECTORY"),
            "STATE_DIRECTORY": env.get("STATE_DIRECTORY"),
        }
        settings = Settings.model_validate(tree, context=context)
    except ValidationError as exc:
        raise ConfigError(_format_error(str(path), exc)) from None
    settings._source = str(path)
    return settings
