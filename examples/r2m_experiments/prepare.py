"""What every arm of one seed shares: the tokenizer, the SFT policy, and the labelled pairs that
fit each arm's proxy head identically.

Built once per seed, so the arms differ only in what they ask of the service.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

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
    return Prepared(seed, tokenizer, policy, losses, pairs)
