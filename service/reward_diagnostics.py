"""Per-run reward diagnostics **[beyond the paper]**: is the feedback branch taking over the
reward, and has the reward's scale drifted?

Why: in the project's miniature (issue 9) an online R2M run collapsed while every request
succeeded; the only visible signs were the reward's scale growing ~50× and the feedback branch
setting the ranking. Both can be read off the served rewards exactly, at no extra model cost:
r = ϕ(H_fin) = w·((1 − ω)Ĥ + ω·H_last) + b is linear in H_fin, so

    RTE branch      = ω·w·H_last + b      (w·H_last + b for items served without hidden states)
    feedback branch = r − RTE branch = (1 − ω)·w·Ĥ

and only the cheap RTE branch (one dot product per item) is computed again. Figures describe the
rewards served at the run's latest scored RL step (a new step starts a new tally), so they follow
the training loop's rhythm. They live in this process only: each replica reports what it served,
and a restart starts them afresh.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from r2m_proto.schemas import RewardDiagnostics
from r2m_service.samples import stack_rtes

if TYPE_CHECKING:
    from r2m_service.batching import BatchItem
    from r2m_service.metrics import Metrics
    from r2m_service.runs import Run

# Below this reward std a step has no spread to compare scales or branch shares against.
MIN_STD = 1e-8


@dataclass
class _Moments:
    """Running sums (float64) of the rewards served at one step and of both branches."""

    step: int
    n: int = 0
    reward: float = 0.0
    reward_sq: float = 0.0
    feedback: float = 0.0
    feedback_sq: float = 0.0
    rte: float = 0.0
    rte_sq: float = 0.0

    def add(self, rewards: torch.Tensor, feedback: torch.Tensor) -> None:
        rte = rewards - feedback
        self.n += rewards.numel()
        for name, values in (("reward", rewards), ("feedback", feedback), ("rte", rte)):
            setattr(self, name, getattr(self, name) + float(values.sum()))
            setattr(self, f"{name}_sq", getattr(self, f"{name}_sq") + float((values**2).sum()))

    def mean(self, name: str) -> float:
        return getattr(self, name) / self.n

    def std(self, name: str) -> float:
        mean = self.mean(name)
        return math.sqrt(max(getattr(self, f"{name}_sq") / self.n - mean * mean, 0.0))


class RunDiagnostics:
    """One run's tally. Written on the model thread; `snapshot()` may be read from any thread
    (it returns an immutable object, replaced whole under a lock)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._moments: _Moments | None = None
        self._reference_std: float | None = None
        self._snapshot = RewardDiagnostics()

    def snapshot(self) -> RewardDiagnostics:
        with self._lock:
            return self._snapshot

    def observe(self, step: int, rewards: torch.Tensor, feedback: torch.Tensor,
                norms: tuple[float, float]) -> RewardDiagnostics:
        """Add rewards served at `step` (float64, CPU) and their feedback-branch parts."""
        with self._lock:
            if self._moments is None or self._moments.step != step:
                self._moments = _Moments(step)
            moments = self._moments
            moments.add(rewards, feedback)
            self._snapshot = self._describe(moments, norms)
            return self._snapshot

    def _describe(self, m: _Moments, norms: tuple[float, float]) -> RewardDiagnostics:
        o_norm, head_norm = norms
        if m.n < 2:
            return RewardDiagnostics(step=m.step, items=m.n, o_norm=o_norm, head_norm=head_norm)
        reward_std, feedback_std, rte_std = (m.std(name) for name in ("reward", "feedback", "rte"))
        branch_var = feedback_std**2 + rte_std**2
        if self._reference_std is None and reward_std > MIN_STD:
            self._reference_std = reward_std
        return RewardDiagnostics(
            step=m.step, items=m.n, reward_mean=m.mean("reward"), reward_std=reward_std,
            feedback_std=feedback_std, rte_std=rte_std,
            feedback_share=feedback_std**2 / branch_var if branch_var > MIN_STD**2 else None,
            reference_reward_std=self._reference_std,
            scale_drift=None if self._reference_std is None
            else reward_std / self._reference_std,
            o_norm=o_norm, head_norm=head_norm)


def observe_scores(run: Run, items: Sequence[BatchItem], rewards: torch.Tensor,
                   metrics: Metrics) -> None:
    """Fold one model batch's rewards for `run` (all at one ω) into its diagnostics and export
    them. `rewards[i]` is what `items[i]` was served. Model thread."""
    module = run.module
    omega_t = items[0].job.omega
    with torch.no_grad():
        weight = module.score.weight.squeeze(0)
        rte = stack_rtes([item.sample for item in items], weight.device)
        fed_back = torch.tensor([item.sample.hidden is not None and omega_t < 1.0
                                 for item in items], device=weight.device)
        scale = torch.where(fed_back, omega_t, 1.0)
        rte_branch = (scale * (rte @ weight) + module.score.bias).double().cpu()
        norms = (float(module.o_proj.weight.norm()), float(weight.norm()))
    rewards = rewards.double()
    feedback = rewards - rte_branch
    steps = torch.tensor([item.job.step for item in items])
    snapshot = None
    for step in steps.unique().tolist():
        rows = steps == step
        snapshot = run.diagnostics.observe(step, rewards[rows], feedback[rows], norms)
    if snapshot is not None:
        publish(metrics, run.run_id, snapshot)


def publish(metrics: Metrics, run_id: str, snapshot: RewardDiagnostics) -> None:
    """Set the run's diagnostic gauges; a figure not known yet creates no series (a 0 would
    read as a real value)."""
    figures = (
        (metrics.run_reward_mean, (run_id,), snapshot.reward_mean),
        (metrics.run_reward_std, (run_id,), snapshot.reward_std),
        (metrics.run_feedback_share, (run_id,), snapshot.feedback_share),
        (metrics.run_reward_scale_drift, (run_id,), snapshot.scale_drift),
        (metrics.run_branch_std, (run_id, "feedback"), snapshot.feedback_std),
        (metrics.run_branch_std, (run_id, "rte"), snapshot.rte_std),
        (metrics.run_weight_norm, (run_id, "o_proj"), snapshot.o_norm),
        (metrics.run_weight_norm, (run_id, "head"), snapshot.head_norm),
    )
    for gauge, labels, value in figures:
        if value is not None:
            gauge.labels(*labels).set(value)
