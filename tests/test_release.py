"""What users install is what works: the wheel and the sdist, each installed NON-editable into a
fresh virtual environment outside the checkout, start `r2m serve` and score.

Every other test runs on the editable checkout, where a package missing from the build (as
`r2m_service.state` once was) still imports from the source tree; this one cannot be fooled so.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import httpx
import pytest

from r2m_service.launch import start_local_server
from tests.deploy_tools import ROOT
from tests.helpers import D_P

TORCH = "torch==2.13.0"  # the CPU build that lies on these machines; the range admits it


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("dist")
    subprocess.run([sys.executable, "-m", "build", "--sdist", "--wheel", "--outdir", str(out),
                    str(ROOT)], check=True, capture_output=True, timeout=600)
    return {"wheel": next(out.glob("r2m-*.whl")), "sdist": next(out.glob("r2m-*.tar.gz"))}


def test_the_wheel_ships_every_package_and_the_openapi_document(
        artifacts: dict[str, Path]) -> None:
    with zipfile.ZipFile(artifacts["wheel"]) as wheel:
        names = set(wheel.namelist())
    for directory, import_name in (("proto", "r2m_proto"), ("client", "r2m_client"),
                                   ("service", "r2m_service"), ("bench", "r2m_bench")):
        for source in (ROOT / directory).rglob("*.py"):
            if "__pycache__" in source.parts:
                continue
            shipped = f"{import_name}/{source.relative_to(ROOT / directory).as_posix()}"
            assert shipped in names, f"{source.relative_to(ROOT)} is not in the wheel"
    assert "r2m_proto/openapi.json" in names


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment outside the checkout, holding torch (the heavy part, shared
    by both artifacts); each test installs its artifact into it on top."""
    path = tmp_path_factory.mktemp("release") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(path)], check=True, timeout=120)
    subprocess.run([str(path / "bin" / "python"), "-m", "pip", "install", "-q", TORCH],
                   check=True, capture_output=True, timeout=900)
    return path


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_an_installed_artifact_serves_and_scores(kind: str, artifacts: dict[str, Path],
                                                 venv: Path, tmp_path: Path) -> None:
    """The artifact alone, non-editable, with its `service` extra resolved by pip."""
    python, r2m = venv / "bin" / "python", venv / "bin" / "r2m"
    subprocess.run([str(python), "-m", "pip", "uninstall", "-q", "-y", "r2m"], check=True,
                   capture_output=True, timeout=300)
    subprocess.run([str(python), "-m", "pip", "install", "-q",
                    f"r2m[service] @ {artifacts[kind].as_uri()}"],
                   check=True, capture_output=True, timeout=900)
    location = subprocess.run([str(python), "-c", "import r2m_service.http.app as a; "
                               "print(a.__file__)"], cwd=tmp_path, check=True,
                              capture_output=True, text=True).stdout
    assert str(venv) in location and str(ROOT) not in location  # the install, not the checkout
    printed = subprocess.run([str(r2m), "openapi"], cwd=tmp_path, check=True,
                             capture_output=True, text=True, timeout=120).stdout
    assert json.loads(printed) == json.loads((ROOT / "proto" / "openapi.json").read_text())
    with start_local_server(tmp_path, "--torch-threads", "1", r2m=[str(r2m)], cwd=tmp_path,
                            timeout=300) as server:
        run = httpx.post(f"{server.url}/v1/runs", timeout=30,
                         json={"policy_hidden_size": D_P, "total_steps": 4})
        assert run.status_code == 201, run.text
        score = httpx.post(f"{server.url}/v1/score", timeout=60, json={
            "run_id": run.json()["run_id"],
            "items": [{"prompt": "2+2?", "response": "4"}, {"prompt": "2+2?", "response": "5"}]})
        assert score.status_code == 200, score.text
        assert len(score.json()["rewards"]) == 2
