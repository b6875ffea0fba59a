"""Many replicas on one Redis: one truth per run, nothing lost (real redis-server, real
`r2m serve` processes on the embedded default backbone)."""

from __future__ import annotations

import contextlib
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
import redis
import torch
from safetensors.torch import load as load_safetensors

from r2m_client import Group, R2MClient, R2MError, R2MStatusError
from tests.conftest import Server, start_server
from tests.helpers import D_P, hidden
from tests.redis_server import RedisServer, start_redis

PROMPT = "Which city is the capital of Italy?"


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def replicas(redis_server: RedisServer, server_logs: Path) -> Iterator[tuple[Server, Server]]:
    env = {"R2M_REDIS_URL": redis_server.url, "R2M_REDIS_PREFIX": f"t-{uuid.uuid4().hex[:8]}"}
    a = start_server(server_logs, env=env)
    b = start_server(server_logs, env=env)
    yield a, b
    a.stop()
    b.stop()


def group(tag: str, seed: int = 0, k: int = 4) -> Group:
    return Group(PROMPT, [f"{tag} answer {i}: Rome, of course." for i in range(k)],
                 hidden([3 + i for i in range(k)], D_P, seed=seed))


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else 0.0


def test_a_replica_reads_another_replicas_writes(replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    g = group("rw")
    with R2MClient(a.url) as on_a, R2MClient(b.url) as on_b:
        run = on_a.create_run(policy_hidden_size=D_P, total_steps=10, learning_rate=1e-2)
        before = on_b.score(run.run_id, [PROMPT] * 4, g.responses, g.hidden_states, step=5)
        assert before.version == 0
        assert on_a.update(run.run_id, groups=[g], step=5).version == 1
        after_a = on_a.score(run.run_id, [PROMPT] * 4, g.responses, g.hidden_states, step=5)
        after_b = on_b.score(run.run_id, [PROMPT] * 4, g.responses, g.hidden_states, step=5,
                             min_version=1)
        assert after_b.version == after_a.version == 1
        assert after_b.rewards == after_a.rewards != before.rewards
        assert on_b.get_run(run.run_id).step == 6
        assert on_b.checkpoint(run.run_id) == on_a.checkpoint(run.run_id)


def test_min_version_that_never_comes_is_409(replicas: tuple[Server, Server]) -> None:
    a, _ = replicas
    with R2MClient(a.url) as rm:
        run = rm.create_run(policy_hidden_size=D_P, total_steps=10)
        answer = httpx.post(f"{a.url}/v1/score", json={
            "run_id": run.run_id, "min_version": 5,
            "items": [{"prompt": "p", "response": "r"}]}, timeout=30)
    assert answer.status_code == 409
    assert answer.json()["error"]["field"] == "min_version"


def test_the_rte_cache_is_shared_between_replicas(replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    g = group(f"cache-{uuid.uuid4().hex[:6]}")
    with R2MClient(a.url) as on_a, R2MClient(b.url) as on_b:
        run = on_a.create_run(policy_hidden_size=D_P, total_steps=10)
        on_a.score(run.run_id, [PROMPT] * 4, g.responses, g.hidden_states, step=5)
        backbone_runs = metric(b.url, "r2m_backbone_duration_seconds_count")
        on_b.update(run.run_id, groups=[g], step=5)
        assert metric(b.url, "r2m_backbone_duration_seconds_count") == backbone_runs


def test_concurrent_updates_apply_exactly_once_in_order(
        replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    with R2MClient(a.url) as rm:
        run = rm.create_run(policy_hidden_size=D_P, total_steps=10, learning_rate=1e-2, seed=42)
        twin = rm.create_run(policy_hidden_size=D_P, total_steps=10, learning_rate=1e-2, seed=42)
    groups = {i: group(f"conc{i}", seed=i) for i in range(8)}

    def apply(i: int) -> tuple[int, int]:
        with R2MClient((a, b)[i % 2].url) as rm:
            return rm.update(run.run_id, groups=[groups[i]], step=4).version, i

    with ThreadPoolExecutor(4) as pool:
        applied = sorted(pool.map(apply, range(8)))
    assert [version for version, _ in applied] == list(range(1, 9))  # no gaps, no repeats
    with R2MClient(b.url) as rm:  # a sequential replay in version order gives the same weights
        for _, i in applied:
            rm.update(twin.run_id, groups=[groups[i]], step=4)
        final = load_safetensors(rm.checkpoint(run.run_id))
        replay = load_safetensors(rm.checkpoint(twin.run_id))
    for name, tensor in final.items():
        assert torch.equal(tensor, replay[name]), name


def test_a_killed_lock_holder_frees_the_run_after_its_lease(
        redis_server: RedisServer, server_logs: Path) -> None:
    prefix = f"t-{uuid.uuid4().hex[:8]}"
    env = {"R2M_REDIS_URL": redis_server.url, "R2M_REDIS_PREFIX": prefix,
           "R2M_LOCK_LEASE_S": "2", "R2M_MAX_ITEMS": "8192"}
    victim = start_server(server_logs, env=env)
    survivor = start_server(server_logs, env=env)
    try:
        with R2MClient(victim.url) as rm:
            run = rm.create_run(policy_hidden_size=D_P, total_steps=10, learning_rate=1e-2)
            rm.update(run.run_id, groups=[group("acked", seed=1)], step=3)
            acknowledged = rm.checkpoint(run.run_id)
        big = [group(f"slow{j}-{uuid.uuid4().hex[:6]}", seed=j, k=8) for j in range(500)]
        threading.Thread(target=_update_quietly, args=(victim.url, run.run_id, big),
                         daemon=True).start()
        lock_key = f"{prefix}:run:{{{run.run_id}}}:lock"
        client = redis.Redis.from_url(redis_server.url)
        deadline = time.monotonic() + 60
        while not client.exists(lock_key):
            assert time.monotonic() < deadline, "the slow update never took the lock"
            time.sleep(0.01)
        victim.stop(signal.SIGKILL)
        with R2MClient(survivor.url) as rm:
            assert rm.checkpoint(run.run_id) == acknowledged  # v1 intact, nothing half-applied
            assert rm.update(run.run_id, groups=[group("after", seed=2)], step=3).version == 2
    finally:
        victim.stop(signal.SIGKILL)
        survivor.stop()


def _update_quietly(url: str, run_id: str, groups: list[Group]) -> None:
    # the server is killed mid-request on purpose
    with contextlib.suppress(R2MError), R2MClient(url, retries=0, timeout=120) as rm:
        rm.update(run_id, groups=groups, step=3)


def test_redis_outage_and_recovery(tmp_path: Path, server_logs: Path) -> None:
    own_redis = start_redis(tmp_path)
    server = start_server(server_logs, env={"R2M_REDIS_URL": own_redis.url})
    g = group("outage")
    try:
        with R2MClient(server.url, retries=0) as rm:
            run = rm.create_run(policy_hidden_size=D_P, total_steps=10, learning_rate=1e-2)
            assert rm.update(run.run_id, groups=[g], step=5).version == 1
            scored = rm.score(run.run_id, [PROMPT] * 4, g.responses, g.hidden_states, step=5)
            own_redis.stop()

            assert httpx.get(f"{server.url}/readyz").status_code == 503
            with pytest.raises(R2MStatusError) as refused:
                rm.update(run.run_id, groups=[g], step=5)
            assert refused.value.status_code == 503
            during = rm.score(run.run_id, [PROMPT] * 4, g.responses, g.hidden_states, step=5)
            assert during.rewards == scored.rewards and during.version == 1  # still serving
            assert rm.health()

            own_redis.start()  # same port, same append-only file
            deadline = time.monotonic() + 30
            while httpx.get(f"{server.url}/readyz").status_code != 200:
                assert time.monotonic() < deadline, "did not recover after redis came back"
                time.sleep(0.1)
            assert rm.update(run.run_id, groups=[g], step=5).version == 2
            assert rm.get_run(run.run_id).version == 2
    finally:
        server.stop()
        own_redis.stop()


def test_checkpoint_dir_restores_runs_bit_exactly(tmp_path: Path, server_logs: Path) -> None:
    args = ("--checkpoint-dir", str(tmp_path / "runs"))
    updates = [group(f"ckpt{i}", seed=i) for i in range(3)]
    server = start_server(server_logs, *args)
    try:
        with R2MClient(server.url) as rm:
            run = rm.create_run(policy_hidden_size=D_P, total_steps=10, learning_rate=1e-2,
                                seed=9)
            for g in updates[:2]:
                rm.update(run.run_id, groups=[g], step=4)
            saved = rm.checkpoint(run.run_id)
    finally:
        server.stop()
    server = start_server(server_logs, *args)
    try:
        with R2MClient(server.url) as rm:
            restored = rm.get_run(run.run_id)
            assert (restored.version, restored.step) == (2, 5)
            assert rm.checkpoint(run.run_id) == saved
            rm.update(run.run_id, groups=[updates[2]], step=4)  # needs the AdamW moments too
            twin = rm.create_run(policy_hidden_size=D_P, total_steps=10, learning_rate=1e-2,
                                 seed=9)
            for g in updates:
                rm.update(twin.run_id, groups=[g], step=4)
            a = load_safetensors(rm.checkpoint(run.run_id))
            b = load_safetensors(rm.checkpoint(twin.run_id))
        assert all(torch.equal(a[name], b[name]) for name in a)
    finally:
        server.stop()


def test_creating_one_id_on_two_replicas_makes_one_run(replicas: tuple[Server, Server]) -> None:
    body = {"policy_hidden_size": D_P, "total_steps": 10, "run_id": f"same-{uuid.uuid4().hex}"}

    def create(server: Server) -> httpx.Response:
        return httpx.post(f"{server.url}/v1/runs", json=body, timeout=30)

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(create, [*replicas, *replicas]))
    assert sorted(a.status_code for a in answers) in ([200, 200, 200, 201],
                                                      [200, 200, 201, 409], [200, 201, 409, 409])
    made = [a.json() for a in answers if a.status_code in (200, 201)]
    assert all(info == made[0] for info in made)  # one run, one seed, whoever answered
