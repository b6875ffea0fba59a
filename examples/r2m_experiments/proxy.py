"""The proxy reward model of one arm: a run on the r2m service, used through `R2MClient` only.

Creating it also fits its head: at step 0, ω(0) = 1, so `/v1/update` in pairs mode trains ϕ
alone with Bradley–Terry on the labelled pairs (R2M.md: at t = 0 R2M is the vanilla RM). The run
keeps one learning rate for that fit and for the online updates (config.py). Every call passes
`step=t` explicitly, so the fit's many updates at step 0 never advance the run's ω(t).
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch

from r2m_client import Group, Pair, R2MClient, ScoreResponse, UpdateResponse

from .arms import Arm, placeholder_states
from .config import ExperimentConfig
from .task import PreferencePair


class ProxyRM:
    """One arm's run: create, fit the head, score, update, delete."""

    def __init__(self, client: R2MClient, arm: Arm, config: ExperimentConfig,
                 policy_hidden_size: int, seed: int) -> None:
        self.client = client
        self.info = client.create_run(
            policy_hidden_size, config.steps,
            omega_floor=config.omega_floor if arm.omega_floor is None else arm.omega_floor,
            alpha=config.alpha if arm.alpha is None else arm.alpha,
            learning_rate=config.rm_learning_rate, seed=seed)
        self.run_id = self.info.run_id

    def fit_head(self, pairs: Sequence[PreferencePair], steps: int, batch_pairs: int,
                 seed: int) -> list[float]:
        """`steps` BT updates at step 0 on minibatches of `batch_pairs` pairs, reshuffled (seeded)
        every epoch; returns the loss of each update.

        At ω(0) = 1 the module never reads hidden states, so each side sends a one-row
        placeholder (the API wants a tensor per side). Sending the policy's real states gives
        the same updates bit for bit and made the fit 2.3× slower here."""
        width = self.info.config.policy_hidden_size
        chosen, rejected = (placeholder_states(len(pairs), width) for _ in range(2))
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
            losses.append(self.client.update(self.run_id, pairs=chunk, step=0).loss)
        return losses

    def score(self, prompts: Sequence[str], responses: Sequence[str],
              hidden: Sequence[torch.Tensor] | None, step: int) -> ScoreResponse:
        return self.client.score(self.run_id, prompts, responses, hidden, step=step)

    def update(self, prompts: Sequence[str], responses: Sequence[str],
               hidden: Sequence[torch.Tensor], scores: Sequence[float], k: int,
               step: int) -> UpdateResponse:
        """One GREBT step on the step's groups (prompt-major, K per group), winner and loser
        picked by the annotation-phase `scores`."""
        groups = [Group(prompts[g], responses[g:g + k], hidden[g:g + k], scores[g:g + k])
                  for g in range(0, len(responses), k)]
        return self.client.update(self.run_id, groups=groups, step=step)

    def close(self) -> None:
        self.client.delete_run(self.run_id)
