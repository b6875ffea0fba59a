"""r2m on Ray Serve: the shipped config deploys the real app, and on a real local Ray cluster two
replicas share runs through Redis and lose no acknowledged update when one is SIGKILLed.

The cluster runs inside a network namespace of its own with only loopback up (Ray's services
otherwise bind the machine's other addresses); tests/ray_serve_scenario.py drives it there and
reports what it saw, and this file judges that.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("ray.serve", reason="pip install 'ray[serve]' (in the dev extra)")

from ray.serve.schema import ServeDeploySchema

from r2m_service.ray import app_builder
from r2m_service.settings import Settings
from tests.deploy_tools import ROOT
from tests.ray_serve_scenario import netns_processes

CONFIG = ROOT / "deploy" / "ray" / "serve.yaml"
SCENARIO_TIMEOUT_S = 280  # the whole test stays within 5 minutes in CI


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    return yaml.safe_load(CONFIG.read_text())


def test_the_config_is_a_valid_serve_config_for_the_r2m_app(config: dict[str, Any]) -> None:
    schema = ServeDeploySchema.model_validate(config)
    (app,) = schema.applications
    assert app.import_path == "r2m_service.ray:app_builder"
    assert set(app.args) <= set(Settings.model_fields)
    (deployment,) = app.deployments
    assert deployment.name == "r2m"
    assert deployment.autoscaling_config["min_replicas"] >= 2  # a replica may always be down
    assert deployment.graceful_shutdown_timeout_s >= 30  # in-flight requests drain, as in r2m serve


def test_the_builder_binds_the_settings_and_rejects_unknown_ones(config: dict[str, Any]) -> None:
    args = config["applications"][0]["args"]
    assert app_builder(args) is not None
    with pytest.raises(ValueError, match="redis_uri"):
        app_builder({**args, "redis_uri": "redis://typo:6379/0"})


def _run_scenario(tmp_path: Path) -> dict[str, Any]:
    """The scenario in a fresh network namespace (root's `unshare --net`), loopback up. On a
    timeout everything left in that namespace is killed by pid."""
    unshare, ip = shutil.which("unshare"), shutil.which("ip", path="/usr/sbin:/sbin:/usr/bin")
    if os.geteuid() != 0 or unshare is None or ip is None:
        reason = "needs root with unshare and ip (util-linux, iproute2) for a private netns"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    home = tmp_path / "home"  # Ray writes under $HOME too: keep it in the test's own directory
    home.mkdir()
    figures = tmp_path / "figures.json"
    cmd = [unshare, "--net", "--", "sh", "-c", f'{ip} link set lo up && exec "$0" "$@"',
           sys.executable, "-m", "tests.ray_serve_scenario", str(figures)]
    with (tmp_path / "scenario.log").open("wb") as output:
        scenario = subprocess.Popen(cmd, cwd=ROOT, stdout=output, stderr=subprocess.STDOUT,
                                    env={**os.environ, "HOME": str(home)})
    try:
        scenario.wait(timeout=SCENARIO_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        for pid in netns_processes(os.readlink(f"/proc/{scenario.pid}/ns/net")):
            os.kill(pid, signal.SIGKILL)
        scenario.wait()
    log = (tmp_path / "scenario.log").read_text(errors="replace")
    assert scenario.returncode == 0, f"scenario failed ({scenario.returncode}):\n{log}"
    return json.loads(figures.read_text())


def test_two_replicas_share_a_run_and_a_killed_one_loses_no_update(tmp_path: Path) -> None:
    figures = _run_scenario(tmp_path)
    print("\nRay Serve figures:", json.dumps({**figures, "acknowledged": len(
        figures["acknowledged"])}))
    assert figures["replicas"] == figures["replicas_after_restart"] == 2
    versions = [version for version, _ in figures["acknowledged"]]
    updated_by = {replica for _, replica in figures["acknowledged"]}
    assert updated_by - {figures["created_by"]}, "no update went through the other replica"
    assert figures["replacement"] in updated_by
    assert versions == list(range(1, len(versions) + 1))  # each ack a new version, no gaps
    assert set(figures["final_versions"].values()) == {len(versions)}  # every ack is applied
    assert set(figures["final_steps"].values()) == {len(versions)}
