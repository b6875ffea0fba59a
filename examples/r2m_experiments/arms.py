"""The experiment's arms: the paper's baselines and ablations
(docs/method.md#baselines-and-ablations-through-the-api), the online-lr sweep, a guard, and sparse
gold labels (issue 9) — and the one thing that differs between them on the policy side: what is
sent as "policy feedback".

Every arm uses the same seeds, SFT policy, labelled pairs, prompts, held-out pairs and budget; an
arm only chooses what the service sees. All of it goes through the public API:

| arm                     | score with      | online `/v1/update` each step          | Ω   | α   |
|-------------------------|-----------------|----------------------------------------|-----|-----|
| vanilla                 | text only       | none                                   | –   | –   |
| r2m, r2m_lr*            | hidden states   | GREBT, fresh hidden states, at its lr  | 0.6 | 0.3 |
| r2m_frozen              | hidden states   | none ("w/o train")                     | 0.6 | –   |
| r2m_noise               | Gaussian noise  | GREBT, fresh noise                     | 0.6 | 0.3 |
| iterative_head          | text only       | GREBT on ϕ only                        | 1.0 | 0.3 |
| r2m_no_bt / r2m_no_gre  | hidden states   | GREBT with α = 1 / α = 0               | 0.6 | 1/0 |
| r2m_zero_o              | hidden states   | GREBT; run created with `init=zero_o`  | 0.6 | 0.3 |
| r2m_gold{k}             | hidden states   | k gold-labelled pairs (BT)             | 0.6 | –   |
| r2m_grebt_gold{k}       | hidden states   | GREBT, then k gold-labelled pairs      | 0.6 | 0.3 |
| head_gold{k}            | text only       | k gold-labelled pairs on ϕ only        | 1.0 | –   |
| head_grebt_gold{k}      | text only       | GREBT, then k gold pairs, on ϕ only    | 1.0 | 0.3 |

**[choice]** "Iterative RM head" is a run with Ω = 1: then ω(t) ≡ 1, the service computes
ϕ(H_last) and never reads hidden states, so every update trains the head alone. `/v1/update`
still wants one tensor per response; these arms send a single zero row [1, D_p] for each, which
the module provably ignores at ω = 1.

**[choice]** "Mixed" gold arms make two update calls per step (two optimizer steps): GREBT on the
step's groups at the run's online rate, then BT on the k gold pairs at the fit's rate — the API
takes groups or pairs per call, and labelled pairs are trained like the fit's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

Feedback = Literal["hidden", "noise", "none"]
# Issue 9: at least these online rates. The last is the headline rate (config.online_lr), which
# the `r2m` arm runs at; the others get an arm each.
SWEEP_LRS = (1e-6, 3e-6, 1e-5, 3e-5)
GOLD_PAIRS_PER_STEP = (2, 8)


@dataclass(frozen=True)
class Arm:
    name: str
    label: str
    feedback: Feedback
    grebt: bool  # self-labelled GREBT update every step
    gold_pairs: int = 0  # gold-labelled pairs per step (BT), 0: none
    omega_floor: float | None = None  # None: the experiment's Ω
    alpha: float | None = None  # None: the experiment's α
    learning_rate: float | None = None  # the run's online rate; None: the experiment's
    init: str = "default"  # the run's `init`
    headline: bool = False  # run with every seed (else the secondary seeds)


def lr_name(lr: float) -> str:
    """1e-06 → "1e-6": the arm-name spelling of a rate."""
    mantissa, exponent = f"{lr:.0e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def _gold_arms(k: int) -> tuple[Arm, ...]:
    headline = k == max(GOLD_PAIRS_PER_STEP)
    return (
        Arm(f"r2m_gold{k}", f"R2M + {k} gold pairs", "hidden", grebt=False, gold_pairs=k,
            headline=headline),
        Arm(f"r2m_grebt_gold{k}", f"R2M (GREBT) + {k} gold pairs", "hidden", grebt=True,
            gold_pairs=k, headline=headline),
        Arm(f"head_gold{k}", f"Iterative head + {k} gold pairs", "none", grebt=False,
            gold_pairs=k, omega_floor=1.0, headline=headline),
        Arm(f"head_grebt_gold{k}", f"Iterative head (GREBT) + {k} gold pairs", "none",
            grebt=True, gold_pairs=k, omega_floor=1.0, headline=headline),
    )


ARMS: dict[str, Arm] = {arm.name: arm for arm in (
    Arm("vanilla", "Static RM (vanilla RLOO)", "none", grebt=False, headline=True),
    Arm("r2m", "R2M", "hidden", grebt=True, headline=True),
    *(Arm(f"r2m_lr{lr_name(lr)}", f"R2M, online lr {lr_name(lr)}", "hidden", grebt=True,
          learning_rate=lr, headline=True) for lr in SWEEP_LRS[:-1]),
    Arm("r2m_frozen", "R2M w/o train", "hidden", grebt=False),
    Arm("r2m_noise", "R2M w/ noise", "noise", grebt=True),
    Arm("iterative_head", "Iterative RM head (GREBT)", "none", grebt=True, omega_floor=1.0,
        headline=True),
    Arm("r2m_no_bt", "R2M w/o BT (α=1)", "hidden", grebt=True, alpha=1.0),
    Arm("r2m_no_gre", "R2M w/o GRE (α=0)", "hidden", grebt=True, alpha=0.0),
    Arm("r2m_zero_o", "R2M, init W_o = 0 (guard)", "hidden", grebt=True, init="zero_o"),
    *(arm for k in GOLD_PAIRS_PER_STEP for arm in _gold_arms(k)),
)}
SWEEP_ARMS = ("r2m", *(f"r2m_lr{lr_name(lr)}" for lr in SWEEP_LRS[:-1]))


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
