"""What every arm of one seed shares: the tokenizer, the SFT policy, and the labelled pairs that
fit each arm's proxy head identically.

Built once per seed, so the arms differ only in what they ask of the service. The SFT policy is
the one costly part (≈ 20 s per seed on one core); with a cache directory it is trained once and
then loaded by every worker process.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import torch
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


def prepare(config: ExperimentConfig, seed: int, cache: Path | None = None) -> Prepared:
    """Supervise a fresh policy on the task (or load it from `cache`, keyed by the SFT
    settings) and draw the labelled pairs for this seed."""
    tokenizer = build_tokenizer()
    policy = build_policy(tokenizer, config.policy, seed)
    path = None if cache is None else cache / f"sft-{_sft_key(config)}-seed{seed}.pt"
    if path is not None and path.exists():
        saved = torch.load(path, weights_only=True)
        policy.load_state_dict(saved["policy"])
        losses = saved["losses"]
    else:
        losses = supervised_finetune(policy, tokenizer, steps=config.sft_steps,
                                     batch_size=config.sft_batch_size, lr=config.sft_lr,
                                     seed=seed)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            torch.save({"policy": policy.state_dict(), "losses": losses}, path.with_suffix(".tmp"))
            path.with_suffix(".tmp").replace(path)
    policy.eval()
    pairs = preference_pairs(random.Random(f"pairs/{seed}"), config.preference_pairs,
                             cue_rate=config.cue_rate, substance=substance)
    return Prepared(seed, tokenizer, policy, losses, pairs)


def _sft_key(config: ExperimentConfig) -> str:
    shape = config.policy
    return (f"{shape.layers}x{shape.width}h{shape.heads}p{shape.max_positions}-"
            f"{config.sft_steps}x{config.sft_batch_size}-lr{config.sft_lr:g}")
