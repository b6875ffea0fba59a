"""The RL loop of one (arm, seed), talking to the service through the public client only:

    sample → hidden states (client helper) → /v1/score → PPO-clip + KL → /v1/update

(R2M.md §4.2, Algorithm 1), and the per-step log: proxy and gold reward, KL to the reference,
length, proxy–gold rank correlation, discrepancy, sign-off rate, and the wall time of each phase.
"""

from __future__ import annotations

import copy
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from statistics import fmean

import torch

from r2m_client import R2MClient
from r2m_client.hf import policy_hidden_states

from .arms import Arm, score_feedback, update_feedback
from .config import ExperimentConfig
from .gold import gold_reward, sign_offs
from .metrics import discrepancy, spearman
from .policy import sample, suppressed_ids
from .prepare import Prepared
from .proxy import ProxyRM
from .rloo import ppo_step
from .task import prompt_for, step_products

PHASES = ("generation", "hidden_states", "scoring", "policy_update", "r2m_update")


class PhaseTimer:
    """Wall time of each phase of the current step."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        started = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - started


def step_metrics(prompts: Sequence[str], responses: Sequence[str], proxy: Sequence[float],
                 kl: torch.Tensor) -> dict[str, float]:
    """What one step's samples say about overoptimization (means over the n·K samples)."""
    gold = [gold_reward(p, r) for p, r in zip(prompts, responses, strict=True)]
    return {
        "proxy_reward": fmean(proxy),
        "gold_reward": fmean(gold),
        "kl": float(kl.mean()),
        "length": fmean(len(r.split()) for r in responses),
        "spearman": spearman(proxy, gold),
        "discrepancy": discrepancy(proxy, gold),
        "sign_off_rate": fmean(sign_offs(r) > 0 for r in responses),
    }


def run_arm(client: R2MClient, prepared: Prepared, arm: Arm, config: ExperimentConfig,
            on_step: Callable[[dict[str, float]], None] | None = None) -> dict[str, object]:
    """One full run; returns its record (settings, fit losses, per-step series, samples)."""
    seed, tokenizer = prepared.seed, prepared.tokenizer
    k = config.responses_per_prompt
    policy = copy.deepcopy(prepared.sft_policy)
    reference = prepared.sft_policy
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.ppo.lr)
    ppo_order = torch.Generator().manual_seed(seed)  # minibatch order, the same in every arm
    noise = torch.Generator().manual_seed(seed + 1)  # only the noise arm draws from it
    suppressed = suppressed_ids(tokenizer)
    proxy = ProxyRM(client, arm, config, prepared.policy_hidden_size, seed)
    series: dict[str, list[float]] = defaultdict(list)
    try:
        fit_losses = proxy.fit_head(prepared.pairs, config.fit_steps, config.fit_batch_pairs,
                                    seed)
        for step in range(config.steps):
            timer = PhaseTimer()
            prompts = [prompt_for(p) for p in step_products(seed, step, config.prompts_per_step)]
            with timer("generation"):
                samples = sample(policy, tokenizer, prompts, k, config.max_new_tokens,
                                 seed=seed * 1_000_003 + step)
            states = None
            if arm.feedback != "none":
                with timer("hidden_states"):
                    states = policy_hidden_states(policy, tokenizer, samples.prompts,
                                                  samples.responses, batch_size=len(prompts) * k)
            with timer("scoring"):
                sent = None if states is None else score_feedback(arm, states, noise)
                scored = proxy.score(samples.prompts, samples.responses, sent, step)
            with timer("policy_update"):
                result = ppo_step(policy, reference, optimizer, samples.batch,
                                  torch.tensor(scored.rewards), k, suppressed, config.ppo,
                                  ppo_order)
            update = None
            if arm.online:
                with timer("r2m_update"):
                    update = proxy.update(samples.prompts, samples.responses,
                                          update_feedback(arm, result.fresh_hidden, noise),
                                          scored.rewards, k, step)
            row = {"step": float(step),
                   **step_metrics(samples.prompts, samples.responses, scored.rewards,
                                  result.kl),
                   "omega": scored.omega, "policy_loss": result.loss,
                   "rm_loss": float("nan") if update is None else update.loss,
                   **{f"time_{phase}": s for phase, s in timer.seconds.items()}}
            for key, value in row.items():
                series[key].append(value)
            if on_step is not None:
                on_step(row)
    finally:
        proxy.close()
    examples = [{"prompt": p, "response": r, "proxy": s, "gold": gold_reward(p, r)}
                for p, r, s in list(zip(samples.prompts, samples.responses, scored.rewards,
                                        strict=True))[:k * 2]]
    return {"run": proxy.info.model_dump(mode="json"), "fit_losses": fit_losses,
            "series": dict(series), "last_step_samples": examples}
