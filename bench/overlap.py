"""Overlap with generation: the wall time of one rollout of 64 samples when scoring waits for
the whole batch ("generate 64 → score") against scoring each sample the moment its generation
finishes ("score as you go", `AsyncR2MClient.scorer`), on the embedded default backbone.

Generation is simulated: sample i finishes at `generation_s × L_i / max(L)`, with response
lengths L_i drawn once (seeded, long-tailed, as sampled lengths are). A policy generating on
this machine's CPU would fight the server for the same two cores and measure that contention;
a real one generates on its own accelerator, which is what the waits stand for. Texts are unique
(cold RTE cache) and the two modes alternate round by round, so drift hits both.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time
from pathlib import Path
from typing import Any

from r2m_bench.common import RESULTS_DIR, Headline, TextSource, write_result
from r2m_bench.servers import ServerPool, ServerSpec
from r2m_client import AsyncR2MClient

SAMPLES = 64


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, pool: ServerPool | None = None,
        samples: int = SAMPLES) -> dict[str, Any]:
    spec = ServerSpec()
    settings: dict[str, Any] = {
        "samples": samples, "generation_s": 0.3 if quick else 2.0, "rounds": 1 if quick else 5,
        "response_words": 8 if quick else 32, "lengths": "lognormal(μ=5, σ=0.6), seed 0",
        "hidden_states": None, "max_in_flight": 8, "server": spec.record(), "quick": quick}
    own_pool = pool is None
    pool = pool or ServerPool()
    try:
        results = asyncio.run(_measure(pool.get(spec).url, settings))
    finally:
        if own_pool:
            pool.close()
    headlines = [
        Headline("overlap", f"generate {samples} → score: wall s", results["sequential_s"], "s",
                 higher_is_better=False),
        Headline("overlap", "score as you go: wall s", results["as_you_go_s"], "s",
                 higher_is_better=False),
        Headline("overlap", "speed-up (sequential ÷ as you go)", results["speedup"], "×")]
    path = write_result("overlap", settings, results, out_dir, headlines)
    return {"path": str(path), "headlines": headlines, **results}


async def _measure(url: str, settings: dict[str, Any]) -> dict[str, Any]:
    rng = random.Random(0)
    lengths = [rng.lognormvariate(5.0, 0.6) for _ in range(settings["samples"])]
    finish = [settings["generation_s"] * n / max(lengths) for n in lengths]
    texts = TextSource("overlap", 16, settings["response_words"])
    walls: dict[str, list[float]] = {"sequential": [], "as_you_go": []}
    async with AsyncR2MClient(url) as rm:
        run_id = (await rm.create_run(policy_hidden_size=16, total_steps=100)).run_id
        await rm.score(run_id, *texts.pairs(8), step=1)  # warm-up: connection, first forward
        for round_ in range(settings["rounds"]):
            modes = ("sequential", "as_you_go") if round_ % 2 == 0 else ("as_you_go", "sequential")
            for mode in modes:
                prompts, responses = texts.pairs(settings["samples"])
                rollout = _sequential if mode == "sequential" else _as_you_go
                walls[mode].append(await rollout(rm, run_id, prompts, responses, finish,
                                                 settings["max_in_flight"]))
    sequential, as_you_go = (statistics.median(walls[m]) for m in ("sequential", "as_you_go"))
    generation = max(finish)
    return {"generation_s": generation, "walls_s": walls, "sequential_s": sequential,
            "as_you_go_s": as_you_go, "speedup": sequential / as_you_go,
            "scoring_after_generation_s": {"sequential": sequential - generation,
                                           "as_you_go": as_you_go - generation}}


async def _sequential(rm: AsyncR2MClient, run_id: str, prompts: list[str],
                      responses: list[str], finish: list[float], _: int) -> float:
    """Wait for the last generation, then score the whole batch in one call."""
    started = time.perf_counter()
    await asyncio.sleep(max(finish))
    await rm.score(run_id, prompts, responses, step=1)
    return time.perf_counter() - started


async def _as_you_go(rm: AsyncR2MClient, run_id: str, prompts: list[str],
                     responses: list[str], finish: list[float], max_in_flight: int) -> float:
    """Submit each sample at its finish time; done when the last reward is in."""
    started = time.perf_counter()
    order = sorted(range(len(finish)), key=finish.__getitem__)
    async with rm.scorer(run_id, step=1, max_in_flight=max_in_flight) as scorer:
        for i in order:
            await asyncio.sleep(max(0.0, started + finish[i] - time.perf_counter()))
            scorer.submit(prompts[i], responses[i])
    return time.perf_counter() - started
