"""Split mode against full mode: bytes on the wire per sample and wall time per RL round (a
score of the samples, then one update with them), on loopback, through the public client.

Each configuration (S tokens × D_p, in float32 and bfloat16) creates one run per mode from the
same seed and alternates full and split rounds, swapping which goes first every repeat, so load
drift hits both. Every round uses fresh texts (the RTE cache helps within a round, as in a real
RL step, never across rounds). Bytes are request plus response bodies, counted on the client's
own httpx connection; headers are left out (a few hundred bytes a request in both modes).
The module's share of backbone time comes from the server's own histograms.
"""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Any

import httpx
import torch

from r2m_bench.common import RESULTS_DIR, Headline, TextSource, latency_stats, write_result
from r2m_bench.models import REALISTIC, build_backbone
from r2m_bench.servers import ServerPool, ServerSpec, histogram_delta, scrape, torch_threads
from r2m_client import Group, R2MClient

GROUP_SIZE = 4
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def run(quick: bool = False, out_dir: Path = RESULTS_DIR,
        pool: ServerPool | None = None) -> dict[str, Any]:
    settings: dict[str, Any] = {
        "tokens": [128, 512] if quick else [128, 512, 2048],
        "policy_hidden": [768] if quick else [768, 4096],
        "dtypes": list(DTYPES), "groups_per_round": 1 if quick else 2,
        "group_size": GROUP_SIZE, "repeat": 1 if quick else 3, "quick": quick,
    }
    own_pool = pool is None
    pool = pool or ServerPool()
    torch.set_num_threads(torch_threads())  # the trainer side's math, like the servers' threads
    settings["client_torch_threads"] = torch_threads()
    try:
        default = ServerSpec()
        settings["server"] = default.record()
        results: dict[str, Any] = {"matrix": [
            _compare(pool.get(default).url, s, d, dtype, settings)
            for s, d, dtype in itertools.product(settings["tokens"], settings["policy_hidden"],
                                                 settings["dtypes"])]}
        if not quick:  # the module's cost next to a 12-layer × 768 backbone's
            realistic = ServerSpec(backbone=str(build_backbone(REALISTIC)), max_length=512)
            settings["overhead_server"] = realistic.record()
            results["overhead_12x768"] = _compare(pool.get(realistic).url, 512, 768, "bfloat16",
                                                  settings)
    finally:
        if own_pool:
            pool.close()
    headlines = _headlines(results)
    path = write_result("split", settings, results, out_dir, headlines)
    return {"path": str(path), "headlines": headlines, **results}


def _compare(url: str, tokens: int, policy_hidden: int, dtype: str,
             settings: dict[str, Any]) -> dict[str, Any]:
    # one text source per mode: a round's backbone work is never done by the other mode's round
    texts = {mode: TextSource(f"split-{mode}-{tokens}-{policy_hidden}", 12, 12)
             for mode in ("full", "split")}
    counted = _ByteCounter()
    with R2MClient(url, timeout=600) as rm:
        rm._http.event_hooks["response"].append(counted)  # the client's own connection
        runs = {mode: rm.create_run(policy_hidden_size=policy_hidden, total_steps=100, seed=1,
                                    learning_rate=1e-5).run_id for mode in ("full", "split")}
        seconds: dict[str, list[float]] = {"full": [], "split": []}
        nbytes: dict[str, list[int]] = {"full": [], "split": []}
        costs = {mode: {"module_score_s": 0.0, "backbone_s": 0.0} for mode in seconds}
        generator = torch.Generator().manual_seed(tokens + policy_hidden)
        for repeat in range(settings["repeat"]):
            order = ("full", "split") if repeat % 2 == 0 else ("split", "full")
            states = _hidden_states(settings["groups_per_round"], tokens, policy_hidden,
                                    DTYPES[dtype], generator)
            for mode in order:
                groups = _groups(texts[mode], states)
                counted.reset()
                before = scrape(url)
                started = time.perf_counter()
                _round(rm, runs[mode], groups, split=mode == "split", step=repeat)
                seconds[mode].append(time.perf_counter() - started)
                nbytes[mode].append(counted.total)
                after = scrape(url)
                costs[mode]["module_score_s"] += histogram_delta(
                    before, after, "r2m_module_duration_seconds", phase="score")["sum"]
                costs[mode]["backbone_s"] += histogram_delta(
                    before, after, "r2m_backbone_duration_seconds")["sum"]
    samples = settings["groups_per_round"] * GROUP_SIZE
    per_sample = {mode: min(values) / samples for mode, values in nbytes.items()}
    return {
        "tokens": tokens, "policy_hidden": policy_hidden, "dtype": dtype,
        "samples_per_round": samples,
        "bytes_per_sample": per_sample,
        "bytes_ratio_full_over_split": per_sample["full"] / per_sample["split"],
        "round_s": {mode: latency_stats(values) for mode, values in seconds.items()},
        "time_ratio_full_over_split": min(seconds["full"]) / min(seconds["split"]),
        "costs": costs,  # server-side module time of the score phases, and backbone time
        "module_over_backbone": {mode: c["module_score_s"] / c["backbone_s"] if c["backbone_s"]
                                 else None for mode, c in costs.items()},
    }


def _hidden_states(groups: int, tokens: int, policy_hidden: int, dtype: torch.dtype,
                   generator: torch.Generator) -> list[list[torch.Tensor]]:
    """The same hidden states for both modes' rounds of a repeat."""
    return [[torch.randn(tokens, policy_hidden, generator=generator).to(dtype)
             for _ in range(GROUP_SIZE)] for _ in range(groups)]


def _groups(texts: TextSource, states: list[list[torch.Tensor]]) -> list[Group]:
    groups = []
    for hidden in states:
        prompts, responses = texts.pairs(len(hidden))
        groups.append(Group(prompts[0], responses, hidden))
    return groups


def _round(rm: R2MClient, run_id: str, groups: list[Group], *, split: bool, step: int) -> None:
    """One RL step's traffic: score every sample, then one update with the same samples."""
    prompts = [g.prompt for g in groups for _ in g.responses]
    responses = [r for g in groups for r in g.responses]
    hidden = [h for g in groups for h in g.hidden_states]
    scored = rm.score(run_id, prompts, responses, hidden, step=step, split=split)
    scores = iter(scored.rewards)
    annotated = [Group(g.prompt, g.responses, g.hidden_states,
                       [next(scores) for _ in g.responses]) for g in groups]
    rm.update(run_id, groups=annotated, step=step, split=split)


class _ByteCounter:
    """Request and response body bytes of every exchange on one httpx client."""

    def __init__(self) -> None:
        self.total = 0

    def reset(self) -> None:
        self.total = 0

    def __call__(self, response: httpx.Response) -> None:
        self.total += int(response.request.headers.get("content-length", 0))
        self.total += int(response.headers.get("content-length", 0))


def _headlines(results: dict[str, Any]) -> list[Headline]:
    rows = []
    for entry in results["matrix"]:
        shape = f"S={entry['tokens']} D_p={entry['policy_hidden']} {entry['dtype']}"
        rows.append(Headline("split", f"{shape}: bytes full ÷ split",
                             entry["bytes_ratio_full_over_split"], "×",
                             target=100.0 if entry["tokens"] == 512 else None))
        rows.append(Headline("split", f"{shape}: round time full ÷ split",
                             entry["time_ratio_full_over_split"], "×",
                             target=1.0 if entry["tokens"] >= 512 else None))
    if "overhead_12x768" in results:
        rows.append(Headline("split", "12×768 backbone, split: module ÷ backbone time",
                             100 * results["overhead_12x768"]["module_over_backbone"]["split"],
                             "%",
                             target=2.0, higher_is_better=False))
    return rows
