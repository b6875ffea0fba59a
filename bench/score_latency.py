"""/v1/score latency through the real client: JSON+base64 vs safetensors body, RTE cache warm
(same texts) vs cold (new texts every call)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import torch

from r2m_bench.common import RESULTS_DIR, Headline, timed, write_result
from r2m_bench.servers import ServerPool, ServerSpec
from r2m_client import R2MClient


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, pool: ServerPool | None = None,
        items: int = 8, seq_len: int = 128, policy_hidden: int = 768, repeat: int | None = None,
        backbone: str | None = None, url: str | None = None) -> dict[str, Any]:
    repeat = repeat or (3 if quick else 30)
    states = [torch.randn(seq_len, policy_hidden) for _ in range(items)]
    prompts = [f"Question {i}: what is the best way to learn to cook?" for i in range(items)]
    counter = itertools.count()
    results: dict[str, Any] = {}
    spec = ServerSpec(backbone=backbone)
    own_pool = pool is None and url is None
    pool = pool or ServerPool()
    try:
        base = url or pool.get(spec).url
        for body in ("json", "binary"):
            with R2MClient(base, binary=body == "binary") as rm:
                run_id = rm.create_run(policy_hidden_size=policy_hidden, total_steps=100).run_id
                warm = [f"Answer {i}: start with eggs and simple soups." for i in range(items)]

                def score_warm(rm=rm, run_id=run_id, warm=warm) -> None:
                    rm.score(run_id, prompts, warm, states, step=50)

                def score_cold(rm=rm, run_id=run_id) -> None:
                    n = next(counter)
                    rm.score(run_id, prompts, [f"Answer {n}.{i}: practise daily."
                                               for i in range(items)], states, step=50)

                results[body] = {"warm_cache": timed(score_warm, repeat),
                                 "cold_cache": timed(score_cold, repeat)}
    finally:
        if own_pool:
            pool.close()
    for cache in ("warm_cache", "cold_cache"):
        results[f"binary_speedup_{cache}"] = (results["json"][cache]["p50"]
                                              / results["binary"][cache]["p50"])
    settings = {"items": items, "seq_len": seq_len, "policy_hidden": policy_hidden,
                "repeat": repeat, "backbone": backbone or "embedded default", "dtype": "float32",
                "server": url or spec.record(), "quick": quick}
    headlines = [Headline("score_latency", f"binary {cache.replace('_', ' ')} p50",
                          results["binary"][cache]["p50"] * 1e3, "ms", higher_is_better=False)
                 for cache in ("warm_cache", "cold_cache")]
    path = write_result("score_latency", settings, results, out_dir, headlines)
    return {"path": str(path), "headlines": headlines, **results}
