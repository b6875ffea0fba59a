"""The micro-batcher: shared batches give the same rewards, stay fair, push back when full, and
shrug off clients that leave."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from r2m_client import AsyncR2MClient, R2MClient
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
    async def scenario() -> list[str]:
        async with AsyncR2MClient(default_server.url) as rm:
            big_run = (await rm.create_run(policy_hidden_size=D_P, total_steps=10)).run_id
            small_run = (await rm.create_run(policy_hidden_size=D_P, total_steps=10)).run_id
            finished: list[str] = []

            async def big() -> None:
                await rm.score(big_run, *texts("big", 512))
                finished.append("big")

            async def small() -> None:
                await asyncio.sleep(0.3)  # arrive while the big request is being served
                await rm.score(small_run, *texts("small", 8))
                finished.append("small")

            await asyncio.gather(big(), small())
            return finished

    assert asyncio.run(scenario()) == ["small", "big"]


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
