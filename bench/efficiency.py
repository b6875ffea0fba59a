"""Serving efficiency: /v1/score items/s over HTTP from 32 concurrent clients ÷ in-process
`Backbone.embed` items/s at the server's max batch size, same model, same run.

It answers "what does the service cost on top of the model?": HTTP, JSON, tokenization, the
batcher and the threads all sit between a trainer and the backbone. Cold cache (unique texts) so
every item runs the backbone. The in-process and HTTP windows alternate, so a neighbour's load
hits both sides of the ratio alike. The server's own metrics say how busy its model thread was and
how big its batches were, which is what explains a ratio below 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from r2m_bench.common import RESULTS_DIR, Headline, TextSource, median, write_result
from r2m_bench.inprocess import embed_rate, load_backbone
from r2m_bench.load import run_load
from r2m_bench.servers import ServerPool, ServerSpec, histogram_delta, scrape, torch_threads
from r2m_client import AsyncR2MClient, R2MClient
from r2m_service.settings import Settings

TARGET = 0.9


def run(quick: bool = False, out_dir: Path = RESULTS_DIR, pool: ServerPool | None = None,
        concurrency: int = 32, items_per_request: int | None = None,
        window_s: float | None = None, rounds: int | None = None) -> dict[str, Any]:
    per_request = items_per_request or (1 if quick else 4)
    settings = {
        "concurrency": concurrency, "items_per_request": per_request,
        # the server's batches can hold at most the items in flight
        "batch_size": min(Settings().max_batch_size, concurrency * per_request),
        "window_s": window_s or (1.0 if quick else 8.0), "rounds": rounds or (1 if quick else 6),
        "words_per_text": 4 if quick else 16,
        "small_hidden_states": {"seq_len": 32, "policy_hidden": 256, "dtype": "float32"},
        "cache": "cold (unique texts per item)", "torch_threads": torch_threads(),
        "quick": quick,
    }
    own_pool = pool is None
    pool = pool or ServerPool()
    try:
        spec = ServerSpec()
        settings["server"] = spec.record()
        results = _measure(pool.get(spec).url, settings)
    finally:
        if own_pool:
            pool.close()
    headlines = [
        Headline("efficiency", f"HTTP ÷ in-process items/s, c={concurrency}, no hidden states",
                 results["efficiency"]["no_hidden"], "×", TARGET),
        Headline("efficiency", f"HTTP ÷ in-process items/s, c={concurrency}, small hidden states",
                 results["efficiency"]["small_hidden"], "×", TARGET),
        Headline("efficiency", "in-process Backbone.embed items/s",
                 median(results["inprocess_embed_items_per_s"]), "items/s"),
    ]
    path = write_result("efficiency", settings, results, out_dir, headlines)
    return {"path": str(path), "headlines": headlines, **results}


def _measure(url: str, settings: dict[str, Any]) -> dict[str, Any]:
    words = settings["words_per_text"]
    batch = settings["batch_size"]
    backbone = load_backbone(None, max_batch_size=batch)
    texts = TextSource("efficiency", words, words)
    small = settings["small_hidden_states"]
    hidden = np.random.default_rng(0).standard_normal(
        (small["seq_len"], small["policy_hidden"]), dtype=np.float32)
    with R2MClient(url) as rm:
        run_id = rm.create_run(policy_hidden_size=small["policy_hidden"], total_steps=100).run_id

    def send_with(states: np.ndarray | None):
        async def send(rm: AsyncR2MClient) -> int:
            prompts, responses = texts.pairs(settings["items_per_request"])
            await rm.score(run_id, prompts, responses,
                           None if states is None else [states] * len(prompts), step=50)
            return len(prompts)
        return send

    def embed_window() -> tuple[float, float]:
        rate = embed_rate(backbone, texts, batch, settings["window_s"])
        return rate["embed_items_per_s"], rate["tokenize_embed_items_per_s"]

    def http_window(states: np.ndarray | None) -> dict[str, Any]:
        before = scrape(url)
        load = run_load(url, settings["concurrency"], settings["window_s"], send_with(states))
        after = scrape(url)
        out = load.summary()
        backbone_s = histogram_delta(before, after, "r2m_backbone_duration_seconds")
        out["server"] = {
            "mean_batch_size": histogram_delta(before, after, "r2m_batch_size")["mean"],
            "backbone_seconds": backbone_s["sum"],
            "backbone_busy_fraction": backbone_s["sum"] / load.seconds if load.seconds else 0.0,
            "backbone_items_per_s": load.items / backbone_s["sum"] if backbone_s["sum"] else 0.0,
        }
        return out

    embed_window()  # warm up the in-process model
    run_load(url, 4, 0.2, send_with(None))  # and the server
    rounds: list[dict[str, Any]] = []
    for _ in range(settings["rounds"]):
        embed_ips, total_ips = embed_window()
        no_hidden = http_window(None)
        with_hidden = http_window(hidden)
        rounds.append({"inprocess_embed_items_per_s": embed_ips,
                       "inprocess_tokenize_embed_items_per_s": total_ips,
                       "http_no_hidden": no_hidden, "http_small_hidden": with_hidden,
                       "efficiency_no_hidden": no_hidden["items_per_s"] / embed_ips,
                       "efficiency_small_hidden": with_hidden["items_per_s"] / embed_ips})
    return {
        "efficiency": {"no_hidden": median([r["efficiency_no_hidden"] for r in rounds]),
                       "small_hidden": median([r["efficiency_small_hidden"] for r in rounds]),
                       "aggregation": "median over rounds of HTTP ÷ in-process (same round)"},
        "inprocess_embed_items_per_s": [r["inprocess_embed_items_per_s"] for r in rounds],
        "rounds": rounds,
    }
