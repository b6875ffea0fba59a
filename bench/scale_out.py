"""What shared state costs: the Redis version check on the /score path, and /update with the RTE
cache warm (samples scored before) vs cold (new texts: the backbone must run), in-process store
vs Redis, same machine, same run of the benchmark."""

from __future__ import annotations

import asyncio
import itertools
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from r2m_bench.common import timed, write_result
from r2m_client import Group, R2MClient
from r2m_service.launch import start_local_server
from r2m_service.state.redis_store import RedisStore

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


def run(quick: bool = False, redis_url: str = DEFAULT_REDIS, items: int = 8, seq_len: int = 128,
        policy_hidden: int = 768, k: int = 8) -> dict[str, Any]:
    repeat = 10 if quick else 40
    results: dict[str, Any] = {"head_get": asyncio.run(_head_latency(redis_url, repeat * 10))}
    states = [torch.randn(seq_len, policy_hidden) for _ in range(max(items, k))]
    counter = itertools.count()
    pending: list[Group] = []
    with tempfile.TemporaryDirectory() as logs:
        for store, env in (("memory", {}), ("redis", {
                "R2M_REDIS_URL": redis_url, "R2M_REDIS_PREFIX": f"bench-{uuid.uuid4().hex[:8]}"})):
            with start_local_server(Path(logs), env=env) as server, R2MClient(server.url) as rm:
                run_id = rm.create_run(policy_hidden_size=policy_hidden, total_steps=100).run_id
                prompts = ["How do I keep basil alive indoors?"] * items
                responses = [f"Give it sun and water, tip {i}." for i in range(items)]

                def score(rm=rm, run_id=run_id, prompts=prompts, responses=responses) -> None:
                    rm.score(run_id, prompts, responses, states[:items], step=10)

                def new_group() -> Group:
                    n = next(counter)
                    return Group("How do I keep basil alive indoors?",
                                 [f"Answer {n}.{j}: sun, water, patience." for j in range(k)],
                                 states[:k])

                def update_cold(rm=rm, run_id=run_id) -> None:
                    rm.update(run_id, groups=[new_group()], step=10)

                for group in [new_group() for _ in range(repeat + 1)]:
                    rm.score(run_id, [group.prompt] * k, group.responses, step=10)  # untimed:
                    pending.append(group)  # it puts the group's RTEs in the cache

                def update_warm(rm=rm, run_id=run_id) -> None:
                    rm.update(run_id, groups=[pending.pop()], step=10)

                results[store] = {"score_8_items": timed(score, repeat),
                                  "update_cold_cache": timed(update_cold, repeat),
                                  "update_warm_cache": timed(update_warm, repeat)}
    results["score_p50_redis_minus_memory_s"] = (results["redis"]["score_8_items"]["p50"]
                                                 - results["memory"]["score_8_items"]["p50"])
    for store in ("memory", "redis"):
        r = results[store]
        r["update_cold_over_warm"] = r["update_cold_cache"]["p50"] / r["update_warm_cache"]["p50"]
    settings = {"items": items, "seq_len": seq_len, "policy_hidden": policy_hidden, "k": k,
                "repeat": repeat, "backbone": "embedded default", "redis_url": redis_url}
    path = write_result("scale_out", settings, results)
    return {"path": str(path), **results}


async def _head_latency(url: str, repeat: int) -> dict[str, float]:
    """The version check alone: one GET of the run's head key."""
    store = RedisStore(url, prefix=f"bench-{uuid.uuid4().hex[:8]}")
    samples = []
    try:
        for _ in range(repeat):
            started = time.perf_counter()
            await store.head("no-such-run")
            samples.append(time.perf_counter() - started)
    finally:
        await store.close()
    samples.sort()
    return {"p50": samples[len(samples) // 2], "p99": samples[int(len(samples) * 0.99) - 1],
            "n": len(samples)}
