"""Pure logic of the broker module: which topic a message came from (partitions of a
partitioned topic), and the token file read again when it changes."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from asrd import broker, config
from asrd.config import ConfigError, PulsarSettings

from .support import EXAMPLE

RETRY = "persistent://tenant/ns/asr-asrd-RETRY"


@dataclass
class Message:
    """The parts of a received pulsar.Message that ``inbound`` reads."""

    topic: str
    id: str
    props: dict[str, str] = field(default_factory=dict)

    def topic_name(self) -> str:
        return self.topic

    def message_id(self) -> str:
        return self.id

    def publish_timestamp(self) -> int:
        return 1_000

    def properties(self) -> dict[str, str]:
        return self.props

    def data(self) -> bytes:
        return b"{}"


@pytest.mark.parametrize(
    ("received", "configured", "same"),
    [
        (RETRY, RETRY, True),
        (f"{RETRY}-partition-3", RETRY, True),
        (f"{RETRY}-partition-12", "tenant/ns/asr-asrd-RETRY", True),
        (f"{RETRY}-partition-0", "asr-asrd-RETRY", True),
        ("persistent://tenant/ns/asr-partition-1", RETRY, False),
        (f"{RETRY}x-partition-1", RETRY, False),
    ],
)
def test_same_topic_ignores_the_partition(received: str, configured: str, same: bool) -> None:
    assert broker.same_topic(received, configured) is same


def test_a_retry_copy_on_any_partition_keeps_the_first_copy_identity() -> None:
    first = broker.inbound(Message("persistent://tenant/ns/asr-partition-2", "(5,1,2,-1)"), RETRY)
    assert first.origin_topic == "persistent://tenant/ns/asr"
    copy_props = broker.letter_properties(first, {})
    for partition in (0, 3):
        copy = broker.inbound(
            Message(f"{RETRY}-partition-{partition}", "(9,9,0,-1)", copy_props), RETRY
        )
        assert copy.key == first.key
    # Anyone can set the properties: on the main topic they are not believed.
    forged = broker.inbound(
        Message("persistent://tenant/ns/asr-partition-1", "(7,0,1,-1)", copy_props), RETRY
    )
    assert forged.key != first.key


def test_token_file_is_read_again_only_when_it_changes(tmp_path: Path) -> None:
    path = tmp_path / "token"
    path.write_text("one\n")
    supply = broker.TokenFile(path, "one")
    assert supply() == "one"
    new = tmp_path / "token.new"
    new.write_text("two\n")
    os.replace(new, path)
    assert supply() == "two"
    path.write_text("")  # a rotation caught half-way: keep the last token
    assert supply() == "two"
    path.unlink()
    assert supply() == "two"
    path.write_text("three")
    assert supply() == "three"


def test_token_file_resolves_in_the_credentials_directory(creds: dict[str, str]) -> None:
    directory = Path(creds["CREDENTIALS_DIRECTORY"])
    (directory / "pulsar_token").write_text("secret-token\n")
    env = {**creds, "ASRD_PULSAR__TOKEN_FILE": "pulsar_token"}
    settings = config.load(EXAMPLE, env).pulsar
    assert settings.token_file == directory / "pulsar_token"
    assert broker.current_token(settings) == "secret-token"
    (directory / "pulsar_token").write_text("rotated\n")
    assert broker.current_token(settings) == "rotated"  # what the next connection presents
    settings = config.load(EXAMPLE, {**env, "ASRD_PULSAR__TOKEN": "given"}).pulsar
    assert settings.token_file is None and broker.current_token(settings) == "given"


def test_an_unreadable_ca_file_is_a_config_error(creds: dict[str, str], tmp_path: Path) -> None:
    env = {**creds, "ASRD_PULSAR__TLS_TRUST_CERTS_FILE": str(tmp_path / "missing.pem")}
    with pytest.raises(ConfigError, match=r"pulsar\.tls_trust_certs_file: cannot read"):
        config.load(EXAMPLE, env)


def test_tls_defaults() -> None:
    settings = PulsarSettings(topic="t")
    assert settings.tls_validate_hostname and not settings.tls_allow_insecure
    assert settings.tls_trust_certs_file is None
