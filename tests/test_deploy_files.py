"""The shipped deployment files are valid and complete, checked by the tools that will run them.

The image itself is built and run by tests/test_image.py (podman); here the Dockerfile is linted
(hadolint) and its structure asserted, its build context is checked to hold everything
`pip install .` needs, and the Compose file goes through Compose's own loader and schema
(`docker-compose config`) before every file it mounts is checked to exist.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from tests.deploy_tools import DEPLOY, ROOT, run, tool

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

COMPOSE_FILE = ROOT / "docker-compose.yml"
PROFILES = ("cpu", "gpu", "scale")
R2M_SERVICES = ("r2m", "r2m-gpu", "r2m-replica")
SUPPORT_SERVICES = {"redis", "prometheus", "grafana"}
# The stack refuses to start without it (there is no default Grafana password).
REQUIRED_ENV = {"GRAFANA_ADMIN_PASSWORD": "test-only-password"}


def compose_cli(*args: str, env: dict[str, str] | None = None
                ) -> subprocess.CompletedProcess[str]:
    """The Compose v2 binary on docker-compose.yml, with the required variables set (or `env`)."""
    full_env = {k: v for k, v in os.environ.items()
                if k not in REQUIRED_ENV and not k.startswith("COMPOSE_")}
    full_env.update(REQUIRED_ENV if env is None else env)
    return subprocess.run([tool("docker-compose"), "-f", str(COMPOSE_FILE), *args], cwd=ROOT,
                          env=full_env, capture_output=True, text=True, timeout=60, check=False)


def _profile_args(profiles: tuple[str, ...]) -> list[str]:
    return [a for p in profiles for a in ("--profile", p)]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """The stack as Compose itself resolves it (anchors merged, paths absolute), all profiles."""
    result = compose_cli(*_profile_args(PROFILES), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_compose_file_validates_against_the_compose_spec() -> None:
    result = compose_cli("config", "--quiet")
    assert result.returncode == 0, result.stderr


def started(*profiles: str, targets: tuple[str, ...] = ()) -> set[str]:
    """What `docker compose --profile P… up -d [targets…]` starts: with no targets every enabled
    service; with targets those (their profiles enabled automatically) and what they depend on."""
    enabled = set(profiles)
    if targets:  # Compose enables the profiles of services named on the command line
        everything = compose_cli("--profile", "*", "config", "--format", "json")
        assert everything.returncode == 0, everything.stderr
        services = json.loads(everything.stdout)["services"]
        enabled |= {p for t in targets for p in services[t].get("profiles", [])}
    result = compose_cli(*_profile_args(tuple(sorted(enabled))), "config", "--format", "json")
    assert result.returncode == 0, result.stderr
    services = json.loads(result.stdout)["services"]
    if not targets:
        return set(services)
    wanted, todo = set(), list(targets)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo.extend(services[name].get("depends_on", {}))
    return wanted


def test_each_documented_command_starts_exactly_one_kind_of_r2m() -> None:
    """`--scale r2m-replica=4` once started the single `r2m` too: every r2m service now sits in
    its own profile, and no profile (or none at all) starts two kinds."""
    assert started() == SUPPORT_SERVICES  # a bare `up` starts no r2m at all
    assert started("cpu") == SUPPORT_SERVICES | {"r2m"}
    assert started("gpu") == SUPPORT_SERVICES | {"r2m-gpu"}
    assert started("scale") == SUPPORT_SERVICES | {"r2m-replica", "lb"}
    assert started("scale", targets=("lb", "prometheus", "grafana")) == (
        SUPPORT_SERVICES | {"r2m-replica", "lb"})
    assert started(targets=("r2m",)) == {"r2m", "redis"}


def test_every_r2m_service_needs_a_profile(compose: dict[str, Any]) -> None:
    for name in R2M_SERVICES:
        assert len(compose["services"][name].get("profiles", [])) == 1, name


def test_grafana_has_no_default_admin_password() -> None:
    """No `admin`/`admin`: without GRAFANA_ADMIN_PASSWORD Compose refuses the whole stack."""
    unset = compose_cli("config", "--quiet", env={})
    assert unset.returncode != 0
    assert "GRAFANA_ADMIN_PASSWORD" in unset.stderr
    empty = compose_cli("config", "--quiet", env={"GRAFANA_ADMIN_PASSWORD": ""})
    assert empty.returncode != 0
    chosen = compose_cli("config", "--format", "json",
                         env={"GRAFANA_ADMIN_PASSWORD": "chosen-by-the-operator"})
    assert chosen.returncode == 0, chosen.stderr
    grafana = json.loads(chosen.stdout)["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "chosen-by-the-operator"
    assert "GRAFANA_ADMIN_PASSWORD:-" not in COMPOSE_FILE.read_text()


def test_every_mounted_file_exists_in_the_repo(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            if volume["type"] == "bind":
                assert Path(volume["source"]).exists(), f"{name} mounts missing {volume['source']}"
        build = service.get("build")
        if build:
            assert (Path(build["context"]) / build.get("dockerfile", "Dockerfile")).is_file()
    for name, secret in compose.get("secrets", {}).items():
        assert Path(secret["file"]).is_file(), f"secret {name}: {secret['file']} is missing"


def test_every_dependency_and_secret_is_declared(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for dependency, how in service.get("depends_on", {}).items():
            assert dependency in services, f"{name} depends on unknown {dependency}"
            if how["condition"] == "service_healthy":
                assert "healthcheck" in services[dependency], f"{dependency} has no healthcheck"
        for secret in service.get("secrets", []):
            assert secret["source"] in compose.get("secrets", {})


def test_r2m_services_are_wired_to_redis_auth_and_a_readiness_check(
        compose: dict[str, Any]) -> None:
    for name in R2M_SERVICES:
        service = compose["services"][name]
        env = service["environment"]
        assert env["R2M_REDIS_URL"] == "redis://redis:6379/0"
        assert env["R2M_API_KEYS_FILE"] == f"/run/secrets/{service['secrets'][0]['source']}"
        assert service["depends_on"]["redis"]["condition"] == "service_healthy"
        assert service["healthcheck"]["test"][-1] == "/readyz"
        assert _seconds(service["stop_grace_period"]) > 30  # uvicorn drains for up to 30 s


def test_gpu_profile_reserves_a_gpu_and_builds_the_cuda_image(compose: dict[str, Any]) -> None:
    gpu = compose["services"]["r2m-gpu"]
    device = gpu["deploy"]["resources"]["reservations"]["devices"][0]
    assert device["capabilities"] == ["gpu"] and device["driver"] == "nvidia"
    assert gpu["build"]["args"]["TORCH_VARIANT"].startswith("cu")
    assert gpu["environment"]["R2M_DEVICE"].startswith("cuda")
    assert compose["services"]["r2m"]["build"]["args"]["TORCH_VARIANT"] == "cpu"


def test_scale_profile_puts_two_replicas_behind_nginx(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert services["r2m-replica"]["deploy"]["replicas"] == 2
    assert "ports" not in services["r2m-replica"]  # reached only through the load balancer
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert re.search(r"server\s+r2m-replica:8000\b", conf)


def test_redis_persists_with_aof_and_has_a_healthcheck(compose: dict[str, Any]) -> None:
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(v["target"] == "/data" for v in redis["volumes"])
    assert "redis-cli" in redis["healthcheck"]["test"]


def test_prometheus_and_grafana_mount_what_their_configs_refer_to(
        compose: dict[str, Any]) -> None:
    prometheus = compose["services"]["prometheus"]
    mounts = {v["target"]: Path(v["source"]) for v in prometheus["volumes"]
              if v["type"] == "bind"}
    config_target = PurePosixPath(_flag(prometheus["command"], "--config.file"))
    config = yaml.safe_load(mounts[str(config_target)].read_text())
    for rule_file in config["rule_files"]:
        assert str(config_target.parent / rule_file) in mounts, f"{rule_file} is not mounted"
    names = {n for job in config["scrape_configs"] for sd in job.get("dns_sd_configs", [])
             for n in sd["names"]}
    assert set(R2M_SERVICES) <= names

    grafana = compose["services"]["grafana"]
    mounts = {v["target"]: Path(v["source"]) for v in grafana["volumes"] if v["type"] == "bind"}
    provisioning = mounts["/etc/grafana/provisioning"]
    providers = yaml.safe_load((provisioning / "dashboards" / "r2m.yml").read_text())
    dashboards_dir = mounts[providers["providers"][0]["options"]["path"]]
    assert (dashboards_dir / "r2m.json").is_file()
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home.startswith(providers["providers"][0]["options"]["path"] + "/")


def test_dashboard_queries_the_provisioned_datasource() -> None:
    datasources = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = datasources["datasources"][0]["uid"]
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    dashboard = json.loads((DEPLOY / "grafana" / "dashboards" / "r2m.json").read_text())
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    assert panels
    for panel in panels:
        assert panel["datasource"]["uid"] == uid, panel["title"]
        assert panel["targets"], panel["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))


# ---- Prometheus ----------------------------------------------------------------------------------

def test_promtool_accepts_the_prometheus_config() -> None:
    result = run(tool("promtool"), "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_accepts_the_alert_rules() -> None:
    result = run(tool("promtool"), "check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_rules_cover_the_failure_modes() -> None:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    exprs = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert 'up{job="r2m"} == 0' in exprs["R2MDown"]
    assert "r2m_request_duration_seconds_bucket" in exprs["R2MHighP99Latency"]
    assert "0.99" in exprs["R2MHighP99Latency"]
    assert "r2m_queue_size" in exprs["R2MQueueSaturated"]
    assert "/v1/update" in exprs["R2MUpdateFailures"]
    assert "r2m_module_overhead_ratio" in exprs["R2MHighModuleOverhead"]


# ---- nginx ---------------------------------------------------------------------------------------

def test_nginx_accepts_the_load_balancer_config(tmp_path: Path) -> None:
    """`nginx -t` with the replica's DNS name pointed at loopback (no compose network here)."""
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text().replace("r2m-replica:", "127.0.0.1:")
    (tmp_path / "nginx.conf").write_text(conf)
    result = run(tool("nginx"), "-t", "-q", "-p", str(tmp_path), "-c", str(tmp_path / "nginx.conf"),
                 "-g", f"pid {tmp_path}/nginx.pid; error_log stderr;")
    assert result.returncode == 0, result.stderr


# ---- Dockerfile ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dockerfile() -> DockerfileParser:
    parser = DockerfileParser(fileobj=(ROOT / "Dockerfile").open("rb"))
    return parser


def _stages(parser: DockerfileParser) -> list[list[dict[str, Any]]]:
    stages: list[list[dict[str, Any]]] = []
    for instruction in parser.structure:
        if instruction["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(instruction)
    return stages


def _stage(parser: DockerfileParser, name: str) -> list[dict[str, Any]]:
    return next(stage for stage in _stages(parser)
                if stage[0]["value"].split()[-2:] == ["AS", name])


def _one(stage: list[dict[str, Any]], name: str) -> str:
    found = [i["value"] for i in stage if i["instruction"] == name]
    assert len(found) == 1, f"expected one {name} in the final stage, got {found}"
    return found[0]


def test_hadolint_passes() -> None:
    result = run(tool("hadolint"), str(ROOT / "Dockerfile"))
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_is_multi_stage_and_runs_as_non_root(dockerfile: DockerfileParser) -> None:
    stages = _stages(dockerfile)
    assert len(stages) >= 2
    final = stages[-1]
    user = _one(final, "USER").split(":")[0]
    assert user not in ("root", "0")
    copies = [i["value"] for i in final if i["instruction"] == "COPY"]
    assert copies == ["--from=build /opt/venv /opt/venv"]  # nothing but the built venv
    assert not any(i["instruction"] == "RUN" and "pip" in i["value"] for i in final)


def test_dockerfile_healthcheck_entrypoint_and_stop_signal(
        dockerfile: DockerfileParser) -> None:
    final = _stages(dockerfile)[-1]
    healthcheck = _one(final, "HEALTHCHECK")
    assert '"r2m_service.probe", "/healthz"]' in healthcheck
    assert json.loads(_one(final, "ENTRYPOINT")) == ["r2m", "serve"]
    assert _one(final, "STOPSIGNAL") == "SIGTERM"
    env = dockerfile.envs
    assert env["R2M_HOST"] == "0.0.0.0" and env["HF_HUB_OFFLINE"] == "1"
    assert env["R2M_PORT"] == "8000" and "8000" in _one(final, "EXPOSE")


def test_torch_index_follows_the_build_argument(dockerfile: DockerfileParser) -> None:
    """PyTorch's index for TORCH_VARIANT by default; TORCH_INDEX_URL replaces it (a mirror, or
    the local index deploy/build-image.sh serves)."""
    build = _stage(dockerfile, "build")
    args = dict(i["value"].split("=", 1) for i in build if i["instruction"] == "ARG")
    assert args["TORCH_VARIANT"] == "cpu"
    assert args["TORCH_INDEX_URL"] == "https://download.pytorch.org/whl/${TORCH_VARIANT}"
    torch_install = next(i["value"] for i in build
                         if i["instruction"] == "RUN" and "torch==" in i["value"])
    assert '--index-url "${TORCH_INDEX_URL}"' in torch_install


def test_build_context_holds_every_source_pip_needs(dockerfile: DockerfileParser) -> None:
    """Each package dir setup.py maps (and the packaging files, the readme) is COPY'd and not
    .dockerignore'd."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = set(package_dirs().values()) | {"pyproject.toml", "setup.py"}
    needed.add(pyproject["project"]["readme"])
    build = _stage(dockerfile, "build")
    copied = {src for i in build if i["instruction"] == "COPY" and "--from" not in i["value"]
              for src in i["value"].split()[:-1]}
    allowed = {line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.startswith("!")}
    assert needed <= copied, f"not copied into the image: {needed - copied}"
    assert copied <= allowed, f"copied but excluded by .dockerignore: {copied - allowed}"


def test_the_image_build_context_builds_a_wheel(tmp_path: Path) -> None:
    """`pip install .` inside the image sees only the context: build from exactly that."""
    context = tmp_path / "context"
    context.mkdir()
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        if line.startswith("!"):
            source = ROOT / line[1:].rstrip("/")
            if source.is_dir():
                shutil.copytree(source, context / source.name,
                                ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(source, context / source.name)
    result = run(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                 "-w", str(tmp_path / "wheels"), str(context), timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert list((tmp_path / "wheels").glob("r2m-*.whl"))


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)s", duration)
    assert match, duration
    return float(match.group(1))


def _flag(command: list[str], name: str) -> str:
    return next(part.split("=", 1)[1] for part in command if part.startswith(name + "="))


def package_dirs() -> dict[str, str]:
    """setup.py's import name → directory map, read without running setup()."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    assignment = next(node for node in tree.body if isinstance(node, ast.Assign)
                      and any(getattr(t, "id", None) == "IMPORT_NAMES" for t in node.targets))
    return ast.literal_eval(assignment.value)
