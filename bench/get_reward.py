"""OpenRLHF's route against the v1 route: items/s of `POST /get_reward` and `POST /v1/score` at
32 concurrent clients sending one query each (OpenRLHF's agent executor sends one per rollout),
same server, embedded default backbone, cold RTE cache.

Both sides use the same client code (one httpx connection per worker, a closed loop as in
`load.py`), so the difference is the route alone: its body parsing, the query split, and for
the default backbone-only reward the reserved run. The two routes alternate round by round.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from r2m_bench.common import RESULTS_DIR, Headline, TextSource, write_result
from r2m_bench.load import LoadResult
from r2m_bench.servers import ServerPool, ServerSpec
from r2m_client import R2MClient

CONCURRENCY = 32
Body = Callable[[str, str], tuple[str, dict[str, Any]]]


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, pool: ServerPool | None = None,
        concurrency: int = CONCURRENCY) -> dict[str, Any]:
    spec = ServerSpec()
    settings: dict[str, Any] = {
        "concurrency": concurrency, "items_per_request": 1, "window_s": 0.5 if quick else 48.0,
        "rounds": 1 if quick else 6, "words_per_text": 4 if quick else 16,
        "reward": "backbone-only (no run in the URL) vs /v1/score on a fresh run",
        "server": spec.record(), "quick": quick}
    own_pool = pool is None
    pool = pool or ServerPool()
    try:
        results = _measure(pool.get(spec).url, settings)
    finally:
        if own_pool:
            pool.close()
    headlines = [Headline("get_reward", f"{route} items/s, c={concurrency}",
                          results[route]["items_per_s"], "items/s")
                 for route in ("/get_reward", "/v1/score")]
    headlines.append(Headline("get_reward", "/get_reward ÷ /v1/score items/s", results["ratio"],
                              "×"))
    path = write_result("get_reward", settings, results, out_dir, headlines)
    return {"path": str(path), "headlines": headlines, **results}


def _measure(url: str, settings: dict[str, Any]) -> dict[str, Any]:
    words = settings["words_per_text"]
    texts = TextSource("get_reward", words, words)
    with R2MClient(url) as rm:
        run_id = rm.create_run(policy_hidden_size=16, total_steps=100).run_id
    bodies: dict[str, Body] = {
        "/get_reward": lambda p, r: ("/get_reward", {"query": [p + r], "prompts": [p]}),
        "/v1/score": lambda p, r: ("/v1/score", {"run_id": run_id,
                                                 "items": [{"prompt": p, "response": r}]}),
    }
    loads: dict[str, LoadResult] = {}
    per_round: dict[str, list[float]] = {route: [] for route in bodies}
    for body in bodies.values():  # warm-up: connections, the reserved run, first forwards
        asyncio.run(_closed_loop(url, 4, 0.2, texts, body))
    for round_ in range(settings["rounds"]):
        for route in list(bodies)[:: 1 if round_ % 2 == 0 else -1]:
            load = asyncio.run(_closed_loop(url, settings["concurrency"],
                                            settings["window_s"] / settings["rounds"], texts,
                                            bodies[route]))
            loads[route] = loads[route].merge(load) if route in loads else load
            per_round[route].append(load.summary()["items_per_s"])
    results: dict[str, Any] = {route: {**load.summary(), "items_per_s_by_round": per_round[route]}
                               for route, load in loads.items()}
    results["ratio"] = (results["/get_reward"]["items_per_s"]
                        / results["/v1/score"]["items_per_s"])
    return results


async def _closed_loop(url: str, concurrency: int, duration_s: float, texts: TextSource,
                       body: Body) -> LoadResult:
    """`concurrency` workers, each on its own connection, each sending its next one-item
    request when the last is answered, until `duration_s` has passed."""
    result = LoadResult(concurrency)
    clients = [httpx.AsyncClient(base_url=url, timeout=600) for _ in range(concurrency)]
    started = time.perf_counter()
    last_done = started

    async def worker(http: httpx.AsyncClient) -> None:
        nonlocal last_done
        while time.perf_counter() < started + duration_s:
            path, payload = body(*texts.pair())
            sent = time.perf_counter()
            answer = await http.post(path, json=payload)
            if answer.is_success:
                last_done = max(last_done, time.perf_counter())
                result.latencies.append(last_done - sent)
                result.items += 1
                result.requests += 1
            else:
                result.errors += 1
                result.error_samples.append(f"{answer.status_code}: {answer.text[:150]}")

    try:
        await asyncio.gather(*(worker(http) for http in clients))
    finally:
        await asyncio.gather(*(http.aclose() for http in clients))
    result.seconds = last_done - started
    return result
