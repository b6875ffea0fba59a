"""The experiment's arms, mirroring the paper's baselines and ablations (R2M.md), and the one
thing that differs between them on the policy side: what is sent as "policy feedback".

Every arm uses the same seeds, SFT policy, labelled pairs, prompts and budget; an arm only
chooses what the service sees. All of it goes through the public API:

| arm            | score with          | online `/v1/update`        | Ω   | α   |
|----------------|---------------------|----------------------------|-----|-----|
| vanilla        | text only (ϕ(H_last)) | none                     | –   | –   |
| r2m            | hidden states       | GREBT, fresh hidden states | 0.6 | 0.3 |
| r2m_frozen     | hidden states       | none ("w/o train")         | 0.6 | –   |
| r2m_noise      | Gaussian noise      | GREBT, fresh noise         | 0.6 | 0.3 |
| iterative_head | text only           | GREBT on ϕ only            | 1.0 | 0.3 |
| r2m_no_bt      | hidden states       | GREBT with α = 1           | 0.6 | 1.0 |
| r2m_no_gre     | hidden states       | GREBT with α = 0           | 0.6 | 0.0 |

**[choice]** "Iterative RM head" is a run with Ω = 1: then ω(t) ≡ 1, the service computes
ϕ(H_last) and never reads hidden states, so GREBT trains the head alone. `/v1/update` still wants
one tensor per response; this arm sends a single zero row [1, D_p] for each, which the module
provably ignores at ω = 1.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

Feedback = Literal["hidden", "noise", "none"]


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    feedback: Feedback
    online: bool
    omega_floor: float | None = None  # None: the experiment's Ω
    alpha: float | None = None  # None: the experiment's α


ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("vanilla", "Static RM (vanilla RLOO)", "none", online=False),
    Arm("r2m", "R2M", "hidden", online=True),
    Arm("r2m_frozen", "R2M w/o train", "hidden", online=False),
    Arm("r2m_noise", "R2M w/ noise", "noise", online=True),
    Arm("iterative_head", "Iterative RM head (GREBT)", "none", online=True, omega_floor=1.0),
    Arm("r2m_no_bt", "R2M w/o BT (α=1)", "hidden", online=True, alpha=1.0),
    Arm("r2m_no_gre", "R2M w/o GRE (α=0)", "hidden", online=True, alpha=0.0),
)}


def matched_noise(states: Sequence[torch.Tensor], generator: torch.Generator
                  ) -> list[torch.Tensor]:
    """Gaussian noise shaped like `states`, with each feature's mean and std matched to that
    feature over every token of the batch: the marginal statistics survive, the information
    about the samples does not (the paper's "R2M w/ noise")."""
    tokens = torch.cat(list(states)).float()
    mean, std = tokens.mean(dim=0), tokens.std(dim=0, correction=0)
    return [mean + std * torch.randn(s.shape, generator=generator) for s in states]


def score_feedback(arm: Arm, states: Sequence[torch.Tensor], generator: torch.Generator
                   ) -> list[torch.Tensor] | None:
    """What `/v1/score` gets as hidden states: the real ones, matched noise, or none."""
    if arm.feedback == "hidden":
        return list(states)
    if arm.feedback == "noise":
        return matched_noise(states, generator)
    return None


def placeholder_states(count: int, width: int) -> list[torch.Tensor]:
    """One zero row [1, D_p] per sample, for requests whose module runs at ω = 1 and so never
    reads hidden states, although the API wants a tensor per sample."""
    return [torch.zeros(1, width) for _ in range(count)]


def update_feedback(arm: Arm, states: Sequence[torch.Tensor], generator: torch.Generator
                    ) -> list[torch.Tensor]:
    """What `/v1/update` gets: like `score_feedback`, and placeholders for the head-only arm
    (its Ω = 1 means the service never reads them)."""
    sent = score_feedback(arm, states, generator)
    if sent is not None:
        return sent
    return placeholder_states(len(states), states[0].shape[-1])


def select_arms(names: Sequence[str]) -> list[Arm]:
    """Arms by name, in the given order; unknown names raise with the valid ones."""
    unknown = [n for n in names if n not in ARMS]
    if unknown:
        raise ValueError(f"unknown arm(s) {unknown}; choose from {sorted(ARMS)}")
    return [ARMS[n] for n in names]
