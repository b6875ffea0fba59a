"""The proxy reward model of one arm: a run on the r2m service, used through `R2MClient` only.

The run is created with the arm's *online* learning rate. Creating it also fits its head: at
step 0, ω(0) = 1, so `/v1/update` in pairs mode trains ϕ alone with Bradley–Terry on the labelled
pairs (at t = 0 R2M is the vanilla RM: docs/method.md#time-step-weight), each fit request at the
fit's own rate (`learning_rate` per request), so the fit and the online updates no longer share
a rate (issue 9). Every call passes `step=t` explicitly, so the fit's many updates at step 0
never advance the run's ω(t).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from r2m_client import Group, Pair, R2MClient, RunInfo, ScoreResponse, UpdateResponse

from .arms import Arm, placeholder_states
from .config import ExperimentConfig
from .task import PreferencePair


def run_settings(arm: Arm, config: ExperimentConfig) -> dict[str, object]:
    """The arm's `create_run` options."""
    return {"omega_floor": config.omega_floor if arm.omega_floor is None else arm.omega_floor,
            "alpha": config.alpha if arm.alpha is None else arm.alpha,
            "learning_rate": arm.learning_rate or config.online_lr, "init": arm.init}


class ProxyRM:
    """One arm's run: create, fit the head, score, update, read diagnostics, delete."""

    def __init__(self, client: R2MClient, arm: Arm, config: ExperimentConfig,
                 policy_hidden_size: int, seed: int) -> None:
        self.client = client
        self.info = client.create_run(policy_hidden_size, config.steps, seed=seed,
                                      **run_settings(arm, config))
        self.run_id = self.info.run_id
        self.width = policy_hidden_size

    def fit_head(self, pairs: Sequence[PreferencePair], steps: int, batch_pairs: int,
                 learning_rate: float, seed: int) -> list[float]:
        """`steps` BT updates at step 0 on minibatches of `batch_pairs` pairs, reshuffled (seeded)
        every epoch, each at `learning_rate`; returns the loss of each update.

        At ω(0) = 1 the module never reads hidden states, so each side sends a one-row
        placeholder (the API wants a tensor per side). Sending the policy's real states gives
        the same updates bit for bit and made the fit 2.3× slower here."""
        chosen, rejected = (placeholder_states(len(pairs), self.width) for _ in range(2))
        batch = [Pair(p.prompt, p.chosen, p.rejected, c, r)
                 for p, c, r in zip(pairs, chosen, rejected, strict=True)]
        per_epoch = max(1, len(batch) // batch_pairs)
        rng = random.Random(f"fit/{seed}")
        losses = []
        for step in range(steps):
            if step % per_epoch == 0:
                rng.shuffle(batch)
            start = (step % per_epoch) * batch_pairs
            chunk = batch[start:start + batch_pairs]
            losses.append(self.client.update(self.run_id, pairs=chunk, step=0,
                                             learning_rate=learning_rate).loss)
        return losses

    def score(self, prompts: Sequence[str], responses: Sequence[str],
              hidden: Sequence[torch.Tensor] | None, step: int) -> ScoreResponse:
        return self.client.score(self.run_id, prompts, responses, hidden, step=step)

    def update(self, prompts: Sequence[str], responses: Sequence[str],
               hidden: Sequence[torch.Tensor], scores: Sequence[float], k: int,
               step: int) -> UpdateResponse:
        """One GREBT step on the step's groups (prompt-major, K per group) at the run's rate,
        winner and loser picked by the annotation-phase `scores`."""
        groups = [Group(prompts[g], responses[g:g + k], hidden[g:g + k], scores[g:g + k])
                  for g in range(0, len(responses), k)]
        return self.client.update(self.run_id, groups=groups, step=step)

    def update_pairs(self, pairs: Sequence[Pair], step: int,
                     learning_rate: float) -> UpdateResponse:
        """One BT step on externally labelled pairs at `learning_rate`."""
        return self.client.update(self.run_id, pairs=pairs, step=step,
                                  learning_rate=learning_rate)

    def run_info(self) -> RunInfo:
        """The run as the service reports it now, with its reward diagnostics."""
        return self.client.get_run(self.run_id)

    def close(self) -> None:
        self.client.delete_run(self.run_id)
