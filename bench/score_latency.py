"""/v1/score latency through the real client: JSON+base64 vs safetensors body, RTE cache warm
(same texts) vs cold (new texts every call)."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path
from typing import Any

import torch

from r2m_bench.common import timed, write_result
from r2m_client import R2MClient
from r2m_service.launch import start_local_server


def run(items: int = 8, seq_len: int = 128, policy_hidden: int = 768, repeat: int = 30,
        backbone: str | None = None, url: str | None = None) -> dict[str, Any]:
    states = [torch.randn(seq_len, policy_hidden) for _ in range(items)]
    prompts = [f"Question {i}: what is the best way to learn to cook?" for i in range(items)]
    counter = itertools.count()
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as logs:
        server = None if url else start_local_server(
            Path(logs), *(["--backbone", backbone] if backbone else []))
        base = url or server.url
        try:
            for body in ("json", "binary"):
                with R2MClient(base, binary=body == "binary") as rm:
                    run_id = rm.create_run(policy_hidden_size=policy_hidden,
                                           total_steps=100).run_id
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
            if server:
                server.stop()
    for cache in ("warm_cache", "cold_cache"):
        results[f"binary_speedup_{cache}"] = (results["json"][cache]["p50"]
                                              / results["binary"][cache]["p50"])
    settings = {"items": items, "seq_len": seq_len, "policy_hidden": policy_hidden,
                "repeat": repeat, "backbone": backbone or "embedded default", "dtype": "float32"}
    path = write_result("score_latency", settings, results)
    return {"path": str(path), **results}
