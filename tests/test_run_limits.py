"""Run sizes are bounded before anything is allocated: every dimension and the derived state
size by a setting (422 naming it), and all runs of one server by a count and a byte budget
(least recently used runs evicted to the store, or 429 when it keeps no copy)."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, start_server
from tests.helpers import D_P

MiB = 1 << 20


@pytest.mark.parametrize(("fields", "setting"), [
    ({"policy_hidden_size": 2_567_476, "attention_dim": 941_817}, "max_policy_hidden_size"),
    ({"policy_hidden_size": D_P, "attention_dim": 941_817}, "max_attention_dim"),
    ({"policy_hidden_size": 120_000_000_000_000_000}, "max_policy_hidden_size"),
    ({"policy_hidden_size": D_P, "total_steps": 7_600_000_000_000_000_000}, "max_total_steps"),
])
def test_an_oversized_run_is_a_422_naming_the_limit(
        limits_server: Server, fields: dict[str, int], setting: str) -> None:
    answer = httpx.post(f"{limits_server.url}/v1/runs",
                        json={"total_steps": 10, **fields}, timeout=30)
    assert answer.status_code == 422, answer.text
    assert setting in answer.json()["error"]["message"]
    assert httpx.get(f"{limits_server.url}/healthz").status_code == 200


@pytest.fixture(scope="module")
def two_run_servers(server_logs: Path, llama_rm_dir: Path, tmp_path_factory: pytest.TempPathFactory
                    ) -> Iterator[tuple[Server, Server]]:
    """Room for two runs each: one keeping runs only in memory, one with a checkpoint dir."""
    args = ("--backbone", str(llama_rm_dir), "--max-length", "64", "--max-runs", "2",
            "--max-run-bytes", str(16 * MiB))
    memory = start_server(server_logs, *args)
    on_disk = start_server(server_logs, *args, "--checkpoint-dir",
                           str(tmp_path_factory.mktemp("runs")), "--no-checkpoint-fsync")
    yield memory, on_disk
    memory.stop()
    on_disk.stop()


def _create(server: Server) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/runs", json={"policy_hidden_size": D_P,
                                                     "total_steps": 10}, timeout=30)


def _runs_held(server: Server) -> float:
    return float(re.search(r"^r2m_runs (\S+)$", httpx.get(f"{server.url}/metrics").text,
                           re.MULTILINE).group(1))


def test_a_run_larger_than_max_run_bytes_is_a_422(two_run_servers: tuple[Server, Server]
                                                  ) -> None:
    answer = httpx.post(f"{two_run_servers[0].url}/v1/runs", json={
        "policy_hidden_size": 4096, "attention_dim": 1024, "total_steps": 10})
    assert answer.status_code == 422
    assert "max_run_bytes = 16777216" in answer.json()["error"]["message"]


def test_a_full_server_without_a_copy_refuses_a_run_with_429(
        two_run_servers: tuple[Server, Server]) -> None:
    memory, _ = two_run_servers
    kept = [_create(memory).json()["run_id"] for _ in range(2)]
    refused = _create(memory)
    assert refused.status_code == 429 and "max_runs = 2" in refused.json()["error"]["message"]
    assert refused.headers["Retry-After"]
    assert all(httpx.get(f"{memory.url}/v1/runs/{r}").status_code == 200 for r in kept)


def test_a_full_server_evicts_its_least_recently_used_run_to_the_store(
        two_run_servers: tuple[Server, Server]) -> None:
    _, on_disk = two_run_servers
    ids = [_create(on_disk).json()["run_id"] for _ in range(3)]
    assert _runs_held(on_disk) == 2
    again = httpx.get(f"{on_disk.url}/v1/runs/{ids[0]}")  # reloaded, evicting another
    assert again.status_code == 200 and again.json()["version"] == 0
    assert _runs_held(on_disk) == 2
    metrics = httpx.get(f"{on_disk.url}/metrics").text
    assert 'r2m_limit{setting="max_runs"} 2.0' in metrics
    assert "r2m_run_state_bytes" in metrics and 'r2m_store_bytes{kind="rte_cache"}' in metrics
