"""Prometheus metrics: the observer on its own, then /metrics after a real end-to-end run, and the
Grafana dashboard against the names the daemon really exposes."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pulsar
import requests
from prometheus_client.parser import text_string_to_metric_families

from asrd.metrics import Metrics
from asrd.observers import MessageInfo
from asrd.pipeline import Outcome, Verdict
from asrd.settle import Action, Settlement

from .conftest import Broker
from .support import (
    ROOT,
    Emulator,
    create_jobs,
    free_port,
    start_daemon,
    stop_daemon,
    wait_for,
)
from .support import write_config as daemon_config

DASHBOARD = ROOT / "deploy" / "grafana" / "asrd-dashboard.json"
FAMILIES = {
    "asrd_messages": "counter",
    "asrd_deliveries": "counter",
    "asrd_delivery_latency_seconds": "histogram",
    "asrd_ci_requests": "counter",
    "asrd_ci_request_duration_seconds": "histogram",
    "asrd_in_flight": "gauge",
    "asrd_ready": "gauge",
    "asrd_workers_ready": "gauge",
    "asrd_dead_letters": "counter",
    "asrd_reconciled_jobs": "counter",
    "asrd_intake_messages_moved": "counter",
    "asrd_intake_receive_errors": "counter",
    "asrd_intake_seconds_since_last_poll": "gauge",
    "process_cpu_seconds": "counter",
    "process_resident_memory_bytes": "gauge",
    "python_info": "gauge",
    "python_gc_collections": "counter",
}


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample as (name, labels) → value; raises if the text does not parse."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(
    found: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str
) -> float:
    return found[(name, frozenset(labels.items()))]


def test_hooks_feed_the_families() -> None:
    ready = [False]
    m = Metrics(ready=lambda: ready[0])
    info = MessageInfo("1:2:3", 1, int(time.time() * 1000) - 2500)
    m.message_received(info)
    m.ci_call("get_jobs", "ok", 0.02)
    m.sink_delivered("files", "s1", 0.01)
    m.settled(info, Verdict(Outcome.DONE, "", "s1", ("files",)), Settlement(Action.ACK))
    m.message_received(info)
    m.sink_failed("app", "s1", "HTTP 503", permanent=False)
    m.settled(info, Verdict(Outcome.RETRY, "x"), Settlement(Action.RETRY, "x", 1.0))
    m.message_received(info)
    m.dead_lettered(info, "bad")
    m.settled(info, Verdict(Outcome.DEAD, "bad"), Settlement(Action.DEAD_LETTER, "bad"))
    m.message_received(info)
    m.publish_failed(info, Settlement(Action.RETRY, "x", 1.0), "broker gone")
    m.intake_started("q")
    m.intake_moved("q", 3)
    m.intake_receive_error("q", "refused")
    ready[0] = True
    m.publish_ready(True)

    found = samples(m.exposition().decode())
    assert value(found, "asrd_ready") == 1.0
    assert value(found, "asrd_workers_ready") == 1.0
    assert value(found, "asrd_in_flight") == 0.0
    assert value(found, "asrd_messages_total", outcome="done") == 1.0
    assert value(found, "asrd_messages_total", outcome="retried") == 1.0
    assert value(found, "asrd_messages_total", outcome="dead_lettered") == 1.0
    assert value(found, "asrd_messages_total", outcome="kept") == 1.0
    assert value(found, "asrd_messages_total", outcome="ignored") == 0.0
    assert value(found, "asrd_deliveries_total", sink="files", result="delivered") == 1.0
    assert value(found, "asrd_deliveries_total", sink="app", result="failed") == 1.0
    assert value(found, "asrd_dead_letters_total") == 1.0
    # Only the message that reached every sink counts for latency: 2.5 s old.
    assert value(found, "asrd_delivery_latency_seconds_count") == 1.0
    assert 2.4 < value(found, "asrd_delivery_latency_seconds_sum") < 10
    assert value(found, "asrd_delivery_latency_seconds_bucket", le="1.0") == 0.0
    assert value(found, "asrd_delivery_latency_seconds_bucket", le="5.0") == 1.0
    assert value(found, "asrd_ci_requests_total", operation="get_jobs", status="ok") == 1.0
    assert value(found, "asrd_ci_request_duration_seconds_count", operation="get_jobs") == 1.0
    assert value(found, "asrd_intake_messages_moved_total") == 3.0
    assert value(found, "asrd_intake_receive_errors_total") == 1.0
    assert 0 <= value(found, "asrd_intake_seconds_since_last_poll") < 5


def test_two_daemons_keep_their_own_registries() -> None:
    a, b = Metrics(), Metrics()
    a.intake_moved("q", 5)
    assert value(samples(b.exposition().decode()), "asrd_intake_messages_moved_total") == 0.0


def test_metrics_after_an_end_to_end_run(
    tmp_path: Path, broker: Broker, emulator: Emulator
) -> None:
    port = free_port()
    cfg = daemon_config(
        tmp_path, emulator, broker.service_url, extra=f'[http]\nlisten = "127.0.0.1:{port}"\n'
    )
    daemon = start_daemon(cfg, tmp_path / "daemon.log")
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        jobs = create_jobs(cfg, 5)
        wait_for(lambda: all((cfg.results / f"{j}.json").exists() for j in jobs), 60, "5 results")
        client = pulsar.Client(broker.service_url)
        client.create_producer(cfg.topic).send(b"<not a callback")
        client.close()
        wait_for(
            lambda: "asrd_dead_letters_total 1.0" in requests.get(url, timeout=5).text,
            30,
            "a dead letter",
        )
        # Published by the process every half second, from the consumer's own check.
        wait_for(
            lambda: "asrd_workers_ready 1.0" in requests.get(url, timeout=5).text,
            5,
            "asrd_workers_ready 1",
        )
        response = requests.get(url, timeout=5)
        # What Prometheus asks for first: OpenMetrics (with tracing off, no exemplars).
        accept = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"
        om = requests.get(url, headers={"Accept": accept}, timeout=5)
    finally:
        assert stop_daemon(daemon) == 0
    assert om.headers["Content-Type"].startswith("application/openmetrics-text")
    assert om.text.endswith("# EOF\n") and "asrd_delivery_latency_seconds_count 5.0" in om.text
    assert "trace_id" not in om.text
    assert response.headers["Content-Type"].startswith("text/plain")
    text = response.text
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert {name: types.get(name) for name in FAMILIES} == FAMILIES
    found = samples(text)
    assert value(found, "asrd_ready") == 1.0
    assert value(found, "asrd_in_flight") == 0.0
    assert value(found, "asrd_messages_total", outcome="done") >= 5
    assert value(found, "asrd_messages_total", outcome="dead_lettered") == 1.0
    assert value(found, "asrd_dead_letters_total") == 1.0
    assert value(found, "asrd_deliveries_total", sink="files", result="delivered") == 5.0
    assert value(found, "asrd_delivery_latency_seconds_count") == 5.0
    assert 0 < value(found, "asrd_delivery_latency_seconds_sum") < 5 * 60
    assert value(found, "asrd_ci_requests_total", operation="get_jobs", status="ok") >= 1
    assert value(found, "asrd_ci_request_duration_seconds_count", operation="get_jobs") >= 1
    assert value(found, "asrd_reconciled_jobs_total") == 0.0
    assert value(found, "asrd_intake_messages_moved_total") >= 5
    assert 0 <= value(found, "asrd_intake_seconds_since_last_poll") < 30
    assert value(found, "process_resident_memory_bytes") > 10 * 2**20

    # The dashboard draws only what the daemon exposes.
    exposed = {name for name, _ in found}
    exprs = [t["expr"] for p in json.loads(DASHBOARD.read_text())["panels"] for t in p["targets"]]
    referenced = {n for e in exprs for n in re.findall(r"\b(?:asrd|process|python)_\w+", e)}
    assert referenced, "the dashboard references no metric"
    assert referenced <= exposed, sorted(referenced - exposed)
