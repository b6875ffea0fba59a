"""`AsyncR2MClient.scorer`: samples submitted as their generations finish get the rewards one
`score` call would give, requests coalesce while the wire is busy, and a failure reaches only
the samples it carried."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from r2m_client import AsyncR2MClient, RunNotFoundError
from tests.conftest import Server
from tests.helpers import D_P, PROMPTS, RESPONSES, hidden


def _score_requests(url: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    line = next(line for line in text.splitlines()
                if line.startswith('r2m_request_duration_seconds_count{route="/v1/score"}'))
    return float(line.split()[-1])


def test_staggered_submissions_get_the_rewards_of_one_score_call(llama_server: Server) -> None:
    states = hidden([3, 5, 2, 4], D_P)

    async def main() -> tuple[list[float], list[float]]:
        async with AsyncR2MClient(llama_server.url) as rm:
            run = await rm.create_run(policy_hidden_size=D_P, total_steps=10)
            whole = await rm.score(run.run_id, PROMPTS, RESPONSES, states, step=5)
            async with rm.scorer(run.run_id, step=5) as scorer:
                futures = []
                for prompt, response, state in zip(PROMPTS, RESPONSES, states, strict=True):
                    futures.append(scorer.submit(prompt, response, state))
                    await asyncio.sleep(0.05)  # the next generation finishes a little later
            return whole.rewards, [f.result() for f in futures]

    whole, as_you_go = asyncio.run(main())
    assert as_you_go == pytest.approx(whole, abs=1e-6)


def test_a_burst_waits_for_a_free_slot_and_leaves_as_one_request(llama_server: Server) -> None:
    async def main() -> list[float]:
        async with AsyncR2MClient(llama_server.url) as rm:
            run = await rm.create_run(policy_hidden_size=D_P, total_steps=10)
            await rm.info()
            async with rm.scorer(run.run_id, max_in_flight=1) as scorer:
                futures = [scorer.submit(p, r) for p, r in zip(PROMPTS, RESPONSES, strict=True)]
            return [f.result() for f in futures]

    before = _score_requests(llama_server.url)
    rewards = asyncio.run(main())
    assert len(rewards) == len(PROMPTS)
    assert _score_requests(llama_server.url) - before == 2  # the first alone, then the rest


def test_a_failed_request_fails_its_samples_and_leaving_the_block_does_not_raise(
        llama_server: Server) -> None:
    async def main() -> list[BaseException | None]:
        async with AsyncR2MClient(llama_server.url) as rm, rm.scorer("no-such-run") as scorer:
            futures = [scorer.submit("p", "r"), scorer.submit("q", "s")]
        return [f.exception() for f in futures]

    errors = asyncio.run(main())
    assert all(isinstance(e, RunNotFoundError) for e in errors)


def test_max_in_flight_must_be_positive(llama_server: Server) -> None:
    async def main() -> None:
        async with AsyncR2MClient(llama_server.url) as rm:
            rm.scorer("any", max_in_flight=0)

    with pytest.raises(ValueError, match="max_in_flight"):
        asyncio.run(main())
