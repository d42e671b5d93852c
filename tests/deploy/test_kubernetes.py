"""deploy/kubernetes/ and compose.yaml: valid against the Kubernetes schemas (kubernetes-validate,
strict: unknown fields fail) and consistent with the image and asrd's own config loader."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from asrd import config

from ..support import ROOT

MANIFESTS = sorted((ROOT / "deploy" / "kubernetes").glob("*.yaml"))
# The oldest Kubernetes still commonly run, and the newest the validator knows.
VERSIONS = ["1.29.0", kubernetes_validate.utils.latest_version()]


def _docs() -> list[dict[str, Any]]:
    return [d for path in MANIFESTS for d in yaml.safe_load_all(path.read_text()) if d]


def _kind(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in _docs() if d["kind"] == kind]
    return doc


def _dockerfile() -> str:
    return (ROOT / "Dockerfile").read_text()


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_kubernetes(path: Path, version: str) -> None:
    for doc in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(doc, version, strict=True)


def test_the_validator_rejects_what_kubernetes_would() -> None:
    deployment = _kind("Deployment")
    deployment["spec"]["template"]["spec"]["containers"][1]["securityContext"]["runAsNonroot"] = (
        True
    )
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, VERSIONS[-1], strict=True)


def test_sidecar_matches_the_image_and_the_config(tmp_path: Path) -> None:
    pod = _kind("Deployment")["spec"]["template"]["spec"]
    app, asrd = pod["containers"]
    volumes = {v["name"]: v for v in pod["volumes"]}

    # asrd's config, loaded by asrd itself with the Secret's files as credentials.
    for name in ("secret_id", "secret_key", "pulsar_token", "http_token"):
        (tmp_path / name).write_text("x")
    (tmp_path / "asrd.toml").write_text(_kind("ConfigMap")["data"]["asrd.toml"])
    settings = config.load(tmp_path / "asrd.toml", {"CREDENTIALS_DIRECTORY": str(tmp_path)})

    assert pod["terminationGracePeriodSeconds"] > settings.pulsar.shutdown_deadline_s
    port = int(settings.http.listen.rsplit(":", 1)[1])
    assert asrd["ports"][0]["containerPort"] == port
    assert asrd["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert asrd["readinessProbe"]["httpGet"]["path"] == "/readyz"

    # Results: asrd's file sink dir is an emptyDir the app mounts too; files readable by it.
    mounts = {m["mountPath"]: m["name"] for m in asrd["volumeMounts"]}
    (sink,) = [s for s in settings.sinks if s.type == "file"]
    results = mounts[str(sink.dir)]
    assert "emptyDir" in volumes[results]
    assert results in {m["name"] for m in app["volumeMounts"]}
    assert sink.file_mode & 0o004

    # Secrets: a Secret volume where the image's CREDENTIALS_DIRECTORY points.
    creds = re.search(r"CREDENTIALS_DIRECTORY=(\S+)", _dockerfile())
    assert creds and "secret" in volumes[mounts[creds.group(1)]]
    assert volumes[mounts["/etc/asrd/asrd.toml"]]["configMap"]["name"] == "asrd-config"
    assert mounts["/var/lib/asrd"] == "state" and settings.ledger.path.parent == Path(
        "/var/lib/asrd"
    )

    # Non-root as the image's numeric USER, read-only root, no capabilities.
    user = re.search(r"^USER (\d+):(\d+)$", _dockerfile(), re.M)
    assert user
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == int(user.group(1))
    for c in (app, asrd):
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"]["drop"] == ["ALL"]


def test_compose_file() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    asrd = compose["services"]["asrd"]
    example = tomllib.loads((ROOT / "config" / "asrd.example.toml").read_text())
    grace = int(asrd["stop_grace_period"].removesuffix("s"))
    assert grace > example["pulsar"]["shutdown_deadline_s"]
    assert asrd["read_only"] is True and asrd["cap_drop"] == ["ALL"]
    assert "./secrets:/run/secrets:ro" in asrd["volumes"]
    state = [v for v in asrd["volumes"] if v.endswith(":/var/lib/asrd")]
    assert state, asrd["volumes"]


def test_tencent_keys_come_from_pod_identity_not_a_secret(tmp_path: Path) -> None:
    """TKE pod identity: the pod runs as a ServiceAccount annotated with a CAM role, asrd takes
    that role's temporary keys (credentials = "tke-oidc"), and no Tencent key is configured."""
    pod = _kind("Deployment")["spec"]["template"]["spec"]
    account = _kind("ServiceAccount")
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert account["metadata"]["annotations"]["tke.cloud.tencent.com/role-arn"].startswith(
        "qcs::cam::uin/"
    )
    for name in ("pulsar_token", "http_token"):
        (tmp_path / name).write_text("x")
    (tmp_path / "asrd.toml").write_text(_kind("ConfigMap")["data"]["asrd.toml"])
    settings = config.load(tmp_path / "asrd.toml", {"CREDENTIALS_DIRECTORY": str(tmp_path)})
    assert settings.ci.credentials == "tke-oidc"
    assert settings.ci.secret_id is None and settings.ci.secret_key is None
