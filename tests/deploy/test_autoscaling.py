"""deploy/kubernetes/fleet/: the fleet's Deployment, its KEDA ScaledObject and
TriggerAuthentication, and the HorizontalPodAutoscaler alternative.

Kubernetes' own kinds go through kubernetes-validate (strict); KEDA's custom resources through
the openAPIV3Schema of KEDA's CRDs (kept in deploy/kubernetes/crds/), made strict the way the
API server's field validation is (an unknown field fails unless the schema preserves unknown
fields). The metric names the autoscalers ask for are checked against what asrd exports."""

from __future__ import annotations

import copy
import re
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from asrd import config
from asrd.jobs import job_gauges
from asrd.leadership import CHORES, Leadership
from asrd.ledger import open_ledger
from asrd.metrics import Metrics

from ..support import ROOT

FLEET = ROOT / "deploy" / "kubernetes" / "fleet"
CRDS = sorted((ROOT / "deploy" / "kubernetes" / "crds").glob("keda-*/*.yaml"))
VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]
SECRETS = ("secret_id", "secret_key", "pulsar_token", "http_token", "ledger_password")


def _docs() -> list[dict[str, Any]]:
    return [
        d for path in sorted(FLEET.glob("*.yaml")) for d in yaml.safe_load_all(path.read_text())
    ]


def _kind(kind: str, api: str = "") -> dict[str, Any]:
    (doc,) = [d for d in _docs() if d["kind"] == kind and d["apiVersion"].startswith(api)]
    return doc


def _strict(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` with unknown fields refused wherever the API server would refuse them."""
    schema = dict(schema)
    props = schema.get("properties")
    if isinstance(props, dict):
        schema["properties"] = {k: _strict(v) for k, v in props.items()}
        if "additionalProperties" not in schema and not schema.get(
            "x-kubernetes-preserve-unknown-fields"
        ):
            schema["additionalProperties"] = False
    if isinstance(schema.get("items"), dict):
        schema["items"] = _strict(schema["items"])
    if isinstance(schema.get("additionalProperties"), dict):
        schema["additionalProperties"] = _strict(schema["additionalProperties"])
    return schema


def _crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) → the strict schema of every served version of KEDA's CRDs."""
    found = {}
    for path in CRDS:
        crd = yaml.safe_load(path.read_text())
        group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
        for version in crd["spec"]["versions"]:
            if version["served"]:
                schema = _strict(version["schema"]["openAPIV3Schema"])
                # metadata is the API server's (ObjectMeta), not the CRD's to describe.
                schema["properties"]["metadata"] = {"type": "object"}
                found[(f"{group}/{version['name']}", kind)] = schema
    return found


def _check_custom(doc: dict[str, Any]) -> None:
    schema = _crd_schemas()[(doc["apiVersion"], doc["kind"])]
    jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)


def test_keda_crds_are_in_the_repository() -> None:
    assert {p.name for p in CRDS} == {
        "keda.sh_scaledobjects.yaml",
        "keda.sh_triggerauthentications.yaml",
    }
    assert "https://github.com/kedacore/keda" in (CRDS[0].parent.parent / "README.md").read_text()


@pytest.mark.parametrize("version", VERSIONS)
def test_kubernetes_kinds_are_valid(version: str) -> None:
    docs = [d for d in _docs() if not d["apiVersion"].startswith("keda.sh/")]
    assert {d["kind"] for d in docs} == {"ConfigMap", "Deployment", "HorizontalPodAutoscaler"}
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_keda_resources_are_valid_against_the_crds() -> None:
    docs = [d for d in _docs() if d["apiVersion"].startswith("keda.sh/")]
    assert sorted(d["kind"] for d in docs) == ["ScaledObject", "TriggerAuthentication"]
    for doc in docs:
        _check_custom(doc)


@pytest.mark.parametrize(
    ("path", "value"),
    [
        (("spec", "minReplicaCount"), "one"),  # a wrong type
        (("spec", "triggers", 0, "metadata", "threshold"), 200),  # metadata values are strings
        (("spec", "scaleTargetRef", "nmae"), "asrd-fleet"),  # an unknown field
        (("spec", "advanced", "horizontalPodAutoscalerConfig", "behaviour"), {}),
    ],
)
def test_the_crd_check_refuses_what_the_api_server_would(
    path: tuple[str | int, ...], value: object
) -> None:
    doc = copy.deepcopy(_kind("ScaledObject"))
    node: Any = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        _check_custom(doc)


def _exported(tmp_path: Path) -> set[str]:
    """Every metric family asrd's /metrics shows (ledger gauges and leadership included)."""
    from prometheus_client.parser import text_string_to_metric_families

    ledger = open_ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    try:
        metrics = Metrics(ready=lambda: True)
        metrics.gauges = lambda: job_gauges(ledger)
        metrics.leader = Leadership(CHORES, None, candidate=True).gauges
        text = metrics.exposition().decode()
    finally:
        ledger.close()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_the_metrics_the_autoscalers_ask_for_are_exported(tmp_path: Path) -> None:
    queries = [
        t["metadata"]["query"] for t in _kind("ScaledObject")["spec"]["triggers"]
        if t["type"] == "prometheus"
    ]  # fmt: skip
    asked = {name for q in queries for name in re.findall(r"\b(asrd_[a-z_]+)", q)}
    external = {
        m["external"]["metric"]["name"] for m in _kind("HorizontalPodAutoscaler")["spec"]["metrics"]
    }
    assert asked == external == {"asrd_deliveries_pending", "asrd_jobs_owed"}
    exported = _exported(tmp_path)
    assert asked <= exported, asked - exported
    assert "asrd_leader" in exported


def test_scaling_matches_the_fleet(tmp_path: Path) -> None:
    deployment = _kind("Deployment")
    scaled, auth = _kind("ScaledObject"), _kind("TriggerAuthentication")
    hpa = _kind("HorizontalPodAutoscaler")
    name = deployment["metadata"]["name"]
    assert scaled["spec"]["scaleTargetRef"]["name"] == hpa["spec"]["scaleTargetRef"]["name"] == name
    assert scaled["spec"]["minReplicaCount"] >= 1 and hpa["spec"]["minReplicas"] >= 1
    assert scaled["spec"]["maxReplicaCount"] == hpa["spec"]["maxReplicas"]

    # The fleet's config, loaded by asrd itself: a shared PostgreSQL ledger, one subscription.
    for secret in SECRETS:
        (tmp_path / secret).write_text("x")
    (tmp_path / "asrd.toml").write_text(_kind("ConfigMap")["data"]["asrd.toml"])
    settings = config.load(tmp_path / "asrd.toml", {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert not settings.ledger.is_sqlite
    assert settings.ci.max_requests_per_s > 0  # the quota each replica may use

    # The Pulsar trigger watches the subscription asrd consumes, with asrd's own token.
    (pulsar,) = [t for t in scaled["spec"]["triggers"] if t["type"] == "pulsar"]
    assert pulsar["metadata"]["topic"] == settings.pulsar.topic
    assert pulsar["metadata"]["subscription"] == settings.pulsar.subscription
    assert pulsar["metadata"]["authModes"] == "bearer"
    assert pulsar["authenticationRef"]["name"] == auth["metadata"]["name"]
    (ref,) = auth["spec"]["secretTargetRef"]
    assert ref["parameter"] == "bearerToken"
    volumes = deployment["spec"]["template"]["spec"]["volumes"]
    (secret_volume,) = [v for v in volumes if "secret" in v]
    assert ref["name"] == secret_volume["secret"]["secretName"]
    assert ref["key"] == str(
        tomllib.loads(_kind("ConfigMap")["data"]["asrd.toml"])["pulsar"]["token_file"]
    )

    # Prometheus finds the replicas where asrd serves /metrics.
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == int(settings.http.listen.rsplit(":", 1)[1])
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] > (
        settings.pulsar.shutdown_deadline_s
    )
