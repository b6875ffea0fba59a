"""The Kustomize deployment (deploy/k8s) renders, validates against the Kubernetes schemas, and
says what the service needs: probes on the right routes, a drain that fits the grace period, a
disruption budget, an autoscaler on r2m's own queue metric, and a locked-down pod.

Every variant a user can pick is rendered with `kubectl kustomize` (the overlay as shipped, and
with its components swapped or added, exactly as the README tells a user to edit them), then each
resource is checked offline: built-in kinds against the Kubernetes JSON schemas
(kubernetes-validate, strict), the ServiceMonitor against prometheus-operator's typed model.
"""

from __future__ import annotations

import base64
import itertools
import re
import shutil
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from cloudcoil.models.prometheus_operator.v1 import ServiceMonitor

from r2m_service.metrics import Metrics
from r2m_service.settings import Settings
from tests.deploy_tools import DEPLOY, image_uid, run, tool

K8S = DEPLOY / "k8s"
OVERLAYS = ("cpu", "gpu")
REDIS = ("redis", "redis-external")
# The oldest Kubernetes the manifests promise to work on, and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.30.0", kubernetes_validate.latest_version())
UVICORN_DRAIN_S = 30  # `r2m serve` lets in-flight requests finish for this long on SIGTERM

Variant = tuple[str, str, bool]  # overlay, Redis component, with monitoring
VARIANTS: list[Variant] = list(itertools.product(OVERLAYS, REDIS, (False, True)))
Resource = dict[str, Any]


def _id(variant: Variant) -> str:
    overlay, redis, monitoring = variant
    return f"{overlay}+{redis}" + ("+monitoring" * monitoring)


def _render(directory: Path) -> list[Resource]:
    result = run(tool("kubectl"), "kustomize", str(directory))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[Variant, list[Resource]]:
    """Each variant from a copy of deploy/k8s whose overlay lists that variant's components."""
    out = {}
    for variant in VARIANTS:
        overlay, redis, monitoring = variant
        tree = tmp_path_factory.mktemp(_id(variant)) / "k8s"
        shutil.copytree(K8S, tree)
        kustomization = tree / "overlays" / overlay / "kustomization.yaml"
        config = yaml.safe_load(kustomization.read_text())
        config["components"] = [f"../../components/{redis}"] + (
            ["../../components/monitoring"] if monitoring else [])
        kustomization.write_text(yaml.safe_dump(config))
        out[variant] = _render(tree / "overlays" / overlay)
    return out


def _one(resources: list[Resource], kind: str, name: str | None = None) -> Resource:
    found = [r for r in resources if r["kind"] == kind
             and (name is None or r["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _server(resources: list[Resource]) -> tuple[Resource, Resource]:
    """The r2m Deployment and its one container."""
    deployment = _one(resources, "Deployment", "r2m")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return deployment, container


def _settings(resources: list[Resource]) -> dict[str, str]:
    """Every R2M_* value the container gets: its ConfigMap, then its own `env` literals."""
    _, container = _server(resources)
    (source,) = container["envFrom"]
    config_map = _one(resources, "ConfigMap", source["configMapRef"]["name"])
    literals = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    return {**config_map["data"], **literals}


def _mount(container: Resource, path: str) -> Resource:
    return next(m for m in container["volumeMounts"] if m["mountPath"] == path)


def _volume(deployment: Resource, name: str) -> Resource:
    return next(v for v in deployment["spec"]["template"]["spec"]["volumes"] if v["name"] == name)


# ---- rendering and schemas -----------------------------------------------------------------------

@pytest.mark.parametrize("overlay", OVERLAYS)
def test_each_overlay_renders_as_shipped(overlay: str) -> None:
    kinds = sorted(r["kind"] for r in _render(K8S / "overlays" / overlay))
    expected = ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                "Secret", "Service", "Service", "ServiceAccount", "StatefulSet"]
    if overlay == "gpu":  # the reward model comes from the backbone volume
        expected.append("PersistentVolumeClaim")
    assert kinds == sorted(expected)


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_every_resource_validates_against_its_schema(
        rendered: dict[Variant, list[Resource]], variant: Variant) -> None:
    for resource in rendered[variant]:
        name = f"{resource['kind']}/{resource['metadata']['name']}"
        if resource["apiVersion"].startswith("monitoring.coreos.com/"):
            # Not a built-in kind. The typed model drops what it does not know, so a field lost
            # in the round trip is one prometheus-operator would reject.
            model = ServiceMonitor.model_validate(resource)
            assert model.model_dump(by_alias=True, exclude_none=True) == resource, name
            continue
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(resource, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{name} against Kubernetes {version}: {exc.message} "
                            f"at {'.'.join(map(str, exc.path))}")


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_every_r2m_setting_is_one_the_service_reads(
        rendered: dict[Variant, list[Resource]], variant: Variant) -> None:
    for key in _settings(rendered[variant]) | {"R2M_REDIS_URL": ""}:
        assert key.startswith("R2M_") and key[4:].lower() in Settings.model_fields, key


# ---- the server Deployment -----------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_probes_tell_loading_from_dead_from_ready(
        rendered: dict[Variant, list[Resource]], variant: Variant) -> None:
    _, container = _server(rendered[variant])
    port_names = {p["name"] for p in container["ports"]}
    paths = {}
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        get = container[probe]["httpGet"]
        assert get["port"] in port_names, probe
        paths[probe] = get["path"]
    # Start-up waits for the loaded backbone; liveness is only "the process answers", so a Redis
    # outage (which /readyz reports) takes a pod out of the Service without restarting it.
    assert paths == {"startupProbe": "/readyz", "livenessProbe": "/healthz",
                     "readinessProbe": "/readyz"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_termination_grace_covers_the_prestop_and_the_drain(
        rendered: dict[Variant, list[Resource]], variant: Variant) -> None:
    deployment, container = _server(rendered[variant])
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    grace = deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > int(command[1]) + UVICORN_DRAIN_S


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_pods_run_locked_down_as_the_images_user(
        rendered: dict[Variant, list[Resource]], variant: Variant) -> None:
    for workload in (r for r in rendered[variant] if r["kind"] in ("Deployment", "StatefulSet")):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault"
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert "memory" in container["resources"]["limits"]
    deployment, container = _server(rendered[variant])
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == image_uid()
    assert "emptyDir" in _volume(deployment, _mount(container, "/tmp")["name"])


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_api_keys_come_from_a_secret_mounted_read_only(
        rendered: dict[Variant, list[Resource]], variant: Variant) -> None:
    deployment, container = _server(rendered[variant])
    keys_file = Path(_settings(rendered[variant])["R2M_API_KEYS_FILE"])
    mount = _mount(container, str(keys_file.parent))
    assert mount["readOnly"] is True
    assert _volume(deployment, mount["name"])["secret"]["secretName"] == "r2m-api-keys"


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_the_backbone_volume_is_read_only_or_the_embedded_default_is_served(
        rendered: dict[Variant, list[Resource]], variant: Variant) -> None:
    deployment, container = _server(rendered[variant])
    backbone = _settings(rendered[variant]).get("R2M_BACKBONE")
    if variant[0] == "cpu":  # the image's embedded all-MiniLM-L6-v2
        assert backbone is None
        assert not any(r["kind"] == "PersistentVolumeClaim" for r in rendered[variant])
        return
    mount = _mount(container, backbone)
    assert mount["readOnly"] is True
    claim = _volume(deployment, mount["name"])["persistentVolumeClaim"]
    assert claim["readOnly"] is True
    pvc = _one(rendered[variant], "PersistentVolumeClaim", claim["claimName"])
    assert pvc["spec"]["accessModes"] == ["ReadOnlyMany"]  # every replica, any node


def test_the_gpu_overlay_asks_for_a_gpu_and_computes_in_bf16(
        rendered: dict[Variant, list[Resource]]) -> None:
    resources = rendered[("gpu", "redis", False)]
    _, container = _server(resources)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["image"].endswith(":cuda")
    settings = _settings(resources)
    assert settings["R2M_DEVICE"].startswith("cuda") and settings["R2M_DTYPE"] == "bfloat16"
    _, cpu_container = _server(rendered[("cpu", "redis", False)])
    assert "nvidia.com/gpu" not in cpu_container["resources"].get("limits", {})
    assert cpu_container["image"].endswith(":cpu")


# ---- around it: Service, PDB, HPA, Redis, monitoring -----------------------------------------

def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_service_and_disruption_budget_select_the_server_pods(
        rendered: dict[Variant, list[Resource]], variant: Variant) -> None:
    resources = rendered[variant]
    deployment, container = _server(resources)
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = _one(resources, "Service", "r2m")
    assert _selects(service["spec"]["selector"], labels)
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {
        p["name"] for p in container["ports"]}
    pdb = _one(resources, "PodDisruptionBudget")
    assert _selects(pdb["spec"]["selector"]["matchLabels"], labels)
    hpa = _one(resources, "HorizontalPodAutoscaler")
    # A drain takes one pod at a time and never the last one.
    assert pdb["spec"]["maxUnavailable"] == 1 and hpa["spec"]["minReplicas"] >= 2
    assert "replicas" not in deployment["spec"]  # the HPA owns the count


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_the_autoscaler_follows_the_queue_with_cpu_as_fallback(
        rendered: dict[Variant, list[Resource]], variant: Variant) -> None:
    hpa = _one(rendered[variant], "HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", "r2m")
    metrics = {m["type"]: m for m in hpa["spec"]["metrics"]}
    assert set(metrics) == {"Pods", "Resource"}
    queue = metrics["Pods"]["pods"]
    assert queue["metric"]["name"] == "r2m_queue_size"
    assert queue["target"]["type"] == "AverageValue"
    assert metrics["Resource"]["resource"]["name"] == "cpu"


def test_the_adapter_serves_the_queue_metric_the_service_exports() -> None:
    """The HPA's metric exists in a live registry and the adapter rule maps it to pods."""
    exported = {m.name for m in Metrics().registry.collect()}
    assert "r2m_queue_size" in exported
    (rule,) = yaml.safe_load((K8S / "prometheus-adapter" / "config.yaml").read_text())["rules"]
    assert rule["seriesQuery"].startswith("r2m_queue_size{")
    assert rule["name"]["as"] == "r2m_queue_size"
    assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"},
                                              "pod": {"resource": "pod"}}
    assert "<<.LabelMatchers>>" in rule["metricsQuery"]


@pytest.mark.parametrize("variant", VARIANTS, ids=_id)
def test_r2m_reads_its_redis_url_from_the_chosen_components_secret(
        rendered: dict[Variant, list[Resource]], variant: Variant) -> None:
    resources = rendered[variant]
    _, container = _server(resources)
    ref = next(e for e in container["env"] if e["name"] == "R2M_REDIS_URL")
    secret = _one(resources, "Secret", ref["valueFrom"]["secretKeyRef"]["name"])
    assert ref["valueFrom"]["secretKeyRef"]["key"] in secret["data"]
    in_cluster = [r for r in resources if r["kind"] == "StatefulSet"]
    assert bool(in_cluster) == (variant[1] == "redis")


def test_in_cluster_redis_keeps_an_append_only_file_on_a_volume(
        rendered: dict[Variant, list[Resource]]) -> None:
    resources = rendered[("cpu", "redis", False)]
    redis = _one(resources, "StatefulSet", "r2m-redis")
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    args = container["args"]
    assert args[args.index("--appendonly") + 1] == "yes"
    assert args[args.index("--maxmemory-policy") + 1] == "noeviction"
    (claim,) = redis["spec"]["volumeClaimTemplates"]
    assert _mount(container, args[args.index("--dir") + 1])["name"] == claim["metadata"]["name"]
    secret = next(r for r in resources if r["kind"] == "Secret")
    url = base64.b64decode(secret["data"]["url"]).decode()
    host = re.fullmatch(r"redis://([^:/]+):(\d+)/\d+", url)
    assert host and host.group(1) == redis["spec"]["serviceName"]
    service = _one(resources, "Service", host.group(1))
    assert int(host.group(2)) in {p["port"] for p in service["spec"]["ports"]}


def test_the_service_monitor_scrapes_every_server_pod(
        rendered: dict[Variant, list[Resource]]) -> None:
    resources = rendered[("gpu", "redis-external", True)]
    monitor = _one(resources, "ServiceMonitor")
    service = _one(resources, "Service", "r2m")
    assert _selects(monitor["spec"]["selector"]["matchLabels"], service["metadata"]["labels"])
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert endpoint["path"] == "/metrics"


def test_kubectl_is_the_one_that_renders_components() -> None:
    """Components need Kustomize v3.7+; Debian's old kubectl would fail in confusing ways."""
    result = run(tool("kubectl"), "version", "--client", "-o", "yaml")
    assert result.returncode == 0, result.stderr
    version = yaml.safe_load(result.stdout)["kustomizeVersion"]
    assert int(re.match(r"v(\d+)", version).group(1)) >= 5, version
