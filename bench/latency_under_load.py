"""Latency under someone else's big request, and what it costs (issue 11).

Three things, on servers measured alternately in one process (same backbone, same threads):
- a 1-item request sent 200 ms after a 256-item one: its latency (goal ≤ 0.3 s);
- the 256-item request's own latency in that scenario (goal: ≤ 10% slower than before);
- items/s of the load matrix, batch × clients 1×1, 1×32, 32×1 and 32×32 (closed loop).

`learned` is the default server: batches sized by the measured forward cost. `filled` sets
`--score-batch-tokens` to `--max-batch-tokens`, which fills batches to the limits as r2m did
before: the honest baseline. Texts are unique (cold RTE cache); each repeat runs the scenario and
every matrix row on one server then the other, the order alternating between repeats, so a
neighbour's load lands on both sides of each ratio. The scenario and the matrix take any server
and the body it wants (`Target`): `serve_rm.py` reuses them against OpenRLHF's `serve_rm`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from r2m_bench.common import RESULTS_DIR, Headline, TextSource, median, write_result
from r2m_bench.load import run_load
from r2m_bench.servers import ServerPool, ServerSpec, torch_threads
from r2m_client import R2MClient
from r2m_service.settings import Settings

BIG, SMALL, DELAY_S = 256, 1, 0.2
ROWS = ((1, 1), (1, 32), (32, 1), (32, 32))  # (items per request, concurrent clients)
SMALL_LATENCY_GOAL_S = 0.3
BIG_SLOWDOWN_GOAL = 1.10

# a request body: (prompts, responses) → (path, JSON body)
Route = Callable[[list[str], list[str]], tuple[str, dict[str, Any]]]


@dataclass(frozen=True)
class Target:
    """One server under test and the body it takes."""

    name: str
    url: str
    route: Route

    async def post(self, http: httpx.AsyncClient, texts: TextSource, n: int) -> int:
        path, body = self.route(*texts.pairs(n))
        (await http.post(path, json=body)).raise_for_status()
        return n


def score_route(run_id: str) -> Route:
    """r2m's own `/v1/score`, for one run."""
    return lambda prompts, responses: ("/v1/score", {"run_id": run_id, "items": [
        {"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]})


def get_reward_route(prompts: list[str], responses: list[str]) -> tuple[str, dict[str, Any]]:
    """OpenRLHF's `/get_reward` body, which both r2m and `serve_rm` take."""
    return "/get_reward", {"query": [p + r for p, r in zip(prompts, responses, strict=True)],
                           "prompts": prompts}


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, pool: ServerPool | None = None
        ) -> dict[str, Any]:
    max_tokens = Settings().max_batch_tokens
    specs = {"learned": ServerSpec(),
             "filled": ServerSpec(extra=("--score-batch-tokens", str(max_tokens)))}
    settings = scenario_settings(quick)
    settings.update({"torch_threads": torch_threads(), "cache": "cold (unique texts)",
                     "servers": {name: spec.record() for name, spec in specs.items()}})
    own_pool = pool is None
    pool = pool or ServerPool()
    try:
        pool.prestart(specs.values())
        targets = []
        for name, spec in specs.items():
            url = pool.get(spec).url
            with R2MClient(url) as rm:
                run_id = rm.create_run(policy_hidden_size=16, total_steps=100).run_id
            targets.append(Target(name, url, score_route(run_id)))
        results = compare(targets, settings)
        for target in targets:
            results[target.name]["score_batch_tokens"] = httpx.get(
                f"{target.url}/v1/info").json()["score_batch_tokens"]
    finally:
        if own_pool:
            pool.close()
    headlines = comparison_headlines("latency_under_load", settings, results, "learned",
                                     "filled")
    path = write_result("latency_under_load", settings, results, out_dir, headlines)
    return {"path": str(path), "headlines": headlines, **results}


def scenario_settings(quick: bool) -> dict[str, Any]:
    """The shapes and windows both comparisons use (quick: only checks that it runs)."""
    return {"big_items": 32 if quick else BIG, "small_items": SMALL, "delay_s": DELAY_S,
            "rows": [list(row) for row in ROWS], "repeats": 1 if quick else 3,
            "window_s": 0.3 if quick else 6.0, "words_per_text": 4 if quick else 16,
            "quick": quick}


def compare(targets: Sequence[Target], settings: dict[str, Any]) -> dict[str, Any]:
    """The scenario and every matrix row, per repeat, on each target in alternating order;
    medians per target and `first ÷ second` ratios."""
    words = settings["words_per_text"]
    texts = TextSource("latency_under_load", words, words)
    raw: dict[str, dict[str, list[float]]] = {
        t.name: {"small_s": [], "big_s": [], "errors": [],
                 **{_row(b, c): [] for b, c in settings["rows"]}} for t in targets}
    for target in targets:  # warm-up: connections, first forwards, the servers' lazy state
        asyncio.run(_requests(target, texts, [1, 32]))
    for repeat in range(settings["repeats"]):
        order = list(targets) if repeat % 2 == 0 else list(reversed(targets))
        for target in order:
            big_s, small_s = asyncio.run(_big_then_small(target, texts, settings))
            raw[target.name]["big_s"].append(big_s)
            raw[target.name]["small_s"].append(small_s)
        for batch, clients in settings["rows"]:
            for target in order:
                load = run_load(target.url, clients, settings["window_s"],
                                _sender(target, texts, batch), raw=True)
                raw[target.name][_row(batch, clients)].append(load.summary()["items_per_s"])
                raw[target.name]["errors"].append(load.errors)
    results: dict[str, Any] = {
        name: {"runs": values, "median": {k: median(v) for k, v in values.items() if v}}
        for name, values in raw.items()}
    first, second = (t.name for t in targets[:2])
    results["ratios"] = {k: results[first]["median"][k] / results[second]["median"][k]
                         for k in results[first]["median"] if k != "errors"
                         and results[second]["median"][k]}
    return results


def comparison_headlines(benchmark: str, settings: dict[str, Any], results: dict[str, Any],
                         new: str, old: str) -> list[Headline]:
    """The three goals' numbers: small-request latency, big-request slow-down, matrix rows."""
    big = f"{settings['big_items']}-item"
    heads = [Headline(benchmark, f"{name}: 1-item latency {settings['delay_s']:.1f} s into a "
                      f"{big} request (median)", results[name]["median"]["small_s"], "s",
                      SMALL_LATENCY_GOAL_S if name == new else None, higher_is_better=False)
             for name in (new, old)]
    heads += [Headline(benchmark, f"{name}: {big} request latency (median)",
                       results[name]["median"]["big_s"], "s", higher_is_better=False)
              for name in (new, old)]
    heads.append(Headline(benchmark, f"{big} latency {new} ÷ {old}",
                          results["ratios"]["big_s"], "×", BIG_SLOWDOWN_GOAL,
                          higher_is_better=False))
    for key, ratio in results["ratios"].items():
        if key.startswith("items/s"):
            rates = f"{results[new]['median'][key]:.1f} vs {results[old]['median'][key]:.1f}"
            heads.append(Headline(benchmark, f"{key} {new} ÷ {old} ({rates})", ratio, "×"))
    return heads


def _row(batch: int, clients: int) -> str:
    return f"items/s {batch}×{clients}"


def _sender(target: Target, texts: TextSource, batch: int) -> Callable[[Any], Any]:
    return lambda http: target.post(http, texts, batch)


async def _requests(target: Target, texts: TextSource, sizes: Sequence[int]) -> None:
    async with httpx.AsyncClient(base_url=target.url, timeout=600) as http:
        for n in sizes:
            await target.post(http, texts, n)


async def _big_then_small(target: Target, texts: TextSource, settings: dict[str, Any]
                          ) -> tuple[float, float]:
    """(big request's seconds, small request's seconds), the small one sent `delay_s` after
    the big one, each on its own connection (two trainers)."""
    async with httpx.AsyncClient(base_url=target.url, timeout=600) as big, \
            httpx.AsyncClient(base_url=target.url, timeout=600) as small:
        async def timed(http: httpx.AsyncClient, n: int, delay_s: float) -> float:
            await asyncio.sleep(delay_s)
            started = time.perf_counter()
            await target.post(http, texts, n)
            return time.perf_counter() - started

        big_s, small_s = await asyncio.gather(timed(big, settings["big_items"], 0.0),
                                              timed(small, settings["small_items"],
                                                    settings["delay_s"]))
    return big_s, small_s
