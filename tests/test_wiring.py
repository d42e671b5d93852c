"""The callback target CI is given must be what the intake reads: a mismatch is a configuration
error (exit 78, one line naming both keys), and ``asrd check`` says what it cannot verify."""

from __future__ import annotations

from pathlib import Path

import pytest

from asrd import config, wiring

from .support import EXAMPLE, asrd, write_config

TOKEN = "t0ken-of-the-receiver-0123456789"


def _load(creds: dict[str, str], **env: str) -> config.Settings:
    return config.load(EXAMPLE, {**creds, **env})


@pytest.mark.parametrize(
    ("env", "names"),
    [
        (
            {"ASRD_CI__CALLBACK__MQ_NAME": "asr-other"},
            ["ci.callback.mq_name = 'asr-other'", "intake.cmq.queue = 'asr-callbacks'"],
        ),
        (
            {"ASRD_CI__CALLBACK__MQ_REGION": "sh"},
            [
                "ci.callback.mq_region = 'sh'",
                "intake.cmq.endpoint = 'http://gz.mqadapter.cmq.tencentyun.com'",
                "region 'gz'",
            ],
        ),
        (
            {
                "ASRD_INTAKE__CMQ__ENDPOINT": "https://cmq-bj.public.tencenttdmq.com",
                "ASRD_CI__CALLBACK__MQ_MODE": "Topic",
                "ASRD_CI__CALLBACK__MQ_NAME": "asr-topic",
            },
            ["ci.callback.mq_region = 'gz'", "cmq-bj.public.tencenttdmq.com", "region 'bj'"],
        ),
        (
            {"ASRD_INTAKE__CMQ__ENDPOINT": "http://10.0.0.7", "ASRD_INTAKE__CMQ__REGION": "hk"},
            ["ci.callback.mq_region = 'gz'", "intake.cmq.region = 'hk'"],
        ),
        (
            {"ASRD_INTAKE__CMQ__REGION": "bj"},
            ["intake.cmq", "region = 'bj'", "is in 'gz'"],
        ),
    ],
)
def test_a_callback_target_the_intake_does_not_read_is_a_config_error(
    creds: dict[str, str], env: dict[str, str], names: list[str]
) -> None:
    with pytest.raises(config.ConfigError) as err:
        _load(creds, **env)
    line = str(err.value)
    assert "\n" not in line and str(EXAMPLE) in line
    for name in names:
        assert name in line


def test_matching_targets_pass(creds: dict[str, str]) -> None:
    assert _load(creds).ci.callback.mq_name == "asr-callbacks"
    # Topic mode: the topic's name differs from the queue's by design; the region still agrees.
    topic = _load(creds, ASRD_CI__CALLBACK__MQ_MODE="Topic", ASRD_CI__CALLBACK__MQ_NAME="asr-t")
    assert topic.ci.callback.mq_mode == "Topic"
    # Legacy host names and an explicit region on an address that names none.
    legacy = _load(creds, ASRD_INTAKE__CMQ__ENDPOINT="https://cmq-queue-gz.api.qcloud.com")
    assert legacy.intake.cmq is not None and legacy.intake.cmq.queue_region == "gz"
    by_ip = _load(
        creds, ASRD_INTAKE__CMQ__ENDPOINT="http://10.0.0.7", ASRD_INTAKE__CMQ__REGION="gz"
    )
    assert by_ip.intake.cmq is not None and by_ip.intake.cmq.queue_region == "gz"
    assert config.endpoint_region("http://127.0.0.1:8000") == ""


def _url_env(url: str) -> dict[str, str]:
    return {
        "ASRD_CI__CALLBACK__TYPE": "url",
        "ASRD_CI__CALLBACK__URL": url,
        "ASRD_INTAKE__URL__TOKEN": TOKEN,
    }


def test_a_url_callback_must_reach_the_url_intake(creds: dict[str, str]) -> None:
    ok = _load(creds, **_url_env(f"https://asrd.example.com/v1/callbacks/{TOKEN}"))
    assert ok.ci.callback.type == "url"
    with pytest.raises(config.ConfigError) as err:
        _load(creds, **_url_env("https://asrd.example.com/v1/callbacks/" + "x" * 32))
    line = str(err.value)
    assert "ci.callback.url = 'https://asrd.example.com/v1/callbacks/<token>'" in line
    assert "intake.url.token" in line and "x" * 32 not in line and TOKEN not in line
    with pytest.raises(config.ConfigError, match=r"ci\.callback\.url = 'https://a\.example/cb'"):
        _load(creds, **_url_env("https://a.example/cb"))


def test_check_notes_what_it_cannot_verify(creds: dict[str, str]) -> None:
    topic = _load(creds, ASRD_CI__CALLBACK__MQ_MODE="Topic", ASRD_CI__CALLBACK__MQ_NAME="asr-t")
    texts = [n.text for n in wiring.notes(topic)]
    assert any("topic 'asr-t' must have a queue subscription" in t for t in texts)
    assert any("intake.cmq.queue = 'asr-callbacks'" in t for t in texts)
    no_region = _load(creds, ASRD_INTAKE__CMQ__ENDPOINT="http://10.0.0.7")
    warned = [n.text for n in wiring.notes(no_region) if n.warning]
    assert any("set intake.cmq.region" in t for t in warned)
    assert not [n for n in wiring.notes(_load(creds)) if n.warning]


def test_check_warns_when_the_reconciler_window_is_shorter_than_the_queue_can_lose(
    creds: dict[str, str],
) -> None:
    short = _load(creds, ASRD_RECONCILE__LOOKBACK_S="3600")
    warned = [n.text for n in wiring.notes(short) if n.warning]
    assert any("reconcile.lookback_s = 3600" in t and "43800" in t for t in warned)
    # A queue that drops undeleted messages after 30 minutes is covered by a one-hour window.
    covered = _load(
        creds, ASRD_RECONCILE__LOOKBACK_S="3600", ASRD_INTAKE__CMQ__MAX_UNACKED_S="1800"
    )
    assert not [n for n in wiring.notes(covered) if n.warning]


def test_cli_refuses_a_mismatch_with_78_and_one_line(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, "http://127.0.0.1:1", "pulsar://127.0.0.1:6650")
    for command in ("check", "run"):
        env = {"ASRD_CI__CALLBACK__MQ_NAME": "elsewhere"}
        out = asrd(command, "--config", str(cfg.path), env=env)
        assert out.returncode == 78, out.stderr
        assert out.stderr.count("\n") == 1
        assert "ci.callback.mq_name = 'elsewhere'" in out.stderr
        assert f"intake.cmq.queue = '{cfg.mq_name}'" in out.stderr
    check = asrd("check", "--config", str(cfg.path), env={"ASRD_RECONCILE__LOOKBACK_S": "600"})
    assert check.returncode == 0, check.stderr
    assert "warning: reconcile.lookback_s = 600" in check.stdout
    assert f"intake reads queue '{cfg.mq_name}'" in check.stdout
