"""What every arm of one seed shares: the tokenizer, the SFT policy, and the labelled pairs
(with the SFT policy's hidden states) that fit each arm's proxy head identically.

Built once per seed, so the arms differ only in what they ask of the service.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from r2m_client.hf import policy_hidden_states
from transformers import GPT2LMHeadModel, PreTrainedTokenizerFast

from .config import ExperimentConfig
from .gold import substance
from .policy import build_policy, build_tokenizer, supervised_finetune
from .task import PreferencePair, preference_pairs


@dataclass(frozen=True)
class Prepared:
    seed: int
    tokenizer: PreTrainedTokenizerFast
    sft_policy: GPT2LMHeadModel
    sft_losses: list[float]
    pairs: list[PreferencePair]
    chosen_hidden: list[torch.Tensor]
    rejected_hidden: list[torch.Tensor]

    @property
    def policy_hidden_size(self) -> int:
        return self.sft_policy.config.n_embd


def prepare(config: ExperimentConfig, seed: int) -> Prepared:
    """Supervise a fresh policy on the task and draw the labelled pairs for this seed."""
    tokenizer = build_tokenizer()
    policy = build_policy(tokenizer, config.policy, seed)
    losses = supervised_finetune(policy, tokenizer, steps=config.sft_steps,
                                 batch_size=config.sft_batch_size, lr=config.sft_lr, seed=seed)
    policy.eval()
    pairs = preference_pairs(random.Random(f"pairs/{seed}"), config.preference_pairs,
                             cue_rate=config.cue_rate, substance=substance)
    prompts = [p.prompt for p in pairs]
    chosen = policy_hidden_states(policy, tokenizer, prompts, [p.chosen for p in pairs],
                                  batch_size=64)
    rejected = policy_hidden_states(policy, tokenizer, prompts, [p.rejected for p in pairs],
                                    batch_size=64)
    return Prepared(seed, tokenizer, policy, losses, pairs, chosen, rejected)
