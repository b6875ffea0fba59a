"""The RL loop of one (arm, seed), talking to the service through the public client only:

    sample → hidden states (client helper) → /v1/score → PPO-clip + KL → /v1/update

(docs/method.md#online-update, Algorithm 1), and the per-step log:

- on-policy: proxy and gold reward, KL to the reference, length, proxy–gold rank correlation and
  discrepancy, sign-off rate;
- the RM on the fixed held-out pairs (heldout.py): accuracy overall and on the cue-only pairs,
  proxy–gold discrepancy — scored with the current policy's hidden states at the step's ω(t);
- the service's reward diagnostics for the step's rewards (`GET /v1/runs/{id}`): reward std, the
  std of the feedback and RTE branches, the feedback branch's variance share, the scale drift,
  ‖W_o‖ and ‖ϕ‖;
- the wall time of each training phase. Measurement (held-out scoring, diagnostics) is timed
  apart and is not part of the step.
"""

from __future__ import annotations

import copy
import math
import random
import time
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from statistics import fmean

import torch
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from r2m_client import Pair, R2MClient, RunInfo
from r2m_client.hf import policy_hidden_states

from .arms import Arm, placeholder_states, score_feedback, update_feedback
from .config import ExperimentConfig
from .gold import gold_reward, sign_offs
from .gold_labels import gold_pairs
from .heldout import HeldOut, evaluate, held_out_pairs
from .metrics import discrepancy, spearman
from .policy import sample, suppressed_ids
from .prepare import Prepared
from .proxy import ProxyRM
from .rloo import ppo_step
from .task import prompt_for, step_products

PHASES = ("generation", "hidden_states", "scoring", "policy_update", "r2m_update",
          "gold_update")
DIAGNOSTICS = ("reward_std", "feedback_std", "rte_std", "feedback_share", "scale_drift",
               "o_norm", "head_norm")


class PhaseTimer:
    """Wall time of each phase of the current step."""

    def __init__(self) -> None:
        self.seconds = dict.fromkeys((*PHASES, "measurement"), 0.0)

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


def diagnostic_metrics(run: RunInfo) -> dict[str, float]:
    """The service's figures for the step's rewards (NaN where it has none)."""
    values = {key: getattr(run.diagnostics, key) for key in DIAGNOSTICS}
    return {key: math.nan if value is None else value for key, value in values.items()}


def heldout_rewards(proxy: ProxyRM, arm: Arm, policy: GPT2LMHeadModel,
                    tokenizer: PreTrainedTokenizerFast, held_out: HeldOut, step: int,
                    noise: torch.Generator) -> list[float]:
    """The held-out texts scored as the step's samples were: with the current policy's hidden
    states (or matched noise, or none, as the arm sends) at ω(step)."""
    prompts, responses = held_out.texts()
    hidden = None
    if arm.feedback != "none":
        states = policy_hidden_states(policy, tokenizer, prompts, responses,
                                      batch_size=len(prompts))
        hidden = score_feedback(arm, states, noise)
    return proxy.score(prompts, responses, hidden, step).rewards


def run_arm(client: R2MClient, prepared: Prepared, arm: Arm, config: ExperimentConfig,
            on_step: Callable[[dict[str, float]], None] | None = None, *,
            measure: bool = True) -> dict[str, object]:
    """One full run; returns its record (settings, fit losses, per-step series, samples).
    `measure=False` skips the held-out set and the diagnostics (timing runs)."""
    seed, tokenizer = prepared.seed, prepared.tokenizer
    k = config.responses_per_prompt
    policy = copy.deepcopy(prepared.sft_policy)
    reference = prepared.sft_policy
    optimizer = torch.optim.AdamW(policy.parameters(), lr=config.ppo.lr)
    ppo_order = torch.Generator().manual_seed(seed)  # minibatch order, the same in every arm
    noise = torch.Generator().manual_seed(seed + 1)  # only the noise arm draws from it
    eval_noise = torch.Generator().manual_seed(seed + 2)  # held-out scoring of the noise arm
    labeller = random.Random(f"gold-pairs/{seed}")  # only the gold arms draw from it
    suppressed = suppressed_ids(tokenizer)
    held_out = held_out_pairs(seed, config.eval_pairs, config.eval_cue_pairs)
    proxy = ProxyRM(client, arm, config, prepared.policy_hidden_size, seed)
    series: dict[str, list[float]] = defaultdict(list)
    try:
        fit_losses = proxy.fit_head(prepared.pairs, config.fit_steps, config.fit_batch_pairs,
                                    config.fit_lr, seed)
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
            measured: dict[str, float] = {}
            if measure:
                with timer("measurement"):
                    measured = diagnostic_metrics(proxy.run_info())
                    measured |= evaluate(held_out, heldout_rewards(
                        proxy, arm, policy, tokenizer, held_out, step, eval_noise))
            with timer("policy_update"):
                result = ppo_step(policy, reference, optimizer, samples.batch,
                                  torch.tensor(scored.rewards), k, suppressed, config.ppo,
                                  ppo_order)
            losses = {"rm_loss": math.nan, "gold_loss": math.nan}
            if arm.grebt:
                with timer("r2m_update"):
                    losses["rm_loss"] = proxy.update(
                        samples.prompts, samples.responses,
                        update_feedback(arm, result.fresh_hidden, noise), scored.rewards, k,
                        step).loss
            if arm.gold_pairs:
                with timer("gold_update"):
                    losses["gold_loss"] = _gold_update(proxy, arm, samples.prompts,
                                                       samples.responses, result.fresh_hidden,
                                                       k, step, config.fit_lr, labeller)
            row = {"step": float(step),
                   **step_metrics(samples.prompts, samples.responses, scored.rewards,
                                  result.kl),
                   **measured, "omega": scored.omega, "policy_loss": result.loss, **losses,
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


def _gold_update(proxy: ProxyRM, arm: Arm, prompts: Sequence[str], responses: Sequence[str],
                 fresh_hidden: Sequence[torch.Tensor], k: int, step: int, learning_rate: float,
                 labeller: random.Random) -> float:
    """One BT step on `arm.gold_pairs` gold-labelled pairs of the step's responses, with their
    fresh hidden states (placeholders for head-only arms); NaN if no pair had distinct gold."""
    chosen = gold_pairs(prompts, responses, k, arm.gold_pairs, labeller)
    if not chosen:
        return math.nan
    hidden = (list(fresh_hidden) if arm.feedback == "hidden"
              else placeholder_states(len(responses), fresh_hidden[0].shape[-1]))
    pairs = [Pair(prompts[w], responses[w], responses[l_], hidden[w], hidden[l_])
             for w, l_ in chosen]
    return proxy.update_pairs(pairs, step, learning_rate).loss
