"""A version kept as the optimizer step that made it (`run_steps.py`) comes back bit-for-bit:
replayed on the CPU, and through the Redis store (chunks or a shared directory) on another
replica, after a restart, and by catching up one step at a time. Also: what a writer that died
before its commit wrote is cleaned up. Real redis-server, the service's own run directory and
stores; the "replicas" are two run directories on one store, each with its own runs."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import redis
import torch
from prometheus_client import CollectorRegistry, Counter

from r2m_proto.schemas import CreateRunRequest, RunConfig, UpdateResponse
from r2m_service.guards import optimizer_step
from r2m_service.run_directory import RunDirectory
from r2m_service.run_state import decode_run, encode_run, restore_run
from r2m_service.run_steps import encode_step, replay_step
from r2m_service.runs import Run, build_run
from r2m_service.state.blobs import STEP, UNCOMMITTED_TTL_S
from r2m_service.state.redis_store import RedisStore
from r2m_service.tensor_files import dump_tensors
from tests.redis_server import RedisServer, start_redis

D_RM, D_P, D = 16, 12, 8
CPU = torch.device("cpu")


def config(**overrides: Any) -> RunConfig:
    values = {"policy_hidden_size": D_P, "total_steps": 100, "attention_dim": D, "seed": 7,
              "learning_rate": 3e-2, "weight_decay": 0.01, "head_learning_rate": 1e-2,
              "max_grad_norm": 0.5, **overrides}
    return RunConfig(**values)


def train(i: int, learning_rate: float | None = None) -> Callable[[Run], UpdateResponse]:
    """One update as the engine takes it (clip, per-request rate, step, advance), on inputs
    that depend on `i` only."""
    def step(run: Run) -> UpdateResponse:
        g = torch.Generator().manual_seed(i)
        rte = torch.randn(2, D_RM, generator=g)
        hidden = [torch.randn(3 + k, D_P, generator=g) for k in range(2)]
        rewards = run.module(rte, hidden, 0.7)
        loss = -torch.nn.functional.logsigmoid(rewards[0] - rewards[1])
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer_step(run.optimizer, run.module, run.config.max_grad_norm, learning_rate)
        run.advance(run.step)
        return UpdateResponse(version=run.version, step=run.step, loss=loss.item(),
                              bt_loss=loss.item(), gre_loss=None, omega=0.7,
                              grad_norm=0.0)
    return step


def everything(run: Run) -> dict[str, torch.Tensor]:
    """Weights, moments and step counts, by name: what must match bit-for-bit."""
    tensors = {f"w/{name}": p.detach().clone() for name, p in run.module.named_parameters()}
    names = {p: name for name, p in run.module.named_parameters()}
    for param, moments in run.optimizer.state.items():
        for moment, value in moments.items():
            tensors[f"m/{names[param]}/{moment}"] = value.clone()
    return tensors


def assert_identical(a: Run, b: Run) -> None:
    assert (a.version, a.step) == (b.version, b.step)
    left, right = everything(a), everything(b)
    assert left.keys() == right.keys() and any(k.startswith("m/") for k in left)
    for name, tensor in left.items():
        assert torch.equal(tensor, right[name]), name


def test_replaying_logged_steps_on_a_snapshot_is_bit_exact() -> None:
    writer = build_run("r", config(), D_RM, "bb", None, CPU)
    snapshot = b"".join(encode_run(writer))
    steps = []
    for i in range(5):  # clipped every time (max_grad_norm 0.5), one at its own rate
        train(i, learning_rate=0.2 if i == 2 else None)(writer)
        steps.append(b"".join(encode_step(writer) or []))
    reader = restore_run(decode_run(snapshot), steps, D_RM, CPU)
    assert_identical(writer, reader)
    assert reader.optimizer.param_groups[0]["lr"] == 3e-2  # the per-request rate was undone


def test_a_step_replays_only_onto_the_version_before_it() -> None:
    writer = build_run("r", config(), D_RM, "bb", None, CPU)
    train(0)(writer)
    first = b"".join(encode_step(writer) or [])
    train(1)(writer)
    second = b"".join(encode_step(writer) or [])
    reader = build_run("r", config(), D_RM, "bb", None, CPU)
    with pytest.raises(ValueError, match="cannot follow"):
        replay_step(reader, second)
    replay_step(reader, first)
    replay_step(reader, second)
    assert_identical(writer, reader)


def test_a_version_not_made_by_a_step_has_no_step_record() -> None:
    run = build_run("r", config(), D_RM, "bb", None, CPU)
    assert encode_step(run) is None  # created
    train(0)(run)
    assert encode_step(run) is not None
    run.version += 1  # e.g. a checkpoint import
    assert encode_step(run) is None


# ---- through the Redis store ----------------------------------------------------------------


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = start_redis(tmp_path_factory.mktemp("redis"))
    yield server
    server.stop()


async def on_this_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


@asynccontextmanager
async def replica(url: str, prefix: str, **store: Any) -> AsyncIterator[RunDirectory]:
    counter = Counter("w", "w", registry=CollectorRegistry())
    directory = RunDirectory(RedisStore(url, rte_write_failures=counter, prefix=prefix, **store),
                             on_this_thread, reward_hidden_size=D_RM, device=CPU,
                             min_version_wait_s=1.0)
    await directory.start()
    try:
        yield directory
    finally:
        await directory.store.close()


def build(run_id: str, cfg: RunConfig) -> Run:
    return build_run(run_id, cfg, D_RM, "bb", None, CPU)


async def create_and_update(writer: RunDirectory, run_id: str, updates: range) -> Run:
    request = CreateRunRequest(**config().model_dump(), run_id=run_id)
    await writer.create(request, build)
    run = await writer.current(run_id)
    for i in updates:
        await writer.update(run, f"key-{i}", train(i, 0.1 if i % 3 == 0 else None))
    return run


@pytest.mark.parametrize("blob_dir", [False, True], ids=["redis-chunks", "checkpoint-dir"])
def test_another_replica_and_a_restart_load_a_logged_version_bit_exactly(
        redis_server: RedisServer, tmp_path: Path, blob_dir: bool) -> None:
    prefix = f"steps-{uuid.uuid4().hex[:6]}"
    store = {"snapshot_every": 4, "blob_dir": str(tmp_path / "blobs") if blob_dir else None}

    async def scenario() -> None:
        async with replica(redis_server.url, prefix, **store) as a, \
                replica(redis_server.url, prefix, **store) as b:
            run = await create_and_update(a, "run-x", range(6))  # snapshots at 0 and 4
            head = json.loads(redis.Redis.from_url(redis_server.url).get(
                f"{prefix}:run:{{run-x}}:head"))
            assert [(ref["version"], ref["kind"]) for ref in head["chain"]] == [
                (4, "state"), (5, STEP), (6, STEP)]
            on_b = await b.current("run-x")  # a replica that never held it
            assert_identical(run, on_b)
            await a.update(run, "key-6", train(6))  # b catches up by one step, no snapshot
            assert await b.store.load("run-x", since=6) is not None
            caught_up = await b.current("run-x")
            assert caught_up is on_b
            assert_identical(run, caught_up)
            await b.update(caught_up, "key-7", train(7))  # ...and writes from there
            await a.current("run-x")
            assert_identical(run, caught_up)
        async with replica(redis_server.url, prefix, **store) as restarted:
            assert_identical(run, await restarted.current("run-x"))

    asyncio.run(scenario())


def test_a_replayed_idempotency_key_applies_once_across_logged_versions(
        redis_server: RedisServer) -> None:
    prefix = f"steps-{uuid.uuid4().hex[:6]}"

    async def scenario() -> None:
        async with replica(redis_server.url, prefix, snapshot_every=3) as a, \
                replica(redis_server.url, prefix, snapshot_every=3) as b:
            run = await create_and_update(a, "run-y", range(2))
            on_b = await b.current("run-y")
            again = await b.update(on_b, "key-1", train(99))  # a retry of a's second update
            assert again.version == 2 and on_b.version == 2
            assert_identical(run, on_b)

    asyncio.run(scenario())


def test_what_a_writer_left_before_its_commit_is_cleaned_up(
        redis_server: RedisServer, tmp_path: Path) -> None:
    """A writer that dies after writing its blob and before the commit: in Redis its chunks
    expire on their own (committed ones do not); in a checkpoint dir the next commit removes
    the file."""
    prefix = f"orphan-{uuid.uuid4().hex[:6]}"
    client = redis.Redis.from_url(redis_server.url)
    blob_dir = tmp_path / "blobs"
    orphan = [memoryview(dump_tensors({"x": torch.zeros(3)}, {}))]

    async def scenario() -> None:
        async with replica(redis_server.url, prefix, snapshot_every=2) as a, \
                replica(redis_server.url, prefix + "-dir", blob_dir=str(blob_dir)) as d:
            await create_and_update(a, "run-z", range(1))
            await create_and_update(d, "run-z", range(1))
            # the dead writers' blobs, for the version they never committed
            await a.store._blobs.write("run-z", 2, "deadbeef", STEP, orphan)
            await d.store._blobs.write("run-z", 2, "deadbeef", STEP, orphan)
            left = client.keys(f"{prefix}:run:{{run-z}}:step:2:deadbeef:*")
            assert left and all(0 < client.ttl(key) <= UNCOMMITTED_TTL_S for key in left)
            assert (blob_dir / "run-z" / "2-deadbeef.r2m-step").exists()
            run_a, run_d = await a.current("run-z"), await d.current("run-z")
            await a.update(run_a, "k2", train(2))
            await d.update(run_d, "k2", train(2))
            head = json.loads(client.get(f"{prefix}:run:{{run-z}}:head"))
            committed = client.keys(f"{prefix}:run:{{run-z}}:step:*")
            assert committed and all(client.ttl(key) == -1 for key in committed
                                     if b"deadbeef" not in key)
            assert [ref["kind"] for ref in head["chain"]] == ["state", STEP][:len(head["chain"])]
            assert not (blob_dir / "run-z" / "2-deadbeef.r2m-step").exists()
            d_head = json.loads(client.get(f"{prefix}-dir:run:{{run-z}}:head"))
            names = {path.name for path in (blob_dir / "run-z").iterdir()}
            assert names == {f"{ref['version']}-{ref['token']}.r2m-{ref['kind']}"
                             for chain in [d_head["chain"], *d_head["retained"]]
                             for ref in chain}

    asyncio.run(scenario())
