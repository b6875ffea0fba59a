"""The core's moving parts alone, deterministic and without sleeps: the score queue (fairness,
token budget, cancel), the per-run gate, and the run directory's update cycle over the in-process
store (replay, rollback of a failed commit, a failed step changing nothing)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from r2m_proto.schemas import CreateRunRequest, RunConfig, UpdateResponse
from r2m_service.batch_sizing import BatchSizer
from r2m_service.batching import ScoreJob, ScoreQueue
from r2m_service.errors import InvalidInput, Overloaded, StoreUnavailable
from r2m_service.run_directory import RunDirectory
from r2m_service.run_gate import RunGate
from r2m_service.runs import Run, build_run
from r2m_service.samples import Sample
from r2m_service.state.memory import MemoryStore
from r2m_service.text_format import Encoded, TextPair

D_RM, D_P = 8, 4

# ---- the score queue -----------------------------------------------------------------------


def _job(loop: asyncio.AbstractEventLoop, tokens: list[int]) -> ScoreJob:
    samples = [Sample(TextPair("p", f"r{i}", f"items[{i}]"), None,
                      encoded=Encoded(list(range(n)), None)) for i, n in enumerate(tokens)]
    return ScoreJob(run=None, samples=samples, omega=1.0,  # type: ignore[arg-type]
                    future=loop.create_future())


def _budget(tokens: int) -> BatchSizer:
    return BatchSizer(tokens, 0.1, fixed=tokens)


def test_queue_takes_items_round_robin_across_requests() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = ScoreQueue(max_queued_items=100, sizer=_budget(10_000), max_batch_size=6)
        big, small = _job(loop, [4] * 10), _job(loop, [4] * 2)
        queue.put(big)
        queue.put(small)
        first = await queue.next_batch()
        assert [(item.job is small, item.index) for item in first] == [
            (False, 0), (True, 0), (False, 1), (True, 1), (False, 2), (False, 3)]
        assert queue.queued_items == 6
        second = await queue.next_batch()
        assert [item.index for item in second] == [4, 5, 6, 7, 8, 9]
        assert queue.queued_items == 0
    asyncio.run(scenario())


def test_queue_keeps_the_token_budget_and_carries_the_rest() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = ScoreQueue(max_queued_items=100, sizer=_budget(30), max_batch_size=64)
        queue.put(_job(loop, [10, 10, 10, 10]))
        first = await queue.next_batch()
        assert [item.index for item in first] == [0, 1, 2]  # 4 × 10 padded tokens > 30
        assert [item.index for item in await queue.next_batch()] == [3]
    asyncio.run(scenario())


def test_queue_refuses_past_its_bound_and_forgets_cancelled_requests() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = ScoreQueue(max_queued_items=5, sizer=_budget(1000), max_batch_size=2)
        kept, dropped = _job(loop, [1, 1]), _job(loop, [1, 1, 1])
        queue.put(kept)
        queue.put(dropped)
        with pytest.raises(Overloaded):
            queue.put(_job(loop, [1]))
        queue.cancel(dropped)
        assert queue.queued_items == 2
        batch = await queue.next_batch()
        assert all(item.job is kept for item in batch) and len(batch) == 2
    asyncio.run(scenario())


def test_queue_without_interleaving_serves_one_request_per_batch() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = ScoreQueue(max_queued_items=100, sizer=_budget(1000), max_batch_size=8,
                           interleave=False)
        a, b = _job(loop, [1, 1]), _job(loop, [1, 1])
        queue.put(a)
        queue.put(b)
        assert {item.job for item in await queue.next_batch()} == {a}
        assert {item.job for item in await queue.next_batch()} == {b}
    asyncio.run(scenario())


# ---- the run gate --------------------------------------------------------------------------


def test_gate_lets_readers_share_and_a_waiting_writer_go_first() -> None:
    async def scenario() -> list[str]:
        gate, order = RunGate(), []
        first_reader_in, release_first = asyncio.Event(), asyncio.Event()

        async def reader(name: str, hold: asyncio.Event | None = None) -> None:
            async with gate.read():
                order.append(f"{name} in")
                if hold is not None:
                    first_reader_in.set()
                    await hold.wait()
            order.append(f"{name} out")

        async def writer() -> None:
            async with gate.write():
                order.append("writer in")
            order.append("writer out")

        held = asyncio.create_task(reader("r1", release_first))
        await first_reader_in.wait()
        write = asyncio.create_task(writer())
        await asyncio.sleep(0)  # the writer is now waiting for r1
        late = asyncio.create_task(reader("r2"))
        await asyncio.sleep(0)
        assert order == ["r1 in"]  # r2 waits behind the waiting writer
        release_first.set()
        await asyncio.gather(held, write, late)
        return order

    assert asyncio.run(scenario()) == ["r1 in", "r1 out", "writer in", "writer out", "r2 in",
                                       "r2 out"]


# ---- the update cycle over the in-process store --------------------------------------------


async def _inline(fn: Callable[..., object], *args: object) -> object:
    """The model thread, inline: these tests are about ordering, not threads."""
    return fn(*args)


def _directory(checkpoint_dir: Path | None = None) -> RunDirectory:
    store = MemoryStore(rte_cache_bytes=0, idempotency_ttl_s=60,
                        checkpoint_dir=None if checkpoint_dir is None else str(checkpoint_dir))
    return RunDirectory(store, _inline, reward_hidden_size=D_RM, device=torch.device("cpu"),
                        min_version_wait_s=0.0)


def _build(run_id: str, config: RunConfig) -> Run:
    return build_run(run_id, config, D_RM, "test-backbone", None, torch.device("cpu"))


def _step(run: Run) -> UpdateResponse:
    """A real optimizer step on a fixed input, as the engine takes one."""
    rte = torch.ones(2, D_RM)
    hidden = [torch.ones(3, D_P), -torch.ones(2, D_P)]
    rewards = run.module(rte, hidden, 0.5)
    loss = -(rewards[0] - rewards[1])
    run.optimizer.zero_grad()
    loss.backward()
    run.optimizer.step()
    step = run.step
    run.advance(step)
    return UpdateResponse(version=run.version, step=run.step, loss=loss.item(),
                          bt_loss=loss.item(), gre_loss=None, omega=0.5, grad_norm=0.0)


def _weights(run: Run) -> dict[str, torch.Tensor]:
    return {name: value.clone() for name, value in run.module.state_dict().items()}


async def _new_run(runs: RunDirectory) -> Run:
    await runs.start()
    info, created = await runs.create(CreateRunRequest(
        run_id="unit", policy_hidden_size=D_P, total_steps=10, learning_rate=0.1, seed=3),
        _build)
    assert created
    return await runs.current(info.run_id)


def test_a_replayed_idempotency_key_applies_once() -> None:
    async def scenario() -> None:
        runs = _directory()
        run = await _new_run(runs)
        first = await runs.update(run, "key-1", _step)
        after_first = _weights(run)
        again = await runs.update(run, "key-1", _step)
        assert again == first and run.version == 1
        assert all(torch.equal(after_first[n], v) for n, v in _weights(run).items())
        assert (await runs.update(run, "key-2", _step)).version == 2
    asyncio.run(scenario())


def test_a_failed_commit_rolls_the_run_back(tmp_path: Path) -> None:
    async def scenario() -> None:
        runs = _directory(tmp_path / "checkpoints")
        run = await _new_run(runs)
        await runs.update(run, None, _step)
        committed = _weights(run)
        moments = {k: v.clone() for k, v in run.optimizer.state_dict()["state"][0].items()
                   if torch.is_tensor(v)}
        checkpoints = tmp_path / "checkpoints"  # the store can no longer write there
        checkpoints.rename(tmp_path / "elsewhere")
        checkpoints.write_text("a file where the directory was")
        with pytest.raises(StoreUnavailable):
            await runs.update(run, "lost", _step)
        checkpoints.unlink()
        (tmp_path / "elsewhere").rename(checkpoints)
        run = await runs.current("unit")  # reloaded from the store's version (it was unreadable)
        assert run.version == 1 and run.step == 1
        assert all(torch.equal(committed[n], v) for n, v in _weights(run).items())
        restored = run.optimizer.state_dict()["state"][0]
        assert all(torch.equal(moments[k], restored[k]) for k in moments)
        assert (await runs.update(run, "lost", _step)).version == 2  # the key was not recorded
    asyncio.run(scenario())


def test_a_failed_step_changes_nothing() -> None:
    def refuse(run: Run) -> UpdateResponse:
        raise InvalidInput("the loss is not finite for this batch; the run was not changed",
                           "body")

    async def scenario() -> None:
        runs = _directory()
        run = await _new_run(runs)
        before = _weights(run)
        with pytest.raises(InvalidInput):
            await runs.update(run, "k", refuse)
        assert run.version == 0 and await runs.store.head("unit") == 0
        assert all(torch.equal(before[n], v) for n, v in _weights(run).items())
        assert (await runs.update(run, "k", _step)).version == 1  # the key stayed free
    asyncio.run(scenario())


def test_min_version_wakes_on_the_commit_not_a_poll() -> None:
    async def scenario() -> None:
        runs = _directory()
        runs._min_version_wait_s = 30.0  # a lost wake-up would show as a 30 s wait
        run = await _new_run(runs)
        waiting = asyncio.create_task(runs.current("unit", min_version=1))
        await asyncio.sleep(0)
        assert not waiting.done()
        await runs.update(run, None, _step)
        assert (await asyncio.wait_for(waiting, 5)).version == 1
    asyncio.run(scenario())



def test_a_retired_gate_turns_away_waiting_and_later_requests() -> None:
    async def scenario() -> list[str]:
        gate, outcomes = RunGate(), []

        async def reader() -> None:
            try:
                async with gate.read():
                    outcomes.append("read")
            except StoreUnavailable:
                outcomes.append("refused")

        async with gate.write():
            waiting = asyncio.create_task(reader())
            await asyncio.sleep(0)  # it waits behind the writer
            gate.retire(StoreUnavailable("state unknown"))
        await waiting
        await reader()
        return outcomes

    assert asyncio.run(scenario()) == ["refused", "refused"]
