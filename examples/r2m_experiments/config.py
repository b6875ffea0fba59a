"""Every setting of an experiment, in one frozen dataclass that is written into each run's JSON.

Two presets: `quick` (all seven arms, one seed, a few minutes on 2 CPU cores) and `full` (three
seeds, longer runs; the budget behind EXPERIMENTS.md). The CLI can override the sizes, which is
how the CI test runs a couple of steps.
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
    seeds: tuple[int, ...] = (0,)
    steps: int = 20  # T: RL steps per run (also the run's total_steps, which sets ω(t))
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
    fit_steps: int = 1000  # minibatch BT updates of the head, all at step 0
    fit_batch_pairs: int = 32
    # **[choice]** One AdamW learning rate per run (the service fixes it at creation), shared by
    # the head fit and the online R2M updates. The paper's 1e-6 suits an 8B RM over thousands of
    # steps; a miniature run of a few dozen steps needs a rate at which anything moves at all.
    rm_learning_rate: float = 2e-4
    omega_floor: float = 0.6  # Ω
    alpha: float = 0.3  # α
    final_window: int = 5  # "final" metrics average the last this-many steps

    def replace(self, **changes: object) -> ExperimentConfig:
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, object]:
        return dataclasses.asdict(self)


PRESETS: dict[str, ExperimentConfig] = {
    "quick": ExperimentConfig(mode="quick", seeds=(0,), steps=16),
    "full": ExperimentConfig(mode="full", seeds=(0, 1, 2), steps=60, final_window=10),
}
