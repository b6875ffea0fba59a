"""The micro-batcher: shared batches give the same rewards, stay fair, push back when full, and
shrug off clients that leave; batches are sized by what forwards cost, so a small request is not
stuck behind a big one (the sizer and the queue alone with given timings, then a real server)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
import pytest

from r2m_client import AsyncR2MClient, R2MClient
from r2m_service.backbone import Backbone
from r2m_service.batch_sizing import EXPLORE_EVERY, RECENT, BatchSizer
from r2m_service.batching import BatchItem, ScoreJob, ScoreQueue
from r2m_service.samples import Sample
from r2m_service.text_format import Encoded, TextPair
from tests.conftest import Server, _session_server
from tests.helpers import D_P, hidden


def texts(tag: str, n: int) -> tuple[list[str], list[str]]:
    prompts = [f"{tag} prompt {i}: how should one {('learn', 'cook', 'run')[i % 3]}?"
               for i in range(n)]
    responses = [f"{tag} answer {i}: " + "with care " * (1 + i % 7) for i in range(n)]
    return prompts, responses


async def score_concurrently(url: str, run_id: str, requests: int, per_request: int
                             ) -> list[list[float]]:
    async with AsyncR2MClient(url) as rm:
        async def one(r: int) -> list[float]:
            prompts, responses = texts(f"req{r}", per_request)
            states = hidden([3 + (i % 5) for i in range(per_request)], D_P, seed=r)
            return (await rm.score(run_id, prompts, responses, states, step=4)).rewards

        return await asyncio.gather(*(one(r) for r in range(requests)))


def test_batched_rewards_equal_one_request_at_a_time(
        llama_server: Server, unbatched_server: Server) -> None:
    rewards, batches = {}, {}
    for name, server in (("batched", llama_server), ("unbatched", unbatched_server)):
        with R2MClient(server.url) as rm:
            run_id = rm.create_run(policy_hidden_size=D_P, total_steps=10, seed=5).run_id
        before = batch_counts(server.url)
        rewards[name] = asyncio.run(score_concurrently(server.url, run_id, 24, 5))
        after = batch_counts(server.url)
        batches[name] = (after[0] - before[0], after[1] - before[1])
        with R2MClient(server.url) as rm:  # and each request alone, sequentially
            for r, got in enumerate(rewards[name]):
                prompts, responses = texts(f"req{r}", 5)
                states = hidden([3 + (i % 5) for i in range(5)], D_P, seed=r)
                alone = rm.score(run_id, prompts, responses, states, step=4).rewards
                assert got == pytest.approx(alone, abs=1e-5)
    for a, b in zip(rewards["batched"], rewards["unbatched"], strict=True):
        assert a == pytest.approx(b, abs=1e-5)
    # the same 120 items: merged into fewer batches than the 24 requests, and, batcher off,
    # exactly one batch per request (so the equality above compared merged with unmerged)
    assert batches["unbatched"] == (24, 120)
    assert batches["batched"][1] == 120 and batches["batched"][0] < 24, batches


def batch_counts(url: str) -> tuple[int, int]:
    """(model batches, items in them) so far, from the server's own histogram."""
    text = httpx.get(f"{url}/metrics").text
    count = re.search(r"^r2m_batch_size_count (\S+)$", text, re.M)
    total = re.search(r"^r2m_batch_size_sum (\S+)$", text, re.M)
    assert count and total
    return int(float(count.group(1))), int(float(total.group(1)))


def test_a_small_request_is_not_starved_by_a_big_one(default_server: Server) -> None:
    # arrive while the big request is being served
    assert big_then_small(default_server.url, 512, 8, lambda: asyncio.sleep(0.3)) == [
        "small", "big"]


def big_then_small(url: str, big_items: int, small_items: int,
                   arrive: Callable[[], Awaitable[object]]) -> list[str]:
    """Which finished first: a big request from one run, or a small one from another run sent
    once `arrive()` returns."""
    async def scenario() -> list[str]:
        async with AsyncR2MClient(url) as rm:
            big_run = (await rm.create_run(policy_hidden_size=D_P, total_steps=10)).run_id
            small_run = (await rm.create_run(policy_hidden_size=D_P, total_steps=10)).run_id
            finished: list[str] = []

            async def big() -> None:
                await rm.score(big_run, *texts("big", big_items))
                finished.append("big")

            async def small() -> None:
                await arrive()
                await rm.score(small_run, *texts("small", small_items))
                finished.append("small")

            await asyncio.gather(big(), small())
            return finished

    return asyncio.run(scenario())


@pytest.fixture(scope="module")
def tiny_queue_server(server_logs: Path) -> Iterator[Server]:
    yield from _session_server(server_logs, env={"R2M_MAX_QUEUED_ITEMS": "8",
                                                 "R2M_MAX_BATCH_SIZE": "8"})


def test_full_queue_answers_429_then_recovers(tiny_queue_server: Server) -> None:
    url = tiny_queue_server.url
    run_id = httpx.post(f"{url}/v1/runs", json={"policy_hidden_size": D_P,
                                                "total_steps": 10}).json()["run_id"]

    async def flood() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=url, timeout=60) as http:
            async def one(r: int) -> httpx.Response:
                prompts, responses = texts(f"flood{r}", 8)
                return await http.post("/v1/score", json={"run_id": run_id, "items": [
                    {"prompt": p, "response": x} for p, x in zip(prompts, responses, strict=True)]})

            return await asyncio.gather(*(one(r) for r in range(24)))

    answers = asyncio.run(flood())
    refused = [a for a in answers if a.status_code == 429]
    assert refused, [a.status_code for a in answers]
    assert all(a.status_code in (200, 429) for a in answers)
    assert refused[0].json()["error"]["code"] == "overloaded"
    assert int(refused[0].headers["retry-after"]) >= 1
    ok = httpx.post(f"{url}/v1/score", json={"run_id": run_id, "items": [
        {"prompt": "p", "response": "after the flood"}]})
    assert ok.status_code == 200


def test_client_that_leaves_does_not_break_the_others(default_server: Server) -> None:
    url = default_server.url
    with R2MClient(url) as rm:
        run_id = rm.create_run(policy_hidden_size=D_P, total_steps=10).run_id

    async def scenario() -> tuple[list[list[float]], bool]:
        async with httpx.AsyncClient(base_url=url, timeout=0.2) as impatient:
            prompts, responses = texts("impatient", 400)
            leaver = asyncio.ensure_future(impatient.post("/v1/score", json={
                "run_id": run_id, "items": [{"prompt": p, "response": x}
                                            for p, x in zip(prompts, responses, strict=True)]}))
            others = await score_concurrently(url, run_id, 6, 4)
            try:
                await leaver
                left = False
            except httpx.TimeoutException:
                left = True
            return others, left

    others, left = asyncio.run(scenario())
    assert left and len(others) == 6 and all(len(r) == 4 for r in others)
    metrics = httpx.get(f"{url}/metrics").text
    assert re.search(r'r2m_request_failures_total\{[^}]*reason="499"[^}]*\} [1-9]', metrics)
    assert httpx.get(f"{url}/healthz").status_code == 200


def test_split_batches_arrive_whole_and_in_order(llama_server: Server) -> None:
    prompts, responses = texts("split", 12)
    states = hidden([40] * 12, D_P, seed=9)  # 40 × 16 × 4 B = 2.5 KiB per item
    with R2MClient(llama_server.url) as whole, \
            R2MClient(llama_server.url, max_request_bytes=6000) as split:
        run_id = whole.create_run(policy_hidden_size=D_P, total_steps=10).run_id
        expected = whole.score(run_id, prompts, responses, states, step=3).rewards
        got = split.score(run_id, prompts, responses, states, step=3).rewards
        assert got == pytest.approx(expected, abs=1e-5)  # other batch shapes, same math

    async def concurrently() -> list[float]:
        async with AsyncR2MClient(llama_server.url, max_request_bytes=6000) as rm:
            return (await rm.score(run_id, prompts, responses, states, step=3)).rewards

    assert asyncio.run(concurrently()) == pytest.approx(expected, abs=1e-5)


def test_client_splits_by_the_servers_item_limit(limits_server: Server) -> None:
    prompts, responses = texts("many", 20)  # the limits server takes 8 items per request
    with R2MClient(limits_server.url, max_request_items=8) as rm:
        run_id = rm.create_run(policy_hidden_size=D_P, total_steps=10).run_id
        rewards = rm.score(run_id, prompts, responses).rewards
        assert rewards == pytest.approx(
            [rm.score(run_id, [p], [r]).rewards[0] for p, r in zip(prompts, responses,
                                                                     strict=True)], abs=1e-5)


# ---- batch sizing: the sizer and the queue with given timings ----------------------------------

# tokens/s by padded tokens per forward: a CPU-like curve, flat from 128 tokens (batch 4 of 32)
CPU_RATES = {32: 1000.0, 64: 1600.0, 128: 2400.0, 256: 2500.0, 512: 2550.0, 1024: 2450.0}


def fed(rates: dict[int, float], max_tokens: int = 16384, tolerance: float = 0.1
        ) -> BatchSizer:
    sizer = BatchSizer(max_tokens, tolerance)
    for tokens, rate in rates.items():
        sizer.observe(tokens, tokens / rate)
    return sizer


def test_budget_is_the_smallest_within_the_tolerance_of_the_best_rate() -> None:
    assert fed(CPU_RATES).budget() == 128  # 2400 ≥ 0.9 × 2550; 1600 is not
    assert fed(CPU_RATES, tolerance=0.02).budget() == 256
    # a GPU-like backbone: a forward costs the same whatever its size, so the biggest wins
    gpu = BatchSizer(16384, 0.1)
    for tokens in (32, 256, 2048, 16384):
        gpu.observe(tokens, 0.01)
    assert gpu.budget() == 16384
    assert BatchSizer(4096, 0.1).budget() == 4096  # nothing measured yet: the plain limit


def test_a_fixed_cost_per_batch_favours_bigger_batches() -> None:
    sizer = fed(CPU_RATES)
    sizer.observe_overhead(0.05)  # 50 ms per batch outside the forward
    # tokens/s with it: 128 → 1239, 256 → 1680, 512 → 2041, 1024 → 2188 (best)
    assert sizer.budget() == 512
    sizer.observe_overhead(0.2)  # a batch slowed by its neighbours: the least one counts
    assert sizer.batch_overhead_s == 0.05
    fixed = BatchSizer(16384, 0.1, fixed=64)
    fixed.observe_overhead(1.0)
    assert fixed.batch_overhead_s == 0.0  # a set budget learns nothing


def test_the_fastest_recent_forward_counts_for_the_nearest_candidate() -> None:
    sizer = BatchSizer(16384, 0.1)
    sizer.observe(200, 0.1)  # log2(200) = 7.6: nearest 256
    sizer.observe(180, 0.1)  # 7.5: nearest 128
    assert sizer.rates == {256: pytest.approx(2000.0), 128: pytest.approx(1800.0)}
    sizer.observe(256, 256 / 1000)  # slowed by a neighbour: the faster one still counts
    assert sizer.rates[256] == pytest.approx(2000.0)
    for _ in range(RECENT):  # until it is no longer recent
        sizer.observe(256, 256 / 1000)
    assert sizer.rates[256] == pytest.approx(1000.0)
    assert sizer.candidates[0] == 16 and sizer.candidates[-1] == 16384
    assert BatchSizer(999, 0.1).candidates[-2:] == [512, 999]


def test_the_budget_follows_the_timings_while_serving() -> None:
    sizer = fed(CPU_RATES)
    for _ in range(RECENT - 1):  # contention slows the small batches: the choice holds
        sizer.observe(128, 128 / 500)
    assert sizer.budget() == 128
    sizer.observe(256, 256 / 5000)  # the machine changed: 256-token forwards run twice as fast
    assert sizer.budget() == 256


def test_every_so_often_a_batch_tries_the_neighbouring_budgets() -> None:
    sizer = fed(CPU_RATES)
    budgets = [sizer.next_budget() for _ in range(4 * EXPLORE_EVERY)]
    explored = {i + 1: b for i, b in enumerate(budgets) if b != 128}
    assert explored == {EXPLORE_EVERY: 256, 2 * EXPLORE_EVERY: 64, 3 * EXPLORE_EVERY: 256,
                        4 * EXPLORE_EVERY: 64}


def test_a_set_budget_is_kept_as_set() -> None:
    sizer = BatchSizer(16384, 0.1, fixed=300)
    sizer.observe(64, 1e-6)
    assert not sizer.learned and sizer.rates == {}
    assert {sizer.next_budget() for _ in range(3 * EXPLORE_EVERY)} == {300}
    assert BatchSizer(1000, 0.1, fixed=5000).budget() == 1000  # never past max_batch_tokens


def test_probe_times_growing_batches_of_the_real_backbone(llama_rm_dir: Path) -> None:
    backbone = Backbone(str(llama_rm_dir), max_length=64)
    sizer = BatchSizer(16384, 0.1)
    sizer.probe(backbone, max_sequences=64)
    assert len(sizer.rates) >= 3 and all(rate > 0 for rate in sizer.rates.values())
    assert sizer.budget() in sizer.rates
    fixed = BatchSizer(16384, 0.1, fixed=64)
    fixed.probe(backbone, max_sequences=64)
    assert fixed.rates == {}


def _job(loop: asyncio.AbstractEventLoop, items: int, tokens: int = 10) -> ScoreJob:
    samples = [Sample(TextPair("p", f"r{i}", f"items[{i}]"), None,
                      encoded=Encoded(list(range(tokens)), None)) for i in range(items)]
    return ScoreJob(run=None, samples=samples, omega=1.0,  # type: ignore[arg-type]
                    future=loop.create_future())


def _queue(budget: int, max_batch_size: int = 64) -> ScoreQueue:
    return ScoreQueue(max_queued_items=10_000, sizer=BatchSizer(16384, 0.1, fixed=budget),
                      max_batch_size=max_batch_size)


@pytest.mark.parametrize(("budget", "in_flight", "own_batch"), [(40, 4, 4), (16384, 64, 64)])
def test_a_newcomer_rides_the_next_batch_and_counts_what_it_waited_for(
        budget: int, in_flight: int, own_batch: int) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = _queue(budget)
        big, small = _job(loop, 256), _job(loop, 1)
        queue.put(big)
        assert len(await queue.next_batch()) == in_flight
        queue.put(small)  # arrives while the first batch runs
        second = await queue.next_batch()
        assert second[0].job is small and len(second) == own_batch
        # ahead of it: the batch in flight, then the big request's share of its own batch
        assert small.items_ahead == in_flight + own_batch - 1
        while queue.queued_items:
            await queue.next_batch()
        assert big.items_ahead == 1
    asyncio.run(scenario())


def test_small_batches_still_share_turns_equally() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = _queue(40)  # 4 items of 10 tokens per batch, 8 requests queued
        jobs = [_job(loop, 8) for _ in range(8)]
        for job in jobs:
            queue.put(job)
        for _ in range(4):  # every two batches, each request gets exactly one item in
            seen = [item.job for _ in range(2) for item in await queue.next_batch()]
            assert sorted(map(id, seen)) == sorted(map(id, jobs))
    asyncio.run(scenario())


# ---- streamed preparation: a request's items join the queue chunk by chunk ----------------------


def _streamed(loop: asyncio.AbstractEventLoop, whole: ScoreJob, ready: int) -> ScoreJob:
    """`whole`'s request with only its first `ready` items prepared so far."""
    return ScoreJob(run=None, samples=whole.samples[:ready], omega=1.0,  # type: ignore[arg-type]
                    future=loop.create_future(), size=len(whole.samples))


def _fifo_queue() -> ScoreQueue:
    """Without interleaving: one request per batch, in arrival order (the batcher-off mode)."""
    return ScoreQueue(max_queued_items=100, sizer=BatchSizer(16384, 0.1, fixed=16384),
                      max_batch_size=64, interleave=False)


async def _pending_batch(queue: ScoreQueue) -> asyncio.Future[list[BatchItem]]:
    """`queue.next_batch()`, started and still waiting 50 ms later."""
    waiting = asyncio.ensure_future(queue.next_batch())
    await asyncio.sleep(0.05)
    assert not waiting.done()
    return waiting


def test_a_streamed_request_counts_whole_and_batches_only_what_is_ready() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = _queue(16384)
        whole = _job(loop, 6)
        streamed, other = _streamed(loop, whole, 2), _job(loop, 3)
        queue.put(streamed)
        queue.put(other)
        assert queue.queued_items == 9  # admission counts every item, ready or not
        first = await queue.next_batch()
        assert [(item.job is streamed, item.index) for item in first] == [
            (True, 0), (False, 0), (True, 1), (False, 1), (False, 2)]
        waiting = await _pending_batch(queue)  # nothing ready: the batcher waits, not spins
        queue.extend(streamed, whole.samples[2:])
        second = await waiting
        assert [(item.job is streamed, item.index) for item in second] == [
            (True, i) for i in range(2, 6)]
        assert queue.queued_items == 0
        for item in first + second:
            item.job.deliver(item.index, float(item.index))
        assert await streamed.future == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    asyncio.run(scenario())


def test_without_interleaving_a_streamed_request_keeps_its_turn() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = _fifo_queue()
        whole = _job(loop, 3)
        streamed, other = _streamed(loop, whole, 1), _job(loop, 2)
        queue.put(streamed)
        queue.put(other)
        assert [item.index for item in await queue.next_batch()] == [0]
        waiting = await _pending_batch(queue)  # the next request is ready, but not in turn
        queue.extend(streamed, whole.samples[1:])
        assert {item.job for item in await waiting} == {streamed}
        assert {item.job for item in await queue.next_batch()} == {other}
    asyncio.run(scenario())


def test_without_interleaving_cancelling_the_request_in_turn_lets_the_next_go() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = _fifo_queue()
        streamed, other = _streamed(loop, _job(loop, 3), 0), _job(loop, 2)
        queue.put(streamed)
        queue.put(other)
        waiting = await _pending_batch(queue)
        queue.cancel(streamed)  # e.g. its second chunk failed to tokenize
        assert {item.job for item in await asyncio.wait_for(waiting, 5)} == {other}
    asyncio.run(scenario())


def test_cancelling_a_half_prepared_request_frees_all_its_items() -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        queue = _queue(16384)
        streamed, other = _streamed(loop, _job(loop, 5), 2), _job(loop, 1)
        queue.put(streamed)
        queue.put(other)
        queue.cancel(streamed)
        assert queue.queued_items == 1
        assert {item.job for item in await queue.next_batch()} == {other}
    asyncio.run(scenario())


def test_a_big_request_prepared_in_chunks_scores_as_small_ones_do(llama_server: Server) -> None:
    n = 600  # chunks of 64, 128, 256 and 152 join the queue one by one
    prompts, responses = texts("chunks", n)
    states = hidden([2 + i % 4 for i in range(n)], D_P, seed=11)
    with R2MClient(llama_server.url) as rm:
        run_id = rm.create_run(policy_hidden_size=D_P, total_steps=10, seed=3).run_id
        together = rm.score(run_id, prompts, responses, states, step=4).rewards
        apart = [reward for start in range(0, n, 50) for reward in rm.score(
            run_id, prompts[start:start + 50], responses[start:start + 50],
            states[start:start + 50], step=4).rewards]
    assert together == pytest.approx(apart, abs=1e-5)


def test_an_item_failing_in_a_late_chunk_refuses_the_request_and_frees_the_queue(
        llama_server: Server) -> None:
    prompts, responses = texts("late", 300)
    responses[290] = "word " * 200  # over max_length, in the third chunk (items 192–447)
    with R2MClient(llama_server.url) as rm:
        run_id = rm.create_run(policy_hidden_size=D_P, total_steps=10).run_id
    items = [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]
    answer = httpx.post(f"{llama_server.url}/v1/score", json={"run_id": run_id, "items": items},
                        timeout=60)
    assert answer.status_code == 422, answer.text
    assert answer.json()["error"]["field"] == "items[290].response"
    assert _metric(llama_server.url, "r2m_queue_size") == 0
    fine = httpx.post(f"{llama_server.url}/v1/score", timeout=60,
                      json={"run_id": run_id, "items": items[:3]})
    assert fine.status_code == 200 and len(fine.json()["rewards"]) == 3


# ---- batch sizing: a real server --------------------------------------------------------------

SMALL_BUDGET = 128  # tokens: MiniLM's texts below are ≥ 16 tokens, so ≤ 8 items per batch


@pytest.fixture(scope="module")
def small_batch_server(server_logs: Path) -> Iterator[Server]:
    yield from _session_server(server_logs,
                               env={"R2M_SCORE_BATCH_TOKENS": str(SMALL_BUDGET)})


def test_a_small_request_waits_for_small_batches_not_the_big_request(
        small_batch_server: Server) -> None:
    url = small_batch_server.url
    info = httpx.get(f"{url}/v1/info").json()
    assert info["score_batch_tokens"] == SMALL_BUDGET
    assert info["score_batch_tokens_learned"] is False

    async def big_request_queued() -> None:
        while _metric(url, "r2m_queue_size") == 0:
            await asyncio.sleep(0.01)

    before = httpx.get(f"{url}/metrics").text
    assert big_then_small(url, 256, 1, big_request_queued) == ["small", "big"]
    after = httpx.get(f"{url}/metrics").text
    batches = _delta(before, after, "r2m_batch_size_count")
    assert batches >= 256 / 8 and _delta(before, after, 'r2m_batch_size_bucket{le="8.0"}') \
        == batches  # every batch held at most 8 items
    assert _delta(before, after, "r2m_score_items_ahead_count") == 2
    # the big request had the small one's item ahead of it; the small one waited for at most
    # the batch in flight and the big request's share of its own batch (with 64-item batches:
    # 64 + 63)
    small_ahead = _delta(before, after, "r2m_score_items_ahead_sum") - 1
    assert small_ahead <= 8 + 7


def test_a_learned_budget_is_shown_in_info_and_metrics(default_server: Server) -> None:
    info = httpx.get(f"{default_server.url}/v1/info").json()
    assert info["score_batch_tokens_learned"] is True
    assert info["settings"]["score_batch_tokens"] is None
    metrics = httpx.get(f"{default_server.url}/metrics").text
    assert _metric(default_server.url, "r2m_batch_token_budget") == info["score_batch_tokens"]
    rates = re.findall(r'^r2m_forward_tokens_per_second\{budget="(\d+)"\} (\S+)$', metrics,
                       re.M)
    assert len(rates) >= 2 and str(info["score_batch_tokens"]) in dict(rates)


def _metric(url: str, name: str) -> float:
    return _value(httpx.get(f"{url}/metrics").text, name)


def _value(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.M)
    assert match, sample
    return float(match.group(1))


def _delta(before: str, after: str, sample: str) -> float:
    return _value(after, sample) - _value(before, sample)
