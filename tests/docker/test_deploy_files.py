"""docker/ is valid and agrees with the code it deploys. Offline: no Docker engine, no cluster; a few seconds.

Schemas: the compose files against the Compose specification (check-jsonschema's vendored schema), every core
Kubernetes manifest against Kubernetes' own OpenAPI schema in strict mode (kubernetes-validate, no unknown
fields). KEDA's ScaledObject is a CRD those schemas lack, so its structure is checked here field by field.
Cross-checks: ASR_* names and values are real settings, the worker runs a pool that keeps tasks with the model,
its -n name is what its probe looks up, probe paths are routes of the gateway (readiness on /readyz, liveness on
something that does not need Redis), grace periods cover the drains they wait for, sizing follows the settings
it depends on, and every PromQL query (Grafana, KEDA, alert rules) names metrics that app/metrics.py (gateways) or
tasks/metrics.py (workers) expose, with labels they carry. Prometheus's own files go through promtool (`check
config`, `check rules`, and the rule unit tests in docker/prometheus/alerts_test.yml) when it is installed.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from flask import Flask

from config.settings import PREFIX, Settings
from tasks import healthcheck

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
K8S = DOCKER / "k8s"
COMPOSE = DOCKER / "compose.yaml"
COMPOSE_GPU = DOCKER / "compose.gpu.yaml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "asr.json"
PROMETHEUS = DOCKER / "prometheus"
ALERTS = PROMETHEUS / "alerts.yml"
WORKER_METRICS_PORT = 9100  # every worker container/pod: one process each, so one fixed port
K8S_VERSION = "1.30"  # oldest Kubernetes the manifests target; kubernetes-validate ships its schema
NOT_IN_KUSTOMIZATION = {"worker-gpu.yaml": "replaces worker.yaml on GPU clusters", "ingress.yaml": "example"}
PROBE_COMMAND = ["python", "-m", "tasks.healthcheck"]


# --- loading ------------------------------------------------------------------------------------------------------


@functools.cache
def compose(path: Path = COMPOSE) -> dict:
    return yaml.safe_load(path.read_text())  # resolves the x-* anchors and << merge keys, as compose does


def compose_service(name: str, *overrides: Path) -> dict:
    """A service as compose merges it from the base file and ``overrides`` (mappings merge, the rest replaces)."""
    service = compose()["services"][name]
    for path in overrides:
        service = _merge(service, compose(path)["services"].get(name, {}))
    return service


def _merge(base, override):
    if isinstance(base, dict) and isinstance(override, dict):
        return {k: _merge(base[k], v) if k in base else v for k, v in override.items()} | {
            k: v for k, v in base.items() if k not in override
        }
    return override


def interpolate(value) -> str:
    """Compose's ${VAR:-default} / ${VAR:?error} with no variable set: the default, or empty."""
    return re.sub(r"\$\{\w+(?::?-([^}]*)|:?\?[^}]*)?\}", lambda m: m.group(1) or "", str(value))


def compose_env(name: str) -> dict[str, str]:
    """A service's environment with the GPU override applied and host variables at their defaults."""
    return {k: interpolate(v) for k, v in compose_service(name, COMPOSE_GPU).get("environment", {}).items()}


def settings_of(env: dict[str, str]) -> Settings:
    return Settings.from_env({k: v for k, v in env.items() if k in setting_names()})


@functools.cache
def k8s_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        docs += [(path.name, doc) for doc in yaml.safe_load_all(path.read_text()) if doc]
    return docs


def k8s(kind: str, name: str, file: str | None = None) -> dict:
    found = [
        d
        for f, d in k8s_documents()
        if d["kind"] == kind and d["metadata"]["name"] == name and (file is None or f == file)
    ]
    assert len(found) == 1, f"expected one {kind} {name} in {file or 'docker/k8s'}, found {len(found)}"
    return found[0]


def container(deployment: dict) -> dict:
    (c,) = deployment["spec"]["template"]["spec"]["containers"]
    return c


def k8s_env(deployment: dict) -> dict[str, str]:
    """A container's literal environment: the ConfigMaps it imports, then its own env (valueFrom left out)."""
    env: dict[str, str] = {}
    c = container(deployment)
    for source in c.get("envFrom", []):
        env.update(k8s("ConfigMap", source["configMapRef"]["name"])["data"])
    env.update({e["name"]: e["value"] for e in c.get("env", []) if "value" in e})
    return env


def worker_deployments() -> list[tuple[str, dict]]:
    return [(f, d) for f, d in k8s_documents() if d["kind"] == "Deployment" and f.startswith("worker")]


def setting_names() -> set[str]:
    return {PREFIX + f.name.upper() for f in dataclasses.fields(Settings)}


def option(argv: list[str], *names: str) -> str | None:
    """The value of a command-line option given as `-x v`, `--xx v` or `--xx=v`."""
    for i, arg in enumerate(argv):
        for name in names:
            if arg == name and i + 1 < len(argv):
                return argv[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


# --- schemas -------------------------------------------------------------------------------------------------------


def test_compose_files_follow_the_compose_specification():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "check_jsonschema",
            "--builtin-schema",
            "vendor.compose-spec",
            str(COMPOSE),
            str(COMPOSE_GPU),
        ],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


CUSTOM_API_GROUPS = ("keda.sh/", "kustomize.config.k8s.io/", "monitoring.coreos.com/")


@pytest.mark.parametrize("version", [K8S_VERSION, kubernetes_validate.latest_version()])
@pytest.mark.parametrize(
    "file,doc",
    [(f, d) for f, d in k8s_documents() if not d["apiVersion"].startswith(CUSTOM_API_GROUPS)],
    ids=lambda v: v if isinstance(v, str) else f"{v['kind']}/{v['metadata']['name']}",
)
def test_core_kubernetes_manifests_are_valid_in_strict_mode(file, doc, version):
    kubernetes_validate.validate(doc, version, strict=True)


def test_only_known_custom_resources_escape_the_kubernetes_schemas():
    custom = {d["kind"] for _, d in k8s_documents() if d["apiVersion"].startswith(CUSTOM_API_GROUPS)}
    assert custom == {"ScaledObject", "Kustomization", "PrometheusRule", "PodMonitor"}


def test_kustomization_lists_every_manifest_but_the_documented_alternatives():
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    assert all((K8S / r).is_file() for r in listed), listed
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == files - set(NOT_IN_KUSTOMIZATION)


# Fields of KEDA's ScaledObject (keda.sh/v1alpha1; keda docs "ScaledObject specification" and its CRD).
SCALED_OBJECT_SPEC = {
    "scaleTargetRef",
    "pollingInterval",
    "cooldownPeriod",
    "initialCooldownPeriod",
    "idleReplicaCount",
    "minReplicaCount",
    "maxReplicaCount",
    "fallback",
    "advanced",
    "triggers",
}
TRIGGER_FIELDS = {"type", "name", "metadata", "authenticationRef", "metricType", "useCachedMetrics"}
PROMETHEUS_REQUIRED = {"serverAddress", "query", "threshold"}


def test_keda_scaled_object_is_well_formed_and_targets_the_worker_deployment():
    (so,) = [d for _, d in k8s_documents() if d["kind"] == "ScaledObject"]
    assert so["apiVersion"] == "keda.sh/v1alpha1" and so["metadata"]["name"]
    spec = so["spec"]
    assert set(spec) <= SCALED_OBJECT_SPEC, set(spec) - SCALED_OBJECT_SPEC
    assert {"scaleTargetRef", "triggers"} <= set(spec)
    target = spec["scaleTargetRef"]
    assert target.get("kind", "Deployment") == "Deployment" and target.get("apiVersion", "apps/v1") == "apps/v1"
    assert {d["metadata"]["name"] for _, d in worker_deployments()} == {target["name"]}
    assert 1 <= spec["minReplicaCount"] <= spec["maxReplicaCount"], "0 workers: every session is refused"
    assert set(spec.get("fallback", {"failureThreshold": 1, "replicas": 1})) == {"failureThreshold", "replicas"}
    assert set(spec.get("advanced", {})) <= {
        "restoreToOriginalReplicaCount",
        "horizontalPodAutoscalerConfig",
        "scalingModifiers",
    }
    behavior = spec.get("advanced", {}).get("horizontalPodAutoscalerConfig", {}).get("behavior")
    if behavior:  # KEDA copies it into the HPA it creates: validate it as one
        kubernetes_validate.validate(
            {
                "apiVersion": "autoscaling/v2",
                "kind": "HorizontalPodAutoscaler",
                "metadata": {"name": "keda"},
                "spec": {
                    "scaleTargetRef": {"kind": "Deployment", "name": target["name"]},
                    "maxReplicas": 2,
                    "behavior": behavior,
                },
            },
            K8S_VERSION,
            strict=True,
        )
    assert spec["triggers"]
    for trigger in spec["triggers"]:
        assert set(trigger) <= TRIGGER_FIELDS and {"type", "metadata"} <= set(trigger), trigger
        assert trigger.get("metricType", "AverageValue") in ("AverageValue", "Value", "Utilization")
        metadata = trigger["metadata"]
        assert all(isinstance(v, str) for v in metadata.values()), "trigger metadata values are strings in the CRD"
        assert trigger["type"] == "prometheus", "queue depth is only known to the gateways (see the file's comment)"
        assert PROMETHEUS_REQUIRED <= set(metadata), trigger
        assert float(metadata["threshold"]) > 0 and metadata["serverAddress"].startswith("http")


# --- settings ------------------------------------------------------------------------------------------------------


def deployment_files() -> list[Path]:
    return [p for p in DOCKER.rglob("*") if p.is_file()]


def launch_variables() -> set[str]:
    """ASR_* names read by launch commands rather than config.settings: the Procfile's, and the worker's name."""
    procfile = set(re.findall(r"\$\{(ASR_\w+)", (ROOT / "Procfile").read_text()))
    return procfile | {healthcheck.WORKER_NAME_VAR}


def test_every_ASR_name_in_docker_is_a_setting_or_a_documented_launch_variable():
    allowed = setting_names() | launch_variables()
    for path in deployment_files():
        unknown = set(re.findall(r"\bASR_[A-Z0-9_]*[A-Z0-9]", path.read_text())) - allowed
        assert not unknown, f"{path.relative_to(ROOT)} names {sorted(unknown)}: not in config/settings.py"


def environments() -> list[tuple[str, dict[str, str]]]:
    envs = [(f"compose {name}", compose_env(name)) for name in compose()["services"]]
    envs += [
        (f"k8s {d['metadata']['name']} ({f})", k8s_env(d))
        for f, d in k8s_documents()
        if d["kind"] == "Deployment" and "envFrom" in container(d)
    ]
    return envs


@pytest.mark.parametrize("where,env", environments(), ids=lambda v: v if isinstance(v, str) else "")
def test_ASR_values_parse_as_their_settings(where, env):
    settings_of(env)  # raises on a value of the wrong type


def test_every_process_agrees_on_redis_queue_and_key_prefix():
    shared = ("ASR_REDIS_URL", "ASR_QUEUE", "ASR_KEY_PREFIX", "ASR_HEARTBEAT_TTL")
    for platform in ("compose", "k8s"):
        seen = {
            where: tuple(env.get(k) for k in shared)
            for where, env in environments()
            if where.startswith(platform) and "ASR_REDIS_URL" in env
        }
        assert len(seen) >= 3 and len(set(seen.values())) == 1, seen


# --- commands and probes -------------------------------------------------------------------------------------------


def worker_commands() -> list[tuple[str, list[str], dict[str, str], object]]:
    """(where, argv, environment, probe command) of every worker definition."""
    service = compose_service("worker", COMPOSE_GPU)
    out = [
        ("compose+gpu", service["command"], service["environment"], service["healthcheck"]["test"]),
        (
            "compose",
            compose()["services"]["worker"]["command"],
            compose()["services"]["worker"]["environment"],
            compose()["services"]["worker"]["healthcheck"]["test"],
        ),
    ]
    for f, d in worker_deployments():
        c = container(d)
        out.append(
            (
                f,
                c["command"],
                {e["name"]: e.get("value", e.get("valueFrom")) for e in c["env"]},
                c["readinessProbe"]["exec"]["command"],
            )
        )
    return out


@pytest.mark.parametrize("where,argv,env,probe", worker_commands(), ids=lambda v: v if isinstance(v, str) else "")
def test_worker_runs_threads_pool_under_the_name_its_probe_looks_up(where, argv, env, probe):
    assert argv[:4] == ["celery", "-A", "tasks", "worker"], argv
    assert option(argv, "-P", "--pool") in (None, "threads", "solo"), "tasks must run where the model lives"
    assert "prefork" not in argv and int(option(argv, "-c", "--concurrency") or 0) >= 1
    name = option(argv, "-n", "--hostname")
    if where.startswith("compose"):
        assert name == env[healthcheck.WORKER_NAME_VAR] and "%h" in name, "unique per replica"
        assert probe == ["CMD", *PROBE_COMMAND]
        assert option(argv, "-Q", "--queues") == compose()["x-asr-env"]["ASR_QUEUE"]
    else:
        assert name == f"$({healthcheck.WORKER_NAME_VAR})" and option(argv, "-Q", "--queues") == "$(ASR_QUEUE)"
        assert "$(POD_NAME)" in env[healthcheck.WORKER_NAME_VAR], "the pod name, from the downward API"
        assert env["POD_NAME"] == {"fieldRef": {"fieldPath": "metadata.name"}}
        assert [e["name"] for e in container(k8s("Deployment", "asr-worker", where))["env"]].index("POD_NAME") == 0, (
            "a $(VAR) reference only sees variables defined before it"
        )
        assert probe == PROBE_COMMAND


def test_cpu_and_gpu_worker_deployments_differ_only_where_intended():
    cpu, gpu = k8s("Deployment", "asr-worker", "worker.yaml"), k8s("Deployment", "asr-worker", "worker-gpu.yaml")
    assert cpu["metadata"] == gpu["metadata"] and cpu["spec"]["selector"] == gpu["spec"]["selector"]
    assert container(gpu)["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert k8s_env(gpu)["ASR_DEVICE"].startswith("cuda") and k8s_env(cpu)["ASR_DEVICE"] == "cpu"
    assert without_concurrency(container(cpu)["command"]) == without_concurrency(container(gpu)["command"])


def without_concurrency(argv: list[str]) -> list[str]:
    return [a for i, a in enumerate(argv) if "--concurrency" not in (a, argv[i - 1])]


def seconds(duration: str | int) -> float:
    """A compose duration ('1m30s', '40s') or a Kubernetes number of seconds."""
    if isinstance(duration, int):
        return duration
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", duration))


GRACE_SLACK = 5  # seconds between the end of a drain and SIGKILL, at the least
#: A worker told to stop with a backlog exits by itself within this (tests/e2e/test_worker_loss.py checks it).
WORKER_EXIT_SECONDS = 10


def test_grace_periods_fit_the_shutdowns_they_wait_for():
    # Gateways: the preStop pause, then ASR_DRAIN_SECONDS (gunicorn's graceful_timeout) for open sessions, must
    # end before SIGKILL. The drain is read from each gateway's own environment, as config/gunicorn.py does.
    gateway = k8s("Deployment", "asr-gateway")
    pre_stop = float(container(gateway)["lifecycle"]["preStop"]["exec"]["command"][-1])  # ["sleep", N]
    drain = settings_of(k8s_env(gateway)).drain_seconds
    assert gateway["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= pre_stop + drain + GRACE_SLACK
    drain = settings_of(compose_env("gateway")).drain_seconds
    assert seconds(compose()["services"]["gateway"]["stop_grace_period"]) >= drain + GRACE_SLACK
    # Workers deregister at once and their engine releases what it holds, so they exit within seconds; the grace
    # period only has to cover that with room for a slow last batch (a SIGKILL after it loses nothing: the
    # sessions have moved, and leftover chunks in the worker's queue are swept by the gateways).
    # A preStop drain (python -m tasks.drain --wait N) comes first: the grace period covers its wait too.
    for _, d in worker_deployments():
        hook = container(d)["lifecycle"]["preStop"]["exec"]["command"]
        assert hook[:3] == ["python", "-m", "tasks.drain"], hook
        wait = float(hook[hook.index("--wait") + 1])
        assert d["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= wait + 2 * WORKER_EXIT_SECONDS
    assert seconds(compose()["services"]["worker"]["stop_grace_period"]) >= 2 * WORKER_EXIT_SECONDS


def test_the_drain_setting_is_what_gunicorn_uses():
    from config import gunicorn

    assert gunicorn.graceful_timeout == Settings.from_env().drain_seconds  # ASR_DRAIN_SECONDS, not a constant


@functools.cache
def gateway_routes() -> set[str]:
    from app import api, files, ws

    app = Flask("routes")
    app.register_blueprint(api.bp)
    app.register_blueprint(files.bp)
    return {rule.rule for rule in app.url_map.iter_rules()} | set(ws.WS_PATHS)


def gateway_port() -> int:
    return int(settings_of(compose_env("gateway")).bind.rsplit(":", 1)[1])


READY_PATH = "/readyz"  # 200 while the gateway can read Redis (app/api.py)
WHOLE_SYSTEM_PATH = "/healthz"  # also 503 while no worker is alive: not about the gateway itself


def test_gateway_probes_scrapes_and_ingress_use_routes_the_gateway_serves():
    assert {READY_PATH, WHOLE_SYSTEM_PATH} <= gateway_routes()
    deployment = k8s("Deployment", "asr-gateway")
    c = container(deployment)
    ready, live = (c[probe]["httpGet"]["path"] for probe in ("readinessProbe", "livenessProbe"))
    assert ready == READY_PATH, "a worker outage must not take the gateways out of the Service"
    assert live in gateway_routes() and live not in (READY_PATH, WHOLE_SYSTEM_PATH), (
        "liveness must not depend on Redis or workers: restarting gateways fixes neither"
    )
    assert int(settings_of(k8s_env(deployment)).bind.rsplit(":", 1)[1]) == c["ports"][0]["containerPort"]
    (url,) = re.findall(
        r"http://127\.0\.0\.1:(\d+)(/\w*)", " ".join(compose()["services"]["gateway"]["healthcheck"]["test"])
    )
    assert int(url[0]) == gateway_port() and url[1] == READY_PATH
    ingress = k8s("Ingress", "asr-gateway")["spec"]["rules"][0]["http"]["paths"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    scrape = scrape_config("asr-gateway")
    for path in [p["path"] for p in ingress if p["pathType"] == "Exact"] + [
        annotations["prometheus.io/path"],
        scrape["metrics_path"],
    ]:
        assert path in gateway_routes(), path
    for prefix in [p["path"] for p in ingress if p["pathType"] == "Prefix"]:
        assert any(route.startswith(prefix + "/") or route == prefix for route in gateway_routes()), prefix
    assert {sd["port"] for sd in scrape["dns_sd_configs"]} == {gateway_port()}
    assert int(annotations["prometheus.io/port"]) == c["ports"][0]["containerPort"]
    assert f"{gateway_port()}:{gateway_port()}" in compose()["services"]["gateway"]["ports"]


def test_one_gateway_process_per_container_so_each_scrape_sees_all_of_it():
    for where, env in environments():
        if "ASR_BIND" in env and "gateway" in where:
            assert env["ASR_GATEWAY_PROCESSES"] == "1", where


def test_gateways_trust_forwarded_headers_only_from_the_proxies_in_front_of_them():
    # Kubernetes: ingress-nginx is the one proxy (it replaces X-Forwarded-For by default). Compose: none.
    assert k8s("Ingress", "asr-gateway")["spec"]["ingressClassName"] == "nginx"
    assert settings_of(k8s_env(k8s("Deployment", "asr-gateway"))).proxy_hops == 1
    assert settings_of(compose_env("gateway")).proxy_hops == 0


REPLAY_BYTES_PER_SECOND = 32000  # 16 kHz int16 audio, as app/handler.py sizes its replay buffer


def quantity(value: str) -> float:
    """A Kubernetes memory quantity ('4Gi', '512M', '1000') in bytes."""
    number, unit = re.fullmatch(r"([\d.]+)([KMGT]i?)?", value).groups()
    powers = {"K": 1, "M": 2, "G": 3, "T": 4}
    return float(number) * ((1024 if unit.endswith("i") else 1000) ** powers[unit[0]] if unit else 1)


def test_gateway_memory_holds_a_full_replay_buffer_for_every_connection():
    gateway = k8s("Deployment", "asr-gateway")
    settings = settings_of(k8s_env(gateway))
    replay = settings.gateway_connections * settings.replay_max_seconds * REPLAY_BYTES_PER_SECOND
    assert replay <= quantity(container(gateway)["resources"]["limits"]["memory"]) * 0.8, "room for the rest"


def test_autoscaling_target_stays_below_the_per_worker_cap():
    # Refused sessions never show in asr_gateway_sessions: with the target at the cap, KEDA would never grow a
    # full fleet (worker-scaledobject.yaml).
    (so,) = [d for _, d in k8s_documents() if d["kind"] == "ScaledObject"]
    (sessions,) = [t for t in so["spec"]["triggers"] if t["metadata"]["query"] == "sum(asr_gateway_sessions)"]
    for file, d in worker_deployments():
        cap = settings_of(k8s_env(d)).worker_max_streams
        assert cap == 0 or float(sessions["metadata"]["threshold"]) < cap, file


# --- metrics ----------------------------------------------------------------------------------------------------------


def _collect(registry, instruments) -> dict[str, set[str]]:
    """Sample name → label names of every series ``registry`` can expose (children made for labelled ones)."""
    from prometheus_client.metrics import MetricWrapperBase

    for instrument in instruments:  # a labelled instrument exposes nothing until a child exists
        if isinstance(instrument, MetricWrapperBase) and instrument._labelnames:  # no public accessor
            instrument.labels(*["x"] * len(instrument._labelnames))
    series: dict[str, set[str]] = {}
    for family in registry.collect():
        labels = set().union(*(s.labels for s in family.samples)) - {"le"}
        for suffix in SUFFIXES[family.type]:  # KeyError: a new metric type in a metrics module, add it there
            series[family.name + suffix] = labels | ({"le"} if suffix == "_bucket" else set())
    return series


@functools.cache
def gateway_series() -> dict[str, set[str]]:
    """Every series a gateway's /metrics can expose."""
    from app.metrics import GatewayMetrics
    from app.monitor import Snapshot

    snapshot = Snapshot(
        taken_at=1.0,
        redis_error=None,
        queues={"gpu": 1},
        workers={"w@h": {"streams": 1, "stats": {"chunks": 1, "batches": 1, "failures": 0}}},
    )
    metrics = GatewayMetrics(lambda: snapshot, lambda: 1)
    return _collect(metrics.registry, vars(metrics).values())


@functools.cache
def worker_series() -> dict[str, set[str]]:
    """Every series a worker's metrics port can expose."""
    from tasks.metrics import WorkerMetrics

    metrics = WorkerMetrics(
        {"worker": "w@h", "queue": "gpu.w@h", "device": "cpu", "version": "0"}, health=lambda: "ok", streams=lambda: 0
    )
    return _collect(metrics.registry, vars(metrics).values())


def exposed_series() -> dict[str, set[str]]:
    """Gateways' and workers' series, plus ``up``, which Prometheus writes for every target."""
    return {**gateway_series(), **worker_series(), "up": set()}


SUFFIXES = {
    "gauge": ("",),
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "info": ("_info",),
}
TARGET_LABELS = {"instance", "job", "namespace", "pod"}  # added by Prometheus's scrape, not by the services


def test_gateway_and_worker_metric_names_do_not_collide():
    shared = set(gateway_series()) & set(worker_series())
    assert shared <= {n for n in shared if n.startswith(("process_", "python_"))}, shared
    assert {"process_resident_memory_bytes", "asr_build_info"} <= set(gateway_series())
    assert {"process_resident_memory_bytes", "asr_engine_info"} <= set(worker_series())


def alert_rules() -> list[dict]:
    return [r for g in yaml.safe_load(ALERTS.read_text())["groups"] for r in g["rules"]]


def promql() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    queries = [(p["title"], t["expr"]) for p in dashboard["panels"] for t in p.get("targets", [])]
    (so,) = [d for _, d in k8s_documents() if d["kind"] == "ScaledObject"]
    queries += [(f"keda {t.get('name', t['type'])}", t["metadata"]["query"]) for t in so["spec"]["triggers"]]
    return queries + [(f"alert {r['alert']}", r["expr"]) for r in alert_rules()]


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (identifiers that are not functions, labels or keywords)."""
    bare = re.sub(r"\b(?:by|without|on|ignoring)\s*\([^)]*\)", " ", expr)  # grouping labels
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\"[^\"]*\"", " ", bare)  # matchers, ranges, strings
    names = set(re.findall(r"\b[a-zA-Z_:][a-zA-Z0-9_:]*\b(?!\s*\()", bare))
    return names - PROMQL_WORDS


def test_metric_names_are_found_in_promql():
    assert metric_names('histogram_quantile(0.9, sum by (le) (rate(x_bucket{a="b"}[5m]))) / max(y)') == {
        "x_bucket",
        "y",
    }


@pytest.mark.parametrize("where,expr", promql(), ids=lambda v: v if " " not in v else v[:40])
def test_queries_name_metrics_and_labels_the_services_expose(where, expr):
    series = exposed_series()
    names = metric_names(expr)
    assert names and names <= set(series), f"{where}: unknown {names - set(series)}"
    labels = {
        label.strip() for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr) for label in group.split(",")
    }
    labels |= set(re.findall(r"[{,]\s*(\w+)\s*(?:=~|!=|!~|=)", expr))
    known = set().union(*(series[n] for n in names)) | TARGET_LABELS
    assert labels <= known, f"{where}: labels {labels - known} are on none of {sorted(names)}"


def test_the_renamed_and_dropped_metrics_are_gone_everywhere():
    gone = {"asr_sessions_total", "asr_worker_mean_batch"}  # now asr_sessions_admitted_total; a counters' ratio
    assert not gone & set(exposed_series())
    assert not any(gone & metric_names(expr) for _, expr in promql())


def test_the_dashboard_uses_the_provisioned_data_source():
    provisioned = yaml.safe_load((DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml").read_text())[
        "datasources"
    ]
    uids = {d["uid"] for d in provisioned}
    dashboard = json.loads(DASHBOARD.read_text())
    used = {t["datasource"]["uid"] for p in dashboard["panels"] for t in p.get("targets", [])}
    assert used == uids


# --- scraping and alerting ----------------------------------------------------------------------------------------


def scrape_config(job: str) -> dict:
    (found,) = [
        s for s in yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())["scrape_configs"] if s["job_name"] == job
    ]
    return found


def test_prometheus_scrapes_every_worker_container_on_its_metrics_port():
    scrape = scrape_config("asr-worker")
    assert [sd["names"] for sd in scrape["dns_sd_configs"]] == [["worker"]], "the compose service's DNS name"
    assert {sd["port"] for sd in scrape["dns_sd_configs"]} == {WORKER_METRICS_PORT}
    for where in (
        compose_env("worker"),
        {k: interpolate(v) for k, v in compose()["services"]["worker"]["environment"].items()},
    ):
        settings = settings_of(where)
        assert settings.worker_metrics_port == WORKER_METRICS_PORT and settings.worker_metrics_addr == "0.0.0.0"
    assert str(WORKER_METRICS_PORT) in compose()["services"]["worker"]["expose"]
    assert not any(str(WORKER_METRICS_PORT) in str(p) for p in compose()["services"]["worker"].get("ports", []))


@pytest.mark.parametrize("file", ["worker.yaml", "worker-gpu.yaml"])
def test_kubernetes_workers_expose_their_metrics_port_to_pod_discovery(file):
    deployment = k8s("Deployment", "asr-worker", file)
    settings = settings_of(k8s_env(deployment))
    assert settings.worker_metrics_port == WORKER_METRICS_PORT and settings.worker_metrics_addr == "0.0.0.0"
    assert {"name": "metrics", "containerPort": WORKER_METRICS_PORT} in container(deployment)["ports"]
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert int(annotations["prometheus.io/port"]) == WORKER_METRICS_PORT


def test_compose_prometheus_loads_the_alert_rules_it_mounts():
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    assert config["rule_files"] == [ALERTS.name], "relative to prometheus.yml, as promtool resolves it"
    mounts = compose()["services"]["prometheus"]["volumes"]
    assert f"./prometheus/{ALERTS.name}:/etc/prometheus/{ALERTS.name}:ro" in mounts
    assert "./prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in mounts


REQUIRED_ALERTS = {
    "AsrNoWorkers",
    "AsrQueueGrowing",
    "AsrChunkLatencyHigh",
    "AsrSessionsRefused",
    "AsrEngineFailures",
    "AsrWorkerEngineNotOk",
}
CHUNK_SECONDS = 0.6  # chunk_size[1] = 10 frames of 60 ms: the default chunk (bench/client.py)


def test_alert_rules_cover_the_failures_operators_must_hear_about():
    rules = {r["alert"]: r for r in alert_rules()}
    assert REQUIRED_ALERTS <= set(rules)
    assert all(
        r["labels"]["severity"] in ("warning", "critical") and r["annotations"]["summary"] for r in rules.values()
    )
    latency = rules["AsrChunkLatencyHigh"]
    assert "asr_chunk_latency_seconds_bucket" in latency["expr"] and latency["for"] == "5m"
    assert float(latency["expr"].rsplit(">", 1)[1]) == CHUNK_SECONDS


def test_the_prometheus_rule_carries_the_same_groups_as_alerts_yml():
    rule = k8s("PrometheusRule", "funasr-stream", "prometheusrule.yaml")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1" and set(rule["spec"]) == {"groups"}
    assert rule["spec"] == yaml.safe_load(ALERTS.read_text())


def promtool(*args: str | Path) -> subprocess.CompletedProcess:
    binary = shutil.which("promtool")
    if binary is None:
        pytest.skip("promtool is not installed (Debian: apt-get install prometheus; scripts/browser-deps.sh does)")
    return subprocess.run([binary, *map(str, args)], check=False, capture_output=True, text=True, timeout=60)


def test_promtool_accepts_the_prometheus_config_and_its_rule_files():
    result = promtool("check", "config", PROMETHEUS / "prometheus.yml")  # also checks the rule_files it names
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 rule files found" in result.stdout + result.stderr


def test_promtool_accepts_the_prometheus_rule_groups(tmp_path):
    rules = tmp_path / "prometheusrule-groups.yml"
    rules.write_text(yaml.safe_dump(k8s("PrometheusRule", "funasr-stream")["spec"]))
    result = promtool("check", "rules", rules)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rule_unit_tests_pass():
    tests = yaml.safe_load((PROMETHEUS / "alerts_test.yml").read_text())
    tested = {t["alertname"] for case in tests["tests"] for t in case.get("alert_rule_test", [])}
    assert len(tested & REQUIRED_ALERTS) >= 2, tested
    result = promtool("test", "rules", PROMETHEUS / "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr


# --- image ---------------------------------------------------------------------------------------------------------


def dockerfile_arg(name: str) -> str:
    (value,) = re.findall(rf"^ARG {name}=(\S+)", (DOCKER / "Dockerfile").read_text(), re.MULTILINE)
    return value


def test_dockerfile_installs_the_pinned_torch_and_funasr():
    assert f"torch=={dockerfile_arg('TORCH_VERSION')}\n" in (ROOT / "requirements.txt").read_text()
    assert f"funasr=={dockerfile_arg('FUNASR_VERSION')}" in (ROOT / "scripts" / "install.sh").read_text()
    assert dockerfile_arg("TORCH_INDEX_URL").endswith("/whl/cpu")


def test_the_hub_client_is_an_opt_in_build_argument():
    text = (DOCKER / "Dockerfile").read_text()
    assert dockerfile_arg("WITH_HUB") == "0", "hub downloads are opt-in"
    assert "pip install -r /tmp/requirements-hub.txt" in text and (ROOT / "requirements-hub.txt").is_file()
    assert interpolate(compose()["x-image"]["build"]["args"]["WITH_HUB"]) == "0"


def test_dockerfile_copies_only_what_its_ignore_file_lets_in_and_runs_as_a_user():
    text = (DOCKER / "Dockerfile").read_text()
    allowed = {
        line[1:].rstrip("/")
        for line in (DOCKER / "Dockerfile.dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    sources = {
        s.rstrip("/") for line in re.findall(r"^COPY (?!--from)(.+)$", text, re.MULTILINE) for s in line.split()[:-1]
    }
    assert sources and sources <= allowed, sources - allowed
    assert all((ROOT / s).exists() for s in sources)
    users = re.findall(r"^USER (\S+)", text, re.MULTILINE)
    assert users and users[-1].split(":")[0] not in ("root", "0")
