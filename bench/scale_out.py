"""What shared state costs: the Redis version check on the /score path, and /update with the RTE
cache warm (samples scored before) vs cold (new texts: the backbone must run), in-process store
vs Redis, measured in the same run of the benchmark."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from pathlib import Path
from typing import Any

import torch

from r2m_bench.common import RESULTS_DIR, Headline, timed, write_result
from r2m_bench.servers import ServerPool, ServerSpec
from r2m_client import Group, R2MClient
from r2m_service.state.redis_store import RedisStore

DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
PROMPT = "How do I keep basil alive indoors?"


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, pool: ServerPool | None = None,
        redis_url: str = DEFAULT_REDIS, items: int = 8, seq_len: int = 128,
        policy_hidden: int = 768, k: int = 8) -> dict[str, Any]:
    repeat = 5 if quick else 40
    prefix = f"bench-{uuid.uuid4().hex[:8]}"
    specs = {"memory": ServerSpec(),
             "redis": ServerSpec(extra=("--redis-url", redis_url, "--redis-prefix", prefix))}
    results: dict[str, Any] = {"head_get": asyncio.run(_head_latency(redis_url, repeat * 10))}
    states = [torch.randn(seq_len, policy_hidden) for _ in range(max(items, k))]
    counter = itertools.count()

    def new_group() -> Group:
        n = next(counter)
        return Group(PROMPT, [f"Answer {n}.{j}: sun, water, patience." for j in range(k)],
                     states[:k])

    own_pool = pool is None
    pool = pool or ServerPool()
    try:
        for store, spec in specs.items():
            with R2MClient(pool.get(spec).url) as rm:
                run_id = rm.create_run(policy_hidden_size=policy_hidden, total_steps=100).run_id
                responses = [f"Give it sun and water, tip {i}." for i in range(items)]
                warm = [new_group() for _ in range(repeat + 1)]
                for group in warm:  # scored first, untimed: their RTEs are cached
                    rm.score(run_id, [PROMPT] * k, group.responses, step=10)
                results[store] = {
                    "score": timed(lambda rm=rm, run_id=run_id, responses=responses: rm.score(
                        run_id, [PROMPT] * items, responses, states[:items], step=10), repeat),
                    "update_cold_cache": timed(lambda rm=rm, run_id=run_id: rm.update(
                        run_id, groups=[new_group()], step=10), repeat),
                    "update_warm_cache": timed(lambda rm=rm, run_id=run_id, warm=warm: rm.update(
                        run_id, groups=[warm.pop()], step=10), repeat),
                }
    finally:
        if own_pool:
            pool.close()
    results["score_p50_redis_minus_memory_ms"] = 1e3 * (
        results["redis"]["score"]["p50"] - results["memory"]["score"]["p50"])
    for store in specs:
        r = results[store]
        r["update_cold_over_warm"] = r["update_cold_cache"]["p50"] / r["update_warm_cache"]["p50"]
    settings = {"items": items, "seq_len": seq_len, "policy_hidden": policy_hidden, "k": k,
                "repeat": repeat, "redis_url": redis_url, "quick": quick,
                "servers": {store: spec.record() for store, spec in specs.items()}}
    headlines = [
        Headline("scale_out", "redis version check (GET) p50", results["head_get"]["p50"] * 1e6,
                 "µs", higher_is_better=False),
        Headline("scale_out", "score p50, redis − memory",
                 results["score_p50_redis_minus_memory_ms"], "ms", higher_is_better=False),
        *(Headline("scale_out", f"{store} update cold ÷ warm", results[store]
                   ["update_cold_over_warm"], "×") for store in specs),
    ]
    path = write_result("scale_out", settings, results, out_dir, headlines)
    return {"path": str(path), "headlines": headlines, **results}


async def _head_latency(url: str, repeat: int) -> dict[str, float]:
    """The version check alone: one GET of a run's head key."""
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
