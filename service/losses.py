"""Training objectives (docs/method.md, "Losses"): Bradley–Terry (Eq. 5), group reward entropy
(Eq. 6) and GREBT (Eq. 7)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch.nn import functional as F

# **[choice]** guards z = (r − mean)/std when a group's rewards are (nearly) all equal.
STD_EPS = 1e-6


@dataclass(frozen=True)
class LossTerms:
    loss: torch.Tensor
    bt_loss: torch.Tensor
    gre_loss: torch.Tensor | None


def bradley_terry(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """−log σ(r_w − r_l), per pair."""
    return -F.logsigmoid(chosen - rejected)


def group_reward_entropy(rewards: torch.Tensor) -> torch.Tensor:
    """−Σ_j p_j log p_j with p = softmax(z), z the group's rewards standardised by the
    population std."""
    z = (rewards - rewards.mean()) / (rewards.std(correction=0) + STD_EPS)
    log_p = torch.log_softmax(z, dim=-1)
    return -(log_p.exp() * log_p).sum()


def winner_loser(labels: torch.Tensor) -> tuple[int, int]:
    """Indices of the highest- and lowest-labelled responses. **[choice]** ties go to the first
    index; if all labels tie, winner == loser and the BT term is the constant log 2 (no
    gradient)."""
    return int(labels.argmax()), int(labels.argmin())


def grebt(rewards: Sequence[torch.Tensor], labels: Sequence[torch.Tensor],
          alpha: float) -> LossTerms:
    """(1 − α)·L_BT + α·L_GRE averaged over groups. `rewards[g]` are group g's recomputed
    rewards (with grad); `labels[g]` pick its winner and loser (annotation scores or the detached
    rewards)."""
    bt_terms, gre_terms = [], []
    for group_rewards, group_labels in zip(rewards, labels, strict=True):
        w, l_ = winner_loser(group_labels)
        bt_terms.append(bradley_terry(group_rewards[w], group_rewards[l_]))
        gre_terms.append(group_reward_entropy(group_rewards))
    bt = torch.stack(bt_terms).mean()
    gre = torch.stack(gre_terms).mean()
    return LossTerms(loss=(1.0 - alpha) * bt + alpha * gre, bt_loss=bt, gre_loss=gre)


def pairwise_bt(chosen: torch.Tensor, rejected: torch.Tensor) -> LossTerms:
    """Plain BT for externally labelled pairs, averaged."""
    bt = bradley_terry(chosen, rejected).mean()
    return LossTerms(loss=bt, bt_loss=bt, gre_loss=None)
