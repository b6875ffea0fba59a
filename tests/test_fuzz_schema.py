"""schemathesis against the live OpenAPI document of a real `r2m serve`: every route, JSON and
binary bodies, headers. Zero server errors and zero answers outside the document (status, media
type, headers, body schema), with r2m's one error shape everywhere.

The server is given small limits so generated runs stay cheap and over-limit requests are
exercised too. Positive data may still get 413 or 422: the server checks what a schema cannot
say (limits set by settings, base64 payloads, tensor shapes against the run's D_p, exactly one of
`groups`/`pairs`), and both answers are documented. The safetensors media type stays in the
document: schemathesis sends it arbitrary bytes, which must be a 400/413/422.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, start_server

MiB = 1 << 20
CONFIG = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "413", "422", "429"]

# A checkpoint is a safetensors file: a schema can say "binary", not which bytes parse (400).
[[operations]]
include-path = "/v1/runs/{run_id}/checkpoint"
include-method = "PUT"
checks.positive_data_acceptance.expected-statuses = ["2xx", "400", "401", "403", "404", "413",
                                                     "422", "429"]
"""


@pytest.fixture(scope="module")
def fuzzed_server(server_logs: Path, llama_rm_dir: Path) -> Iterator[Server]:
    server = start_server(server_logs, "--backbone", str(llama_rm_dir), "--max-length", "64",
                          env={"R2M_MAX_RUN_BYTES": str(16 * MiB),
                               "R2M_RUNS_MEMORY_BYTES": str(64 * MiB),
                               "R2M_MAX_BODY_BYTES": str(MiB), "R2M_MAX_ITEMS": "8",
                               "R2M_MIN_VERSION_WAIT_S": "0.2"})
    yield server
    server.stop()


def test_the_live_schema_holds_under_fuzzing(fuzzed_server: Server, tmp_path: Path) -> None:
    httpx.post(f"{fuzzed_server.url}/v1/runs", json={
        "run_id": "fuzz-run", "policy_hidden_size": 16, "total_steps": 10}).raise_for_status()
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG)
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
               f"{fuzzed_server.url}/openapi.json", "--checks", "all",
               "--phases", "examples,coverage,fuzzing", "--max-examples", "25", "--seed", "13",
               "--workers", "1", "--request-timeout", "60",
               "--report", "junit", "--report-dir", str(tmp_path / "report")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          env={"SCHEMATHESIS_HOOKS": "", "PATH": "/usr/bin:/bin"})
    summary = done.stdout[-6000:]
    assert done.returncode == 0, summary
    assert "unhandled error" not in fuzzed_server.log()
