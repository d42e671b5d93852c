"""Configuration: TOML + environment + secret files, and one clear line with exit 78 when wrong."""

from __future__ import annotations

from pathlib import Path

import pytest

from asrd import config

from .support import EXAMPLE, asrd, write_config


def test_example_config_is_valid_and_reads_systemd_credentials(creds: dict[str, str]) -> None:
    settings = config.load(EXAMPLE, creds)
    assert settings.ci.secret_key is not None
    assert settings.ci.secret_key.get_secret_value() == "keyexample"
    assert "keyexample" not in repr(settings)
    assert settings.pulsar.dlq_topic == "persistent://public/default/asr-callbacks-asrd-DLQ"
    assert settings.sinks[0].name == "files"


def test_environment_overrides_nested_keys_and_sinks(creds: dict[str, str]) -> None:
    env = {
        **creds,
        "ASRD_PULSAR__MAX_IN_FLIGHT": "7",
        "ASRD_CI__CALLBACK__FORMAT": "XML",
        "ASRD_SINKS__0__DIR": "/srv/results",
        "ASRD_SINKS__0__FORMATS": '["json", "srt"]',
        "ASRD_CI__SECRET_KEY": "from-env",
    }
    settings = config.load(EXAMPLE, env)
    assert settings.pulsar.max_in_flight == 7
    assert settings.ci.callback.format == "XML"
    assert str(settings.sinks[0].dir) == "/srv/results"  # type: ignore[union-attr]
    assert settings.sinks[0].formats == ["json", "srt"]  # type: ignore[union-attr]
    assert settings.ci.secret_key is not None
    assert settings.ci.secret_key.get_secret_value() == "from-env"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ASRD_PULSAR__MAX_IN_FLIGHT": "lots"}, "pulsar.max_in_flight"),
        ({"ASRD_CI__BUCKET": "no_appid"}, "ci.bucket"),
        ({"ASRD_CI__CALLBACK__MQ_REGION": "mars"}, "ci.callback.mq_region"),
        ({"ASRD_SINKS__0__TYPE": "carrier-pigeon"}, "sinks.0"),
        ({"ASRD_CI__ENDPOINT": "ftp://x"}, "ci.endpoint"),
        ({"ASRD_CI__SECRET_KEY_FILE": "/nonexistent/key"}, "ci"),
    ],
)
def test_bad_values_name_the_key(creds: dict[str, str], env: dict[str, str], expected: str) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.load(EXAMPLE, {**creds, **env})
    line = str(err.value)
    assert "\n" not in line
    assert f": {expected}" in line
    assert str(EXAMPLE) in line


def test_unknown_key_is_refused(tmp_path: Path, creds: dict[str, str]) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(EXAMPLE.read_text().replace("\n[pulsar]", "\n[pulsar]\nmax_inflight = 3"))
    with pytest.raises(config.ConfigError, match=r"pulsar\.max_inflight: Extra inputs"):
        config.load(bad, creds)


def test_cli_exits_78_with_one_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:1", "pulsar://127.0.0.1:6650")
    out = asrd("check", "--config", str(cfg.path), env={"ASRD_PULSAR__CONCURRENCY": "0"})
    assert out.returncode == 78
    assert out.stderr.count("\n") == 1
    assert "pulsar.concurrency" in out.stderr
    missing = asrd("run", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 78
    assert "cannot read" in missing.stderr
    broken = tmp_path / "broken.toml"
    broken.write_text("[ci\n")
    out = asrd("run", "--config", str(broken))
    assert out.returncode == 78 and "not valid TOML" in out.stderr


def test_secrets_never_reach_output(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:1", "pulsar://127.0.0.1:6650")
    out = asrd("check", "--config", str(cfg.path), env={"ASRD_PULSAR__CONCURRENCY": "0"})
    assert "asrdtestsecretkey" not in out.stderr + out.stdout


def test_intake_defaults_to_the_ci_key_and_has_its_own(creds: dict[str, str]) -> None:
    settings = config.load(EXAMPLE, creds)
    cmq = settings.intake.cmq
    assert cmq is not None and cmq.queue == "asr-callbacks"
    assert cmq.secret_key is not None and cmq.secret_key.get_secret_value() == "keyexample"
    own = config.load(
        EXAMPLE,
        {**creds, "ASRD_INTAKE__CMQ__SECRET_ID": "AKIDcmq", "ASRD_INTAKE__CMQ__SECRET_KEY": "k2"},
    ).intake.cmq
    assert own is not None and own.secret_key is not None
    assert own.secret_key.get_secret_value() == "k2"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ASRD_CI__CALLBACK__MQ_NAME": "asr_callbacks"}, "ci.callback.mq_name"),
        ({"ASRD_CI__CALLBACK__MQ_NAME": "9asr"}, "ci.callback.mq_name"),
        ({"ASRD_CI__CALLBACK__TYPE": "url"}, "ci.callback: url is required"),
        ({"ASRD_INTAKE__CMQ__QUEUE": "a" * 65}, "intake.cmq.queue"),
        ({"ASRD_INTAKE__CMQ__POLLING_WAIT_S": "31"}, "intake.cmq.polling_wait_s"),
        ({"ASRD_INTAKE__CMQ__BATCH_SIZE": "17"}, "intake.cmq.batch_size"),
        ({"ASRD_INTAKE__CMQ__ENDPOINT": "gz.mqadapter"}, "intake.cmq.endpoint"),
        ({"ASRD_INTAKE__URL__TOKEN": "short"}, "intake.url: token"),
    ],
)
def test_callback_and_intake_values_name_the_key(
    creds: dict[str, str], env: dict[str, str], expected: str
) -> None:
    with pytest.raises(config.ConfigError) as err:
        config.load(EXAMPLE, {**creds, **env})
    assert f": {expected}" in str(err.value) and "\n" not in str(err.value)


def test_submit_refuses_a_bad_queue_name_with_78(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:1", "pulsar://127.0.0.1:6650")
    out = asrd(
        "submit", "--config", str(cfg.path), "--input", "a.mp3",
        env={"ASRD_CI__CALLBACK__MQ_NAME": "asr.callbacks"},
    )  # fmt: skip
    assert out.returncode == 78
    assert out.stderr.count("\n") == 1 and "ci.callback.mq_name" in out.stderr


def test_a_postgresql_ledger_url_with_its_password_from_a_credential(
    creds: dict[str, str], tmp_path: Path
) -> None:
    (tmp_path / "ledger_password").write_text("pg-secret\n")
    env = {
        **creds,
        "STATE_DIRECTORY": "/var/lib/asrd-test",
        "ASRD_LEDGER__URL": "postgresql://asrd@db.internal:5432/asrd",
        "ASRD_LEDGER__PASSWORD_FILE": "ledger_password",
    }
    settings = config.load(EXAMPLE, env)
    assert settings.ledger.url == "postgresql://asrd@db.internal:5432/asrd"  # not a state path
    assert not settings.ledger.is_sqlite
    assert settings.ledger.password is not None
    assert settings.ledger.password.get_secret_value() == "pg-secret"
    assert "pg-secret" not in repr(settings)
    with pytest.raises(config.ConfigError, match=r"ledger\.url"):
        config.load(EXAMPLE, {**creds, "ASRD_LEDGER__URL": "mysql://db/asrd"})
