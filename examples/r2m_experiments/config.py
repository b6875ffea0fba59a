"""Every setting of an experiment, in one frozen dataclass that is written into each run's JSON.

Two presets: `quick` (every arm, one seed, a few steps: the CI smoke run, ≤ 3 min on 2 cores) and
`full` (the budget behind EXPERIMENTS.md). The CLI can override any size.

Learning rates (issue 9). The head fit and the online updates no longer share a rate: each run
is created with its *online* rate, and the fit of ϕ at step 0 sends `fit_lr` per request
(`/v1/update` `learning_rate`). Gold-labelled pairs (the sparse-label arms) are labelled pairs like
the fit's and are sent at the same `fit_lr`. The paper trains the RM part at 1e-6 for about
1,000 steps (UltraFeedback prompts at n = 64), i.e. lr·T ≈ 1e-3; the sweep spans lr·T from 6e-5
to 1.8e-3 at T = 60, and the *headline* online rate is fixed in advance as the smallest sweep
rate whose lr·T reaches 1e-3 (3e-5 at T = 60).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from .arms import ARMS
from .policy import PolicyShape
from .rloo import PPOSettings


@dataclass(frozen=True)
class ExperimentConfig:
    mode: str
    arms: tuple[str, ...] = tuple(ARMS)
    seeds: tuple[int, ...] = (0,)  # headline arms
    secondary_seeds: tuple[int, ...] = (0,)  # every other arm (a prefix of `seeds`)
    steps: int = 60  # T: RL steps per run (also the run's total_steps, which sets ω(t))
    prompts_per_step: int = 8  # n
    responses_per_prompt: int = 4  # K
    max_new_tokens: int = 32
    policy: PolicyShape = field(default_factory=PolicyShape)
    sft_steps: int = 300
    sft_batch_size: int = 32
    sft_lr: float = 3e-3
    ppo: PPOSettings = field(default_factory=PPOSettings)
    # The proxy RM: ϕ fitted with plain BT on labelled pairs that carry the spurious sign-off cue.
    preference_pairs: int = 256
    cue_rate: float = 0.9
    fit_steps: int = 500  # minibatch BT updates of the head, all at step 0
    fit_batch_pairs: int = 32
    fit_lr: float = 4e-4  # per-request rate of the fit (and of gold-labelled pairs)
    online_lr: float = 3e-5  # the headline online rate (module docstring); ablations use it
    omega_floor: float = 0.6  # Ω
    alpha: float = 0.3  # α
    # Held-out gold-labelled pairs, fixed per seed, scored every step.
    eval_pairs: int = 48  # two SFT-like reviews, labelled by gold
    eval_cue_pairs: int = 24  # one review with and without the sign-off (gold: without)
    final_window: int = 10  # "final" metrics average the last this-many steps
    # Time overhead (timing.py): these arms on a fresh server each, seed `seeds[0]`.
    timing_arms: tuple[str, ...] = ("vanilla", "r2m_frozen", "r2m")
    timing_repeats: int = 4  # passes, alternating the arms' order
    timing_steps: int = 30

    def replace(self, **changes: object) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)

    def seeds_for(self, arm: str) -> tuple[int, ...]:
        return self.seeds if ARMS[arm].headline else self.secondary_seeds


PRESETS: dict[str, ExperimentConfig] = {
    "quick": ExperimentConfig(mode="quick", seeds=(0,), secondary_seeds=(0,), steps=6,
                              prompts_per_step=4, sft_steps=60, fit_steps=60, fit_lr=2e-3,
                              eval_pairs=16, eval_cue_pairs=8, final_window=3,
                              timing_repeats=1, timing_steps=4),
    "full": ExperimentConfig(mode="full", seeds=(0, 1, 2, 3, 4), secondary_seeds=(0, 1, 2)),
}
