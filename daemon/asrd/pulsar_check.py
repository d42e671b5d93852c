"""What asrd can tell about its broker before it depends on it, each problem in one line: the
TLS handshake as the client makes it, the topic, and the subscription on the topic and on the
retry-letter topic (TDMQ creates no subscription on its own, and a missing one only shows as a
consumer that never starts).
"""

from __future__ import annotations

import socket
import ssl
import struct

import pulsar
import requests

from .broker import current_token
from .config import ConfigError, PulsarSettings


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc).removeprefix('Pulsar error: ')}"


def subscription_problem(client: pulsar.Client, topic: str, subscription: str) -> str:
    """Why ``subscription`` cannot be opened on ``topic``, or ``""``. Opening it is the only way
    the binary protocol has to ask; the consumer is closed at once (with one message of
    prefetch, which the broker gives to another consumer)."""
    try:
        consumer = client.subscribe(
            topic,
            subscription,
            consumer_type=pulsar.ConsumerType.Shared,
            initial_position=pulsar.InitialPosition.Earliest,
            receiver_queue_size=1,
        )
    except (pulsar.SubscriptionNotFound, pulsar.Timeout) as exc:
        # A partitioned topic's missing subscription is retried by the client until it times out.
        return (
            f"subscription {subscription!r} on {topic} could not be opened ({_short(exc)}): "
            "create it (TDMQ makes none automatically) or check the role's consume permission"
        )
    except pulsar.TopicNotFound:
        return f"topic {topic} does not exist: create it (TDMQ: in the console or its API)"
    except pulsar.AuthorizationError:
        return f"the role may not consume {topic} (AuthorizationError): grant it consume"
    except pulsar.PulsarException as exc:
        return f"cannot subscribe {subscription!r} on {topic}: {_short(exc)}"
    consumer.close()
    return ""


def subscription_problems(settings: PulsarSettings, client: pulsar.Client) -> list[str]:
    """The consumer's subscription on the topic and on the retry-letter topic."""
    found = []
    for topic in (settings.topic, settings.retry_letter_topic):
        problem = subscription_problem(client, topic, settings.subscription)
        if problem:
            found.append(problem)
    return found


# -- why a connection fails --------------------------------------------------------------------
# pulsar-client only says "ConnectError" for a certificate it refuses and times out when the
# broker refuses the token (it drops the broker's answer), so both are asked again here: the TLS
# handshake through Python's ssl with the same settings, then the token: with the protocol's
# CONNECT command, whose answer carries the broker's reason, or, for an HTTP lookup address
# (TDMQ's), with the lookup the client itself would make first. No maintained Python library
# speaks the binary protocol short of the client itself, so the two commands are encoded by hand.

_PROBE_TIMEOUT_S = 10.0
_CONNECT, _CONNECTED, _ERROR = 2, 3, 14  # BaseCommand.Type (PulsarApi.proto)
_SERVER_ERRORS = {3: "AuthenticationError", 4: "AuthorizationError"}  # ServerError


_DEFAULT_PORTS = {"pulsar": 6650, "pulsar+ssl": 6651, "http": 80, "https": 443}
_TLS_SCHEMES = ("pulsar+ssl://", "https://")


def _address(service_url: str) -> tuple[str, int]:
    """The first host of ``scheme://host:port[,host:port...]``."""
    scheme, rest = service_url.split("://", 1)
    rest = rest.split("/", 1)[0].split(",")[0]
    host, _, port = rest.rpartition(":")
    return (host or rest).strip("[]"), int(port) if host else _DEFAULT_PORTS[scheme]


def _ssl_context(settings: PulsarSettings) -> ssl.SSLContext:
    ca = settings.tls_trust_certs_file
    context = ssl.create_default_context(cafile=str(ca) if ca is not None else None)
    if settings.tls_allow_insecure:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif not settings.tls_validate_hostname:
        context.check_hostname = False
    return context


def _open(settings: PulsarSettings) -> socket.socket:
    host, port = _address(settings.service_url)
    sock = socket.create_connection((host, port), timeout=_PROBE_TIMEOUT_S)
    if not settings.service_url.startswith(_TLS_SCHEMES):
        return sock
    try:
        return _ssl_context(settings).wrap_socket(sock, server_hostname=host)
    except BaseException:
        sock.close()
        raise


def tls_problem(settings: PulsarSettings) -> str:
    """Why the broker's certificate is refused with these settings, or ``""`` (also when the
    broker cannot be reached at all: that is an outage, not a configuration error)."""
    if not settings.service_url.startswith(_TLS_SCHEMES) or settings.tls_allow_insecure:
        return ""
    host, port = _address(settings.service_url)
    try:
        _open(settings).close()
    except ssl.SSLCertVerificationError as exc:
        reason = exc.verify_message or str(exc)
        if "mismatch" in reason.lower():
            return (
                f"pulsar.service_url: the broker's certificate at {host}:{port} is not valid for "
                f"the name {host!r} ({reason}); connect by a name the certificate carries"
            )
        ca = settings.tls_trust_certs_file or "the system's CA store"
        return (
            f"pulsar.tls_trust_certs_file: the broker's certificate at {host}:{port} is not "
            f"trusted by {ca} ({reason})"
        )
    except ssl.SSLError as exc:
        return f"pulsar.service_url: TLS with {host}:{port} failed: {exc.reason or exc}"
    except OSError:
        return ""
    return ""


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def _field(number: int, value: int | bytes) -> bytes:
    if isinstance(value, int):
        return _varint(number << 3) + _varint(value)
    return _varint(number << 3 | 2) + _varint(len(value)) + value


def _fields(data: bytes) -> dict[int, int | bytes]:
    """A protobuf message's varint and length-delimited fields (enough for two answers)."""
    found: dict[int, int | bytes] = {}
    i = 0

    def varint() -> int:
        nonlocal i
        value = shift = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        key = varint()
        number, kind = key >> 3, key & 7
        if kind == 0:
            found[number] = varint()
        elif kind == 2:
            size = varint()
            found[number] = data[i : i + size]
            i += size
        else:  # no fixed-width field is needed here; stop rather than misread
            break
    return found


def _connect_command(token: str) -> bytes:
    connect = _field(1, b"asrd-check") + _field(4, 21)  # client_version, protocol_version
    if token:
        connect += _field(5, b"token") + _field(3, token.encode())  # auth method, auth data
    command = _field(1, _CONNECT) + _field(2, connect)
    return struct.pack(">II", len(command) + 4, len(command)) + command


def _read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError("the broker closed the connection without an answer")
        data += chunk
    return data


def _refused(settings: PulsarSettings, token: str, reason: str) -> str:
    where = "pulsar.token_file" if settings.token_file is not None else "pulsar.token"
    if not token:
        return f"{where}: the broker requires a token and none is configured ({reason})"
    return f"{where}: the broker refused the token ({reason})"


def _lookup_path(topic: str) -> str:
    """``persistent/<tenant>/<namespace>/<topic>`` of a full or short topic name."""
    domain, _, name = topic.rpartition("://")
    parts = name.split("/")
    if len(parts) == 1:
        parts = ["public", "default", *parts]
    return "/".join([domain or "persistent", *parts])


def _http_token_problem(settings: PulsarSettings, token: str) -> str:
    """An HTTP(S) lookup address (TDMQ's access address): the lookup of the topic answers 401
    without a body of reasons when the token is refused (with one when only permission is
    missing, which ``asrd check --connect`` names later)."""
    url = f"{settings.service_url.rstrip('/')}/lookup/v2/topic/{_lookup_path(settings.topic)}"
    ca = settings.tls_trust_certs_file
    verify: bool | str = str(ca) if ca is not None else True
    try:
        answer = requests.get(
            url,
            headers={"Authorization": f"Bearer {token}"} if token else {},
            timeout=_PROBE_TIMEOUT_S,
            verify=False if settings.tls_allow_insecure else verify,
        )
    except requests.RequestException:
        return ""  # unreachable, or TLS: tls_problem's business
    if answer.status_code != 401:
        return ""
    try:
        reason = answer.json().get("reason", "")
    except (ValueError, AttributeError):
        reason = ""
    if "unauthorized" in str(reason).lower():
        return ""
    return _refused(settings, token, "HTTP 401 Authentication required")


def token_problem(settings: PulsarSettings, token: str) -> str:
    """The broker's answer to CONNECT with ``token``: ``""`` when accepted (or when it cannot
    be asked: an outage), else its reason in one line."""
    if settings.service_url.startswith(("http://", "https://")):
        return _http_token_problem(settings, token)
    try:
        with _open(settings) as sock:
            sock.sendall(_connect_command(token))
            total = struct.unpack(">I", _read_exact(sock, 4))[0]
            frame = _read_exact(sock, total)
    except (OSError, struct.error):
        return ""
    command = _fields(frame[4 : 4 + struct.unpack(">I", frame[:4])[0]])
    answer = command.get(_ERROR)
    if command.get(1) != _ERROR or not isinstance(answer, bytes):
        return ""
    error = _fields(answer)
    code = error.get(2, 0)
    message = error.get(3, b"")
    text = message.decode("utf-8", "replace") if isinstance(message, bytes) else ""
    name = _SERVER_ERRORS.get(code, f"error {code!r}") if isinstance(code, int) else "error"
    return _refused(settings, token, f"{name}: {text}")


def connection_problem(settings: PulsarSettings, token: str) -> str:
    """The first configuration problem of the connection: certificate, then token; or ``""``."""
    return tls_problem(settings) or token_problem(settings, token)


def preflight(settings: PulsarSettings) -> None:
    """At start-up and in ``asrd check --connect``: a certificate or token the broker refuses is
    a configuration error (one line, exit 78); a broker that cannot be reached is not."""
    problem = connection_problem(settings, current_token(settings))
    if problem:
        raise ConfigError(f"config error: {problem}")


def warnings(settings: PulsarSettings) -> list[str]:
    """What start-up says about settings that work but should not stay."""
    if settings.tls_allow_insecure:
        return [
            "pulsar.tls_allow_insecure is true: the broker's certificate is not checked, so "
            "anyone on the path can read and change messages and the token"
        ]
    return []
