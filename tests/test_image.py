"""The image is built for real and run: deploy/build-image.sh builds the Dockerfile with podman on
a base image made by debootstrap (no image registry is needed), runs it on the host network bound
to 127.0.0.1 with a read-only root filesystem, as deploy/k8s runs it, and checks that /readyz
answers, a score with hidden states works and the server runs as the Dockerfile's USER.

Skips, and says why, only where containers cannot run here (no root, or podman itself fails);
under CI a missing tool fails instead, since .ci/run installs them. A first build on a new machine
takes minutes (debootstrap, torch, the service's dependencies); later builds reuse podman's layer
cache and the base image, and redo only the layers after a source change.
"""

from __future__ import annotations

import json
import math
import os

import pytest

from tests.deploy_tools import ROOT, image_uid, run, tool

BUILD_TIMEOUT_S = 900


def _containers_can_run() -> None:
    for name in ("podman", "runc", "debootstrap"):
        tool(name)  # skips (fails under CI) when it is not installed
    if os.geteuid() != 0:
        pytest.skip("podman builds here as root only (rootless needs subordinate ids)")
    info = run(tool("podman"), "info")
    if info.returncode != 0:
        pytest.skip(f"podman cannot run on this machine: {info.stderr.strip()}")


@pytest.mark.timeout(BUILD_TIMEOUT_S + 60)
def test_the_image_builds_and_serves_as_an_unprivileged_user() -> None:
    _containers_can_run()
    result = run(str(ROOT / "deploy" / "build-image.sh"), timeout=BUILD_TIMEOUT_S)
    assert result.returncode == 0, result.stderr[-6000:]
    print("\n" + "\n".join(line for line in result.stderr.splitlines()
                          if line.startswith("[build-image]")))
    summary = json.loads(result.stdout.splitlines()[-1])
    assert summary["readyz"] == 200
    assert summary["uid"] == image_uid() != 0
    assert len(summary["rewards"]) == 2 and all(map(math.isfinite, summary["rewards"]))
