"""Score batches split under the server's own limits, read once from `/v1/info`.

The server here takes at most 8 items and 64 KiB per request (`limits_server`); a client that
copied the server's defaults instead (1024 items, 256 MiB) would be refused with 413. How often
the client asked is read from the server's own request metrics.
"""

from __future__ import annotations

import asyncio
import re

import httpx
import numpy as np
import pytest

from r2m_client import AsyncR2MClient, R2MClient, R2MClientError
from tests.conftest import Server
from tests.helpers import D_P

ITEMS = 20  # > the server's 8 per request
_INFO_COUNT = re.compile(r'^r2m_request_duration_seconds_count\{route="/v1/info"\} (\S+)$', re.M)


def _info_requests(server: Server) -> int:
    found = _INFO_COUNT.search(httpx.get(f"{server.url}/metrics").text)
    return int(float(found.group(1))) if found else 0


def _texts(n: int) -> tuple[list[str], list[str]]:
    return [f"limits prompt {i}" for i in range(n)], [f"response {i}" for i in range(n)]


def _big_states(n: int) -> list[np.ndarray]:
    """25.6 KiB each: a few of them pass the server's 64 KiB per request."""
    rng = np.random.default_rng(0)
    return [rng.standard_normal((400, D_P)).astype(np.float32) for _ in range(n)]


@pytest.fixture(scope="module")
def run_id(limits_server: Server) -> str:
    with R2MClient(limits_server.url) as rm:
        return rm.create_run(D_P, 10).run_id


def test_score_splits_under_the_servers_item_and_byte_limits(limits_server: Server,
                                                             run_id: str) -> None:
    prompts, responses = _texts(ITEMS)
    with R2MClient(limits_server.url) as rm:
        rewards = rm.score(run_id, prompts, responses).rewards
        one_by_one = [rm.score(run_id, [p], [r]).rewards[0]
                      for p, r in zip(prompts, responses, strict=True)]
        assert rewards == pytest.approx(one_by_one, abs=1e-5)
        big = _big_states(6)  # 150 KiB in all
        assert len(rm.score(run_id, prompts[:6], responses[:6], big).rewards) == 6


def test_the_server_is_asked_once_per_client(limits_server: Server, run_id: str) -> None:
    prompts, responses = _texts(ITEMS)
    before = _info_requests(limits_server)
    with R2MClient(limits_server.url) as rm:
        for _ in range(3):
            rm.score(run_id, prompts, responses)
    assert _info_requests(limits_server) == before + 1

    async def concurrent_first_calls() -> None:
        async with AsyncR2MClient(limits_server.url) as rm:
            await asyncio.gather(*(rm.score(run_id, prompts, responses) for _ in range(4)))

    asyncio.run(concurrent_first_calls())
    assert _info_requests(limits_server) == before + 2


def test_limits_given_to_the_client_take_precedence(limits_server: Server, run_id: str) -> None:
    prompts, responses = _texts(ITEMS)
    before = _info_requests(limits_server)
    with R2MClient(limits_server.url, max_request_items=ITEMS, max_request_bytes=1 << 20,
                   retries=0) as both_given, pytest.raises(R2MClientError) as too_many:
        both_given.score(run_id, prompts, responses)
    assert (too_many.value.status_code, too_many.value.code) == (413, "payload_too_large")
    assert _info_requests(limits_server) == before, "both given: the server is never asked"

    with R2MClient(limits_server.url, max_request_bytes=1 << 20, retries=0) as bytes_given, \
            pytest.raises(R2MClientError) as too_big:
        bytes_given.score(run_id, prompts[:6], responses[:6], _big_states(6))
    assert too_big.value.status_code == 413
    assert _info_requests(limits_server) == before + 1, "items not given: asked for them"
