"""The Helm chart, rendered by Helm's own Go library (`helm-python-sdk`), linted, validated against
the Kubernetes OpenAPI schemas (`kubernetes-validate`), and its config loaded by the controller."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import DEPLOY, SECRET, load_with_env, load_yaml

CHART = DEPLOY / "helm/vast-queue-scaler"
CI_VALUES = load_yaml(CHART / "ci/test-values.yaml")
OLDEST_KUBERNETES = "1.25.0"  # Chart.yaml's kubeVersion


def render(values: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """`helm template` of the chart: manifests by kind (each kind appears once)."""
    import helm_python as helm

    with helm.Chart.load(CHART) as chart:
        out = chart.render(CI_VALUES if values is None else values, name="vqs", namespace="scaling")
    manifests = [text for name, text in out.items() if name.endswith(".yaml")]
    docs = [doc for text in manifests for doc in yaml.safe_load_all(text) if doc]
    kinds = {doc["kind"]: doc for doc in docs}
    assert len(kinds) == len(docs), "a kind rendered twice"
    return kinds


def with_values(**changes: Any) -> dict[str, Any]:
    values = copy.deepcopy(CI_VALUES)
    for dotted, value in changes.items():
        *parents, leaf = dotted.split("__")
        target = values
        for key in parents:
            target = target.setdefault(key, {})
        target[leaf] = value
    return values


def pod_spec(kinds: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return kinds["Deployment"]["spec"]["template"]["spec"]


@pytest.mark.parametrize("values", [None, CI_VALUES], ids=["defaults", "ci-values"])
def test_helm_lint_is_clean(values: dict[str, Any] | None) -> None:
    import helm_python as helm

    report = helm.lint(CHART, values, strict=True)
    assert report["errors"] == []
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_manifests_match_the_kubernetes_schemas() -> None:
    import kubernetes_validate
    from kubernetes_validate.utils import latest_version

    kinds = render()
    assert set(kinds) == {"ConfigMap", "Deployment", "Service", "ServiceAccount", "Role", "RoleBinding",
                          "PodDisruptionBudget", "ServiceMonitor"}
    for version in (OLDEST_KUBERNETES, latest_version()):
        for kind, doc in kinds.items():
            if kind != "ServiceMonitor":  # a Prometheus Operator CRD, checked below
                kubernetes_validate.validate(doc, version, strict=True)
    # The validator is strict: a misspelt field fails.
    broken = copy.deepcopy(kinds["Deployment"])
    broken["spec"]["replica"] = broken["spec"].pop("replicas")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, OLDEST_KUBERNETES, strict=True)


def test_service_and_servicemonitor_reach_the_metrics_port() -> None:
    kinds = render()
    service, monitor = kinds["Service"], kinds["ServiceMonitor"]
    pod = kinds["Deployment"]["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    [port] = service["spec"]["ports"]
    container_ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    assert port["port"] == container_ports[port["targetPort"]] == 9464
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert [(e["port"], e["path"]) for e in monitor["spec"]["endpoints"]] == [(port["name"], "/metrics")]
    assert "ServiceMonitor" not in render(with_values(serviceMonitor__enabled=False))


def test_deployment_runs_two_locked_down_replicas() -> None:
    kinds = render()
    deployment = kinds["Deployment"]
    assert deployment["spec"]["replicas"] == 2
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    spec = pod_spec(kinds)
    assert spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] > 0
    [container] = spec["containers"]
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True and security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert {"requests", "limits"} <= set(container["resources"])
    env = {e["name"]: e for e in container["env"]}
    assert env["VAST_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "vast-api-key", "key": "api-key"}
    assert kinds["PodDisruptionBudget"]["spec"]["minAvailable"] == 1
    assert spec["automountServiceAccountToken"] is True


def test_rbac_grants_only_the_lease() -> None:
    kinds = render()
    role, binding = kinds["Role"], kinds["RoleBinding"]
    for rule in role["rules"]:
        assert (rule["apiGroups"], rule["resources"]) == (["coordination.k8s.io"], ["leases"])
        assert set(rule["verbs"]) <= {"create", "get", "update", "patch"}
    named = [rule for rule in role["rules"] if "resourceNames" in rule]
    assert named and all(rule["resourceNames"] == ["vqs-vast-queue-scaler"] for rule in named)
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": pod_spec(kinds)["serviceAccountName"],
                                    "namespace": "scaling"}]
    renamed = render(with_values(leaderElection__leaseName="scaler-lock"))["Role"]
    assert [r["resourceNames"] for r in renamed["rules"] if "resourceNames" in r] == [["scaler-lock"]]


def test_the_controller_loads_the_chart_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    kinds = render()
    [container] = pod_spec(kinds)["containers"]
    config_path = Path(container["args"][container["args"].index("--config") + 1])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts["config"] == str(config_path.parent)
    file = tmp_path / config_path.name
    file.write_text(kinds["ConfigMap"]["data"][config_path.name])
    literal_env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    # load_config rejects any VQS_ variable it does not know, so this also guards the env names.
    config = load_with_env(monkeypatch, file, {**literal_env, "VAST_API_KEY": SECRET})
    assert [s.name for s in config.scalers] == ["render-jobs"]
    assert config.metrics_host == "0.0.0.0"
    assert config.metrics_port == container["ports"][0]["containerPort"]
    assert container["workingDir"] == mounts["state"] and not config.state_dir.is_absolute()
    assert config.vast.api_key.get_secret_value() == SECRET


def test_without_leader_election_exactly_one_replica_acts() -> None:
    kinds = render(with_values(leaderElection__enabled=False, replicaCount=3))
    assert kinds["Deployment"]["spec"]["replicas"] == 1
    assert kinds["Deployment"]["spec"]["strategy"] == {"type": "Recreate"}
    assert {"Role", "RoleBinding", "PodDisruptionBudget"}.isdisjoint(kinds)
    assert pod_spec(kinds)["automountServiceAccountToken"] is False


def test_a_config_change_rolls_the_pods() -> None:
    def checksum(values: dict[str, Any] | None) -> str:
        return render(values)["Deployment"]["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    changed = with_values(config__log_level="debug")
    assert checksum(None) != checksum(changed)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"config__scalers": []}, "config.scalers: set at least one scaler"),
        ({"config__vast": {"api_key": SECRET}}, "do not put the key in the ConfigMap"),
        ({"vastApiKey__existingSecret": ""}, "vastApiKey.existingSecret"),
    ],
)
def test_the_chart_refuses_unsafe_or_empty_values(changes: dict[str, Any], message: str) -> None:
    import helm_python as helm

    with pytest.raises(helm.HelmError, match=message):
        render(with_values(**changes))
