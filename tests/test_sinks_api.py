"""Extension points: the plugin-facing names, sink types as entry points, and routing."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

import asrd.sinks
from asrd import config
from asrd.ci import CiClient
from asrd.config import ConfigError, ExtensionSinkSettings, Settings, When
from asrd.ledger import SqliteLedger
from asrd.observers import Observer, Observers
from asrd.pipeline import Outcome, Pipeline
from asrd.result import ResultRecord, normalise
from asrd.sinks import build_routes, sink_types
from asrd.sinks.routing import Route, Router, user_data_fields

from .test_callback_and_result import JOB, detail

BASE = """
[ci]
region = "ap-guangzhou"
bucket = "b-1250000000"
secret_id = "id"
secret_key = "key"
endpoint = "http://127.0.0.1:1"
[ci.callback]
mq_name = "q"
[pulsar]
topic = "t"
"""


def settings(tmp_path: Path, sinks: str) -> Settings:
    path = tmp_path / "asrd.toml"
    path.write_text(BASE + sinks)
    return config.load(path, environ={})


def test_plugin_facing_names_are_pinned() -> None:
    assert asrd.sinks.__all__ == [
        "ENTRY_POINT_GROUP",
        "BatchSink",
        "ExtensionSinkSettings",
        "ResultRecord",
        "Segment",
        "Services",
        "Sink",
        "SinkError",
        "SinkFactory",
        "Word",
        "render",
    ]
    for name in asrd.sinks.__all__:
        assert getattr(asrd.sinks, name) is not None
    assert asrd.sinks.ENTRY_POINT_GROUP == "asrd.sinks"
    err = asrd.sinks.SinkError("down", permanent=True)
    assert err.permanent and str(err) == "down"


def test_built_in_sinks_are_entry_points_like_any_other() -> None:
    types = sink_types()
    assert {"file", "stdout", "webhook", "pulsar", "cos", "plugin"} <= set(types)
    assert all(ep.value.startswith("asrd.sinks.") for name, ep in types.items() if name == "file")


def test_a_sink_type_from_another_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An installed distribution as importlib.metadata finds it: a dist-info on sys.path.
    dist = tmp_path / "site" / "asrd_lines-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: asrd-lines\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[asrd.sinks]\nlines = tests.plugin_sink:build\n")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    out = tmp_path / "lines.txt"
    s = settings(
        tmp_path, f'[[sinks]]\nname = "mine"\ntype = "lines"\noptions = {{ path = "{out}" }}\n'
    )
    assert isinstance(s.sinks[0], ExtensionSinkSettings)
    (route,) = build_routes(s)
    route.sink.deliver(normalise(detail(Result="[0:1.000,0:2.000] hi")))
    assert out.read_text() == f"{JOB} Success\n"


def test_a_factory_that_asks_for_services_gets_the_process_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dist = tmp_path / "site" / "asrd_lines-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: asrd-lines\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[asrd.sinks]\nlines = tests.plugin_sink:build_with_services\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    s = settings(
        tmp_path,
        f'[[sinks]]\nname = "mine"\ntype = "lines"\noptions = {{ path = "{tmp_path}/x" }}\n'
        '[[sinks]]\nname = "cos"\ntype = "cos"\n',
    )
    services = asrd.sinks.Services(CiClient(s.ci), Observers())
    lines, cos = (route.sink for route in build_routes(s, services))
    assert getattr(lines, "services", None) is services
    # The COS sink puts through the process's one client (its keys, pool, limiter, metrics).
    assert getattr(cos, "_client", None) is services.ci
    # Built without a process around it, the COS sink still gets a client, from [ci].
    _, alone = (route.sink for route in build_routes(s))
    client = getattr(alone, "_client", None)
    assert isinstance(client, CiClient) and client is not services.ci


def test_an_unknown_sink_type_is_a_config_error(tmp_path: Path) -> None:
    s = settings(tmp_path, '[[sinks]]\nname = "x"\ntype = "nosuch"\n')
    with pytest.raises(ConfigError, match=r"sinks\.0\.type: no sink type 'nosuch' is installed"):
        build_routes(s)


def record(**changes: object) -> ResultRecord:
    return replace(normalise(detail(Result="")), **changes)  # type: ignore[arg-type]


def selects(when: When, rec: ResultRecord) -> bool:
    return Route(None, when).selects(rec)  # type: ignore[arg-type]  # selecting needs no sink


@pytest.mark.parametrize(
    ("when", "changes", "expected"),
    [
        ({}, {}, True),
        ({"state": ["Failed"]}, {}, False),
        ({"queue_id": ["p5275b560c7fd498db9a36e5e202827b6"]}, {}, True),
        ({"queue_id": ["pother"]}, {}, False),
        ({"input_prefix": ["16k"]}, {}, True),
        ({"input_prefix": ["media/", "x/"]}, {}, False),
        ({"input_prefix": ["https://cdn"]}, {"input": {"url": "https://cdn/a.mp3"}}, True),
        ({"user_data": {"tenant": "a"}}, {"user_data": '{"tenant": "a", "n": 1}'}, True),
        ({"user_data": {"tenant": ["a", "b"]}}, {"user_data": "tenant=b&x=1"}, True),
        ({"user_data": {"tenant": "a"}}, {"user_data": "tenant=c"}, False),
        ({"user_data": {"tenant": "a"}}, {"user_data": None}, False),
        ({"user_data": {"n": "1"}}, {"user_data": '{"n": 1}'}, True),
    ],
)
def test_routing(when: dict[str, object], changes: dict[str, object], expected: bool) -> None:
    assert selects(When.model_validate(when), record(**changes)) is expected


def test_user_data_fields() -> None:
    assert user_data_fields('{"a": "x", "b": [1]}') == {"a": "x", "b": "[1]"}
    assert user_data_fields("a=x&b=") == {"a": "x", "b": ""}
    assert user_data_fields("order-1") == {}
    assert user_data_fields("{not json") == {}


class CiCalls(Observer):
    def __init__(self) -> None:
        self.calls: list[str] = []

    def ci_call(self, operation: str, status: str, seconds: float) -> None:
        self.calls.append(operation)


def test_a_duplicate_for_a_job_some_route_skips_does_not_go_back_to_ci(tmp_path: Path) -> None:
    s = settings(
        tmp_path,
        f'[[sinks]]\nname = "ok"\ntype = "file"\ndir = "{tmp_path / "ok"}"\n'
        f'[[sinks]]\nname = "failed-only"\ntype = "file"\ndir = "{tmp_path / "f"}"\n'
        'when = { state = ["Failed"] }\n',
    )
    calls = CiCalls()
    ledger = SqliteLedger(tmp_path / "ledger.db")
    # CI is unreachable: asking it would answer RETRY, not DONE.
    ci = CiClient(s.ci, observers=Observers([calls]))
    pipeline = Pipeline(ci, Router(build_routes(s)), ledger, Observers([calls]))
    first = pipeline.deliver_details({JOB: detail(Result="[0:1.000,0:2.000] hi")})[JOB]
    assert first.outcome is Outcome.DONE and first.delivered == ("ok",)
    assert (tmp_path / "ok" / f"{JOB}.json").exists()
    assert not list((tmp_path / "f").iterdir())
    assert pipeline.complete(JOB)
    again = pipeline.deliver_jobs([JOB])[JOB]
    assert again.outcome is Outcome.DONE and again.reason == "already delivered to every sink"
    assert calls.calls == []
    ledger.close()
