"""Training guards beyond the paper: how a run's optimizer is built and stepped.

The paper trains W_q, W_k, W_v, W_o and ϕ with one learning rate and says nothing of clipping.
A run may ask for more (`RunSettings`, all **[beyond the paper]**, defaults = the paper's setting):

- `head_learning_rate`: ϕ in its own AdamW param group, so the scoring head (which alone sets
  the reward's scale) can move slower or faster than the attention projections;
- `max_grad_norm`: clip the module's global gradient norm before each step;
- a per-request `learning_rate` on `/v1/update`: one step at another rate for every tensor, e.g.
  a fast fit of ϕ on labelled pairs at step 0 while the run keeps its slow online rate. Without
  it the fit and the online updates share one rate, which is how the project's miniature ran
  200× the paper's online rate (issue 9).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from r2m_proto.schemas import RunSettings
from r2m_service.r2m_module import R2MModule


def build_optimizer(module: R2MModule, config: RunSettings) -> torch.optim.AdamW:
    """AdamW over the trainable tensors: the attention projections at `learning_rate`, ϕ at
    `head_learning_rate` (default the same). **[choice: AdamW]** (the paper names none).

    **[choice]** ϕ's bias is not stepped. Every objective here (BT, GRE, GREBT) compares rewards
    within a pair or a group, so the bias's gradient is exactly zero; AdamW divides by the root of
    its second moment, and would turn the float rounding left in that zero into steps of about
    the learning rate, a random walk of every reward's offset (measured: 1.2e-2 after 10 steps
    at lr 1e-2). Left out, the offset stays the backbone RM's, as exact arithmetic would keep it.
    """
    attention = [module.q_proj.weight, module.k_proj.weight, module.v_proj.weight,
                 module.o_proj.weight]
    head = [module.score.weight]
    head_lr = config.head_learning_rate or config.learning_rate
    return torch.optim.AdamW([{"params": attention, "lr": config.learning_rate},
                              {"params": head, "lr": head_lr}],
                             lr=config.learning_rate, weight_decay=config.weight_decay)


def optimizer_step(optimizer: torch.optim.Optimizer, module: R2MModule,
                   max_grad_norm: float | None, learning_rate: float | None) -> torch.Tensor:
    """Clip (if asked), then step, at `learning_rate` for this step if given. Returns the global
    gradient norm *before* clipping, which is what shows an exploding update."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    if max_grad_norm is None:
        grad_norm = torch.nn.utils.get_total_norm(grads)
    else:
        grad_norm = torch.nn.utils.clip_grad_norm_(
            [p for p in module.parameters() if p.grad is not None], max_grad_norm)
    with _learning_rate(optimizer, learning_rate):
        optimizer.step()
    return grad_norm


@contextmanager
def _learning_rate(optimizer: torch.optim.Optimizer, learning_rate: float | None) -> Iterator[None]:
    """Every param group at `learning_rate` inside the block; the run's own rates after it."""
    if learning_rate is None:
        yield
        return
    saved = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = learning_rate
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, saved, strict=True):
            group["lr"] = lr
