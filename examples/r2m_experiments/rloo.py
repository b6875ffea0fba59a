"""The policy update: RLOO advantages with a KL-to-reference penalty, optimised by PPO-clip.

Per RL step (docs/method.md#online-update): rewards come from the service and are z-scored over
the batch **[choice, issue 9]**; the sequence-level KL estimate Σ_t (log π_old − log π_ref) is
then subtracted with weight β (the RLOO recipe: KL in the reward, not in the loss). Standardising
first keeps β·KL at one weight against rewards of any scale: an online RM whose scale grows 50×
must not switch the KL constraint off (before this, one did: KL 106 against 3.6). Each
response's advantage is its shaped reward minus the mean of the other K − 1 responses to the same
prompt, then scaled by the batch std **[choice]** so one policy learning rate suits every arm's
reward scale. PPO-clip runs for a few epochs over minibatches; the forward passes of the last
epoch also give the *fresh* last-layer hidden states that R2M's `/v1/update` consumes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import GPT2LMHeadModel

from r2m_client.hf import unpad_hidden_states

from .policy import Batch, token_logprobs


@dataclass(frozen=True)
class PPOSettings:
    """Policy-optimisation hyper-parameters."""

    lr: float = 5e-4
    epochs: int = 2
    minibatches: int = 2
    clip: float = 0.2
    kl_coef: float = 0.05  # β, against z-scored rewards
    standardize_rewards: bool = True  # z-score the proxy rewards per batch before β·KL


def rloo_advantages(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Leave-one-out advantages for `rewards` laid out prompt-major in groups of `k`, scaled by
    the std of the whole batch (left unscaled when that std is ~0)."""
    groups = rewards.view(-1, k)
    baseline = (groups.sum(dim=1, keepdim=True) - groups) / (k - 1)
    advantages = (groups - baseline).flatten()
    std = advantages.std(correction=0)
    return advantages / std if std > 1e-8 else advantages


def zscore(rewards: torch.Tensor) -> torch.Tensor:
    """(r − mean) / population std over the batch; centred only when the std is ~0."""
    centred = rewards - rewards.mean()
    std = rewards.std(correction=0)
    return centred / std if std > 1e-8 else centred


def sequence_logprobs(model: GPT2LMHeadModel, batch: Batch,
                      suppressed: list[int]) -> torch.Tensor:
    """Per-token log-probs of the batch's actions under `model`, without gradients."""
    with torch.no_grad():
        return token_logprobs(model, batch, suppressed)[0]


def kl_to_reference(old: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per-sequence KL estimate Σ_t (log π_old − log π_ref) over the sampled tokens."""
    return (old - ref).sum(dim=1)


@dataclass(frozen=True)
class PolicyStepResult:
    kl: torch.Tensor  # per sequence
    fresh_hidden: list[torch.Tensor]  # per sequence, [S_i, D_p], from the last epoch
    loss: float


def ppo_step(model: GPT2LMHeadModel, reference: GPT2LMHeadModel,
             optimizer: torch.optim.Optimizer, batch: Batch, rewards: torch.Tensor, k: int,
             suppressed: list[int], settings: PPOSettings,
             generator: torch.Generator) -> PolicyStepResult:
    """One RL step's policy optimisation; returns the KL it penalised and the fresh hidden
    states of the last epoch (in batch order)."""
    model.eval()  # no dropout: π_old and the ratios must come from the same function
    old = sequence_logprobs(model, batch, suppressed)
    ref = sequence_logprobs(reference, batch, suppressed)
    kl = kl_to_reference(old, ref)
    scaled = zscore(rewards) if settings.standardize_rewards else rewards
    advantages = rloo_advantages(scaled - settings.kl_coef * kl, k)
    size = batch.input_ids.shape[0]
    fresh: list[torch.Tensor | None] = [None] * size
    losses = []
    for epoch in range(settings.epochs):
        last = epoch == settings.epochs - 1
        order = torch.randperm(size, generator=generator)
        for rows in order.chunk(settings.minibatches):
            part = Batch(*(t[rows] for t in (batch.input_ids, batch.attention_mask,
                                             batch.action_mask, batch.text_mask)))
            new, hidden = token_logprobs(model, part, suppressed, hidden=last)
            if hidden is not None:
                for row, states in zip(rows.tolist(), unpad_hidden_states(
                        hidden.detach(), part.text_mask), strict=True):
                    fresh[row] = states
            loss = _clipped_loss(new, old[rows], advantages[rows], part.action_mask,
                                 settings.clip)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    if any(h is None for h in fresh):
        raise RuntimeError("the last PPO epoch did not visit every sequence")
    return PolicyStepResult(kl=kl, fresh_hidden=fresh, loss=sum(losses) / len(losses))


def _clipped_loss(new: torch.Tensor, old: torch.Tensor, advantages: torch.Tensor,
                  mask: torch.Tensor, clip: float) -> torch.Tensor:
    """PPO-clip, averaged over each sequence's action tokens, then over sequences."""
    ratio = (new - old).exp()
    adv = advantages.unsqueeze(1)
    per_token = -torch.minimum(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    per_sequence = (per_token * mask).sum(1) / mask.sum(1).clamp(min=1)
    return per_sequence.mean()
