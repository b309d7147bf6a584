"""The Kubernetes manifests render offline (`kubectl kustomize`) and validate against the Kubernetes schemas
bundled with kubernetes-validate; what they must hold for a multi-node deployment is checked on the result.
The operators' resources (CloudNativePG, MinIO) have no bundled schema: their fields are checked here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.settings import Settings

ROOT = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.32.0"
CUSTOM_KINDS = {
    ("postgresql.cnpg.io/v1", "Cluster"),
    ("postgresql.cnpg.io/v1", "ScheduledBackup"),
    ("minio.min.io/v2", "Tenant"),
}


def render(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the manifests cannot be rendered here")
    out = subprocess.run([kubectl, "kustomize", str(directory)], check=True, capture_output=True, text=True).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


@pytest.fixture(scope="module")
def resources() -> dict[tuple[str, str], dict[str, Any]]:
    docs = render(ROOT) + render(ROOT / "migrate")
    return {(doc["kind"], doc["metadata"]["name"]): doc for doc in docs}


def test_every_resource_validates_against_the_kubernetes_schemas(resources: dict[tuple[str, str], Any]) -> None:
    for doc in resources.values():
        if (doc["apiVersion"], doc["kind"]) in CUSTOM_KINDS:
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)  # raises on the first error


def test_the_database_is_a_three_instance_synchronous_cluster(resources: dict[tuple[str, str], Any]) -> None:
    cluster = resources[("Cluster", "corpora-db")]["spec"]
    assert cluster["instances"] == 3
    assert cluster["postgresql"]["synchronous"]["number"] >= 1
    assert cluster["postgresql"]["synchronous"]["dataDurability"] == "required"
    assert cluster["affinity"]["podAntiAffinityType"] == "required"
    assert cluster["backup"]["barmanObjectStore"]["destinationPath"].startswith("s3://")
    assert ("ScheduledBackup", "corpora-db-daily") in resources


def test_the_object_store_is_erasure_coded_over_several_servers(resources: dict[tuple[str, str], Any]) -> None:
    tenant = resources[("Tenant", "corpora-store")]["spec"]
    pool = tenant["pools"][0]
    assert pool["servers"] >= 4
    assert pool["servers"] * pool["volumesPerServer"] >= 4  # MinIO erasure coding needs four drives or more
    assert {"name": "corpora", "objectLock": True} in tenant["buckets"]


def _pod(deployment: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = deployment["spec"]["template"]["spec"]
    return pod


@pytest.mark.parametrize("name", ["corpora", "corpora-worker"])
def test_api_and_workers_scale_survive_drains_and_run_locked_down(
    resources: dict[tuple[str, str], Any], name: str
) -> None:
    deployment = resources[("Deployment", name)]
    assert "replicas" not in deployment["spec"]  # the autoscaler owns it
    hpa = resources[("HorizontalPodAutoscaler", name)]["spec"]
    assert hpa["scaleTargetRef"]["name"] == name
    assert hpa["minReplicas"] >= 2
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert resources[("PodDisruptionBudget", name)]["spec"]["selector"]["matchLabels"] == selector
    pod = _pod(deployment)
    assert pod["securityContext"]["runAsNonRoot"] is True
    # migrations run before the service's container starts
    assert [c["args"] for c in pod["initContainers"]] == [["corpora", "migrate"]]
    for container in pod["initContainers"] + pod["containers"]:
        assert container["securityContext"]["readOnlyRootFilesystem"] is True
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["resources"]["requests"]
        assert container["resources"]["limits"]
        env = {e["name"]: e.get("value", "") for e in container["env"]}
        assert "@corpora-db-rw:5432/" in env["CORPORA_DATABASE_URL"]


def test_the_api_is_probed_and_runs_no_job_worker(resources: dict[tuple[str, str], Any]) -> None:
    (api,) = _pod(resources[("Deployment", "corpora")])["containers"]
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["args"] == ["corpora", "serve", "--job-concurrency", "0"]
    (worker,) = _pod(resources[("Deployment", "corpora-worker")])["containers"]
    assert worker["args"][:2] == ["corpora", "worker"]


def test_the_api_reaches_only_the_database_the_object_store_dns_and_public_webhooks(
    resources: dict[tuple[str, str], Any],
) -> None:
    for name in ("corpora-api", "corpora-worker"):
        policy = resources[("NetworkPolicy", name)]["spec"]
        assert set(policy["policyTypes"]) == {"Ingress", "Egress"}
        peers = [peer for rule in policy["egress"] for peer in rule["to"]]
        pods = [p["podSelector"]["matchLabels"] for p in peers if "podSelector" in p and "namespaceSelector" not in p]
        assert pods == [{"cnpg.io/cluster": "corpora-db"}, {"v1.min.io/tenant": "corpora-store"}]
        (public,) = [p["ipBlock"] for p in peers if "ipBlock" in p]
        assert public["cidr"] == "0.0.0.0/0"
        assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"} <= set(public["except"])
    assert resources[("NetworkPolicy", "corpora-worker")]["spec"]["ingress"] == []


def test_the_ingress_limits_match_the_service(resources: dict[tuple[str, str], Any]) -> None:
    annotations = resources[("Ingress", "corpora")]["metadata"]["annotations"]
    size = annotations["nginx.ingress.kubernetes.io/proxy-body-size"]
    assert size.endswith("m")
    assert int(size[:-1]) * 1024 * 1024 == Settings().max_body_bytes
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= Settings().s3_stream_timeout_seconds
