"""Batching: items/s and p50/p99 latency at concurrency 1, 8, 32, 128, micro-batcher on vs off
(`R2M_BATCHING=false`: one request per model batch), same backbone, same run.

One item per request with unique texts (cold RTE cache), so every request runs the backbone: the
sample-at-a-time pattern that gains most from coalescing. Both servers stay up and each level is
measured on one then the other, so a neighbour's load lands on both sides of the ratio. The
servers' batch-size histograms confirm what the batcher actually did.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from r2m_bench.common import RESULTS_DIR, Headline, TextSource, write_result
from r2m_bench.inprocess import embed_rate, load_backbone
from r2m_bench.load import LoadResult, run_load
from r2m_bench.servers import ServerPool, ServerSpec, histogram_delta, scrape, torch_threads
from r2m_client import AsyncR2MClient, R2MClient
from r2m_service.settings import Settings

TARGET = 3.0
LEVELS = (1, 8, 32, 128)
TARGET_LEVEL = 32


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, pool: ServerPool | None = None,
        levels: tuple[int, ...] = LEVELS, items_per_request: int = 1,
        window_s: float | None = None, rounds: int | None = None) -> dict[str, Any]:
    specs = {"on": ServerSpec(batching=True), "off": ServerSpec(batching=False)}
    settings: dict[str, Any] = {
        "levels": list(levels), "items_per_request": items_per_request,
        "window_s": window_s or (0.5 if quick else 12.0), "rounds": rounds or (1 if quick else 2),
        "words_per_text": 4 if quick else 16,
        "hidden_states": None, "cache": "cold (unique texts per item)",
        "torch_threads": torch_threads(),
        "servers": {name: spec.record() for name, spec in specs.items()}, "quick": quick,
    }
    own_pool = pool is None
    pool = pool or ServerPool()
    try:
        pool.prestart(specs.values())
        urls = {name: pool.get(spec).url for name, spec in specs.items()}
        results = _measure(urls, settings)
    finally:
        if own_pool:
            pool.close()
    headlines = [Headline("batching", "in-process ceiling: embed items/s at max batch ÷ batch 1",
                          results["inprocess_batch_ceiling"]["ratio"], "×")]
    for level in results["levels"]:
        c = level["concurrency"]
        target = TARGET if c == TARGET_LEVEL else None
        headlines.append(Headline("batching", f"on ÷ off items/s, c={c}", level["ratio"], "×",
                                  target))
        for name in ("on", "off"):
            run_ = level[name]
            headlines.append(Headline(
                "batching", f"batcher {name}, c={c}: items/s (p50 / p99 ms "
                f"{1e3 * run_['latency_s']['p50']:.0f} / {1e3 * run_['latency_s']['p99']:.0f})",
                run_["items_per_s"], "items/s"))
    path = write_result("batching", settings, results, out_dir, headlines)
    return {"path": str(path), "headlines": headlines, **results}


def _measure(urls: dict[str, str], settings: dict[str, Any]) -> dict[str, Any]:
    words = settings["words_per_text"]
    texts = TextSource("batching", words, words)
    runs = {}
    for name, url in urls.items():
        with R2MClient(url) as rm:
            runs[name] = rm.create_run(policy_hidden_size=16, total_steps=100).run_id

    ceiling = _batch_ceiling(texts, settings)

    def sender(name: str):
        async def send(rm: AsyncR2MClient) -> int:
            prompts, responses = texts.pairs(settings["items_per_request"])
            await rm.score(runs[name], prompts, responses, step=50)
            return len(prompts)
        return send

    for name, url in urls.items():  # first forwards, connection setup: not measured
        run_load(url, 4, 0.2, sender(name))
    levels = []
    for concurrency in settings["levels"]:
        level: dict[str, Any] = {"concurrency": concurrency}
        loads: dict[str, LoadResult] = {}
        batches: dict[str, list[float]] = {name: [0.0, 0.0] for name in urls}
        for round_ in range(settings["rounds"]):  # on, off, then off, on: drift hits both
            for name in list(urls)[:: 1 if round_ % 2 == 0 else -1]:
                before = scrape(urls[name])
                load = run_load(urls[name], concurrency,
                                settings["window_s"] / settings["rounds"], sender(name))
                after = scrape(urls[name])
                loads[name] = loads[name].merge(load) if name in loads else load
                sizes = histogram_delta(before, after, "r2m_batch_size")
                batches[name][0] += sizes["sum"]
                batches[name][1] += sizes["count"]
        for name, load in loads.items():
            level[name] = load.summary()
            total, count = batches[name]
            level[name]["server_mean_batch_size"] = total / count if count else 0.0
        level["ratio"] = level["on"]["items_per_s"] / level["off"]["items_per_s"]
        levels.append(level)
    return {"levels": levels, "inprocess_batch_ceiling": ceiling}


def _batch_ceiling(texts: TextSource, settings: dict[str, Any]) -> dict[str, Any]:
    """In-process `Backbone.embed` items/s at batch 1 vs the server's max batch: the most any
    batcher can gain with this model and thread count (what limits the on/off ratio)."""
    batch = Settings().max_batch_size
    backbone = load_backbone(None, max_batch_size=batch)
    window = settings["window_s"] / 4
    embed_rate(backbone, texts, 4, 0.0, min_batches=1)  # warm-up
    one = embed_rate(backbone, texts, 1, window, min_batches=8)
    full = embed_rate(backbone, texts, batch, window)
    return {"batch_1": one, f"batch_{batch}": full,
            "ratio": full["embed_items_per_s"] / one["embed_items_per_s"]}
