"""Update: /v1/update time with a warm RTE cache (the groups were scored first, as in an RL
step) vs a forced backbone recompute (the same prompts with new responses, never scored).

The gap is what the RTE cache saves each training step: the update then costs only the small
module (docs/method.md#cost-of-an-update). K = 4 and 8 responses per group, D_p = 768; warm and
cold calls alternate and swap order every repeat, so drift in the machine's load hits both. The
server's backbone and module histograms, read around each call, show where the time went.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from r2m_bench.common import RESULTS_DIR, Headline, TextSource, latency_stats, write_result
from r2m_bench.servers import ServerPool, ServerSpec, histogram_delta, scrape
from r2m_client import Group, R2MClient

POLICY_HIDDEN = 768
HIDDEN_SEQ = 256
GROUP_SIZES = (4, 8)


def run(quick: bool = False, out_dir: Path = RESULTS_DIR,
        pool: ServerPool | None = None) -> dict[str, Any]:
    spec = ServerSpec()
    settings: dict[str, Any] = {
        "group_sizes": list(GROUP_SIZES), "groups_per_update": 2 if quick else 4,
        "policy_hidden": POLICY_HIDDEN, "hidden_seq_len": HIDDEN_SEQ, "dtype": "float32",
        "repeat": 2 if quick else 6, "words_per_text": 4 if quick else 16,
        "server": spec.record(), "quick": quick,
    }
    own_pool = pool is None
    pool = pool or ServerPool()
    try:
        results = _measure(pool.get(spec).url, settings)
    finally:
        if own_pool:
            pool.close()
    headlines = []
    for k in GROUP_SIZES:
        by_k = results[f"k{k}"]
        headlines += [
            Headline("update", f"K={k}: warm-cache update p50", by_k["warm"]["latency_s"]["p50"]
                     * 1e3, "ms", higher_is_better=False),
            Headline("update", f"K={k}: cold (backbone) update p50",
                     by_k["cold"]["latency_s"]["p50"] * 1e3, "ms", higher_is_better=False),
            Headline("update", f"K={k}: cold ÷ warm", by_k["cold_over_warm"], "×"),
        ]
    path = write_result("update", settings, results, out_dir, headlines)
    return {"path": str(path), "headlines": headlines, **results}


def _measure(url: str, settings: dict[str, Any]) -> dict[str, Any]:
    words = settings["words_per_text"]
    texts = TextSource("update", words, words)
    states = np.random.default_rng(0).standard_normal((HIDDEN_SEQ, POLICY_HIDDEN),
                                                      dtype=np.float32)
    results: dict[str, Any] = {}
    with R2MClient(url, timeout=600, retries=0) as rm:
        run_id = rm.create_run(policy_hidden_size=POLICY_HIDDEN, total_steps=1000,
                               learning_rate=1e-5).run_id

        def groups(k: int, prompts: list[str]) -> list[Group]:
            return [Group(prompt=p, responses=texts.pairs(k)[1], hidden_states=[states] * k)
                    for p in prompts]

        def timed_update(batch: list[Group]) -> dict[str, float]:
            before = scrape(url)
            started = time.perf_counter()
            rm.update(run_id, groups=batch)
            seconds = time.perf_counter() - started
            after = scrape(url)
            return {"seconds": seconds,
                    "backbone_s": histogram_delta(before, after,
                                                  "r2m_backbone_duration_seconds")["sum"],
                    "module_s": histogram_delta(before, after, "r2m_module_duration_seconds",
                                                phase="update")["sum"]}

        timed_update(groups(2, texts.pairs(1)[0]))  # warm-up: first backward, optimizer state
        for k in settings["group_sizes"]:
            calls: dict[str, list[dict[str, float]]] = {"warm": [], "cold": []}
            for repeat in range(settings["repeat"]):
                prompts = texts.pairs(settings["groups_per_update"])[0]
                warm = groups(k, prompts)
                for g in warm:  # the RL step's scoring fills the RTE cache
                    rm.score(run_id, [g.prompt] * k, list(g.responses), list(g.hidden_states))
                cold = groups(k, prompts)  # same prompts, responses never scored
                order = ("warm", "cold") if repeat % 2 == 0 else ("cold", "warm")
                for name in order:
                    calls[name].append(timed_update(warm if name == "warm" else cold))
            results[f"k{k}"] = by_k = {
                name: {"latency_s": latency_stats([c["seconds"] for c in series]),
                       "server_backbone_s_per_update": sum(c["backbone_s"] for c in series)
                       / len(series),
                       "server_module_s_per_update": sum(c["module_s"] for c in series)
                       / len(series)}
                for name, series in calls.items()}
            by_k["cold_over_warm"] = (by_k["cold"]["latency_s"]["p50"]
                                      / by_k["warm"]["latency_s"]["p50"])
    return results
