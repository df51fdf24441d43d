"""Kubernetes operations: what Prometheus scrapes (monitors.yaml), disruption budgets, worker probes.

PodMonitors are Prometheus Operator CRDs that kubernetes-validate has no schema for (the core manifests are
validated in test_deploy_files.py), so they are checked here structurally: fields the CRD defines, selectors
that match exactly the pods of one component, ports that exist by name in those pods, and job names the alert
rules and compose's Prometheus use. Offline: no cluster.
"""

from __future__ import annotations

import re

import pytest
import yaml

from tests.docker.test_deploy_files import (
    DOCKER,
    K8S,
    container,
    gateway_routes,
    k8s,
    k8s_documents,
    k8s_env,
    settings_of,
    worker_deployments,
)

MONITORS = K8S / "monitors.yaml"
# PodMonitor spec / podMetricsEndpoints fields (monitoring.coreos.com/v1, prometheus-operator API reference).
POD_MONITOR_SPEC = {
    "jobLabel",
    "podTargetLabels",
    "podMetricsEndpoints",
    "selector",
    "namespaceSelector",
    "sampleLimit",
    "targetLimit",
    "labelLimit",
    "attachMetadata",
    "scrapeProtocols",
}
ENDPOINT_FIELDS = {
    "port",
    "portNumber",
    "targetPort",
    "path",
    "scheme",
    "params",
    "interval",
    "scrapeTimeout",
    "honorLabels",
    "honorTimestamps",
    "relabelings",
    "metricRelabelings",
    "authorization",
    "basicAuth",
    "oauth2",
    "tlsConfig",
    "followRedirects",
    "enableHttp2",
    "filterRunning",
}


def pod_monitors() -> list[dict]:
    return [d for _, d in k8s_documents() if d["kind"] == "PodMonitor"]


def deployments_selected(selector: dict) -> list[tuple[str, dict]]:
    """(file, Deployment) whose pod template labels a matchLabels selector matches."""
    want = selector["matchLabels"].items()
    return [
        (f, d)
        for f, d in k8s_documents()
        if d["kind"] == "Deployment" and want <= d["spec"]["template"]["metadata"]["labels"].items()
    ]


def components(deployments: list[tuple[str, dict]]) -> set[str]:
    return {d["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"] for _, d in deployments}


def named_ports(deployment: dict) -> dict[str, int]:
    return {p["name"]: p["containerPort"] for p in container(deployment).get("ports", [])}


def job_of(endpoint: dict) -> str | None:
    (job,) = [r["replacement"] for r in endpoint.get("relabelings", []) if r.get("targetLabel") == "job"]
    return job


# --- monitors ------------------------------------------------------------------------------------------------------


def test_gateways_and_workers_each_have_one_pod_monitor():
    monitors = pod_monitors()
    assert all(m["apiVersion"] == "monitoring.coreos.com/v1" for m in monitors)
    assert sorted(f for m in monitors for f, _ in deployments_selected(m["spec"]["selector"])) == [
        "gateway.yaml",
        "worker-gpu.yaml",
        "worker.yaml",
    ], "the gateway, and both worker variants"


@pytest.mark.parametrize("monitor", pod_monitors(), ids=lambda m: m["metadata"]["name"])
def test_pod_monitor_is_well_formed_and_scrapes_named_ports_of_its_pods(monitor):
    spec = monitor["spec"]
    assert set(spec) <= POD_MONITOR_SPEC, set(spec) - POD_MONITOR_SPEC
    targets = deployments_selected(spec["selector"])
    assert targets and len(components(targets)) == 1, "one component per monitor"
    assert monitor["metadata"]["labels"]["app.kubernetes.io/component"] in components(targets)
    assert "release" in monitor["metadata"]["labels"], "kube-prometheus-stack's default podMonitorSelector"
    for endpoint in spec["podMetricsEndpoints"]:
        assert set(endpoint) <= ENDPOINT_FIELDS, set(endpoint) - ENDPOINT_FIELDS
        for file, deployment in targets:
            assert endpoint["port"] in named_ports(deployment), f"{file} has no container port {endpoint['port']!r}"
        assert endpoint["path"] == "/metrics"


def test_the_gateway_monitor_scrapes_a_gateway_route_on_its_http_port():
    (monitor,) = [m for m in pod_monitors() if m["metadata"]["name"] == "asr-gateway"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    gateway = k8s("Deployment", "asr-gateway")
    assert endpoint["path"] in gateway_routes()
    port = named_ports(gateway)[endpoint["port"]]
    assert port == int(settings_of(k8s_env(gateway)).bind.rsplit(":", 1)[1])


def test_the_worker_monitor_scrapes_the_port_the_worker_serves_its_metrics_on():
    for file, deployment in worker_deployments():
        port = settings_of(k8s_env(deployment)).worker_metrics_port
        assert port and named_ports(deployment)["metrics"] == port, file


def test_scrape_jobs_carry_the_names_compose_and_the_alert_rules_use():
    compose_jobs = {
        s["job_name"] for s in yaml.safe_load((DOCKER / "prometheus" / "prometheus.yml").read_text())["scrape_configs"]
    }
    jobs = {job_of(e) for m in pod_monitors() for e in m["spec"]["podMetricsEndpoints"]}
    assert jobs == {"asr-gateway", "asr-worker"} and jobs <= compose_jobs


def test_the_commented_authorization_is_valid_and_reads_the_gateways_token_secret():
    # Uncommenting the block must give the operator's SafeAuthorization pointing at the Secret key the gateway
    # reads ASR_API_TOKEN from.
    text = MONITORS.read_text()
    block = re.search(r"^(\s*)# authorization:\n((?:\1#   .*\n)+)", text, re.MULTILINE)
    assert block, "the commented authorization block"
    indent = block.group(1)
    uncommented = "authorization:\n" + "".join(line[len(indent) + 2 :] + "\n" for line in block.group(2).splitlines())
    auth = yaml.safe_load(uncommented)["authorization"]
    assert auth["type"] == "Bearer"
    (token,) = [e for e in container(k8s("Deployment", "asr-gateway"))["env"] if e["name"] == "ASR_API_TOKEN"]
    ref = token["valueFrom"]["secretKeyRef"]
    assert auth["credentials"] == {"name": ref["name"], "key": ref["key"]}


def test_keda_reads_series_that_a_monitor_scrapes():
    (so,) = [d for _, d in k8s_documents() if d["kind"] == "ScaledObject"]
    queries = " ".join(t["metadata"]["query"] for t in so["spec"]["triggers"])
    assert "asr_gateway_sessions" in queries and "asr_pending_tasks" in queries  # gateway series (app/metrics.py)
    assert "asr-gateway" in {m["metadata"]["name"] for m in pod_monitors()}


# --- disruption budgets ----------------------------------------------------------------------------------------------


def pdb(component: str) -> dict:
    (found,) = [
        d
        for _, d in k8s_documents()
        if d["kind"] == "PodDisruptionBudget" and components(deployments_selected(d["spec"]["selector"])) == {component}
    ]
    return found


def min_replicas(component: str) -> int:
    if component == "worker":
        (so,) = [d for _, d in k8s_documents() if d["kind"] == "ScaledObject"]
        return so["spec"]["minReplicaCount"]
    return k8s("HorizontalPodAutoscaler", "asr-gateway")["spec"]["minReplicas"]


@pytest.mark.parametrize("component", ["worker", "gateway"])
def test_drains_take_one_pod_at_a_time_never_the_last_and_are_never_blocked(component):
    spec = pdb(component)["spec"]
    assert "minAvailable" not in spec, "minAvailable lets a drain take all but one at once"
    assert spec["maxUnavailable"] == 1, "one at a time; 0 would block every node drain"
    assert min_replicas(component) - spec["maxUnavailable"] >= 1, "at the replica floor an eviction leaves one"
    assert spec["unhealthyPodEvictionPolicy"] == "AlwaysAllow", "a pod that is not ready must not block drains"


def test_pdbs_cover_every_gateway_and_worker_deployment():
    covered = {f for d in (pdb("worker"), pdb("gateway")) for f, _ in deployments_selected(d["spec"]["selector"])}
    assert covered == {"worker.yaml", "worker-gpu.yaml", "gateway.yaml"}


# --- worker probes ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("file,deployment", worker_deployments(), ids=lambda v: v if isinstance(v, str) else "")
def test_worker_liveness_cannot_restart_the_workers_because_of_redis(file, deployment):
    c = container(deployment)
    live = c["livenessProbe"]
    assert "exec" not in live, "tasks.healthcheck reads Redis: a Redis outage would restart every worker"
    assert live["httpGet"]["port"] in named_ports(deployment) and live["httpGet"]["path"] == "/metrics"
    assert live["periodSeconds"] * live["failureThreshold"] >= 60, "a scrape competes with the model's threads"
    assert c["readinessProbe"]["exec"]["command"] == ["python", "-m", "tasks.healthcheck"]
