"""A version as the optimizer step that made it, so a store can log a third of the bytes of a full
state per update and still give any replica that version bit-for-bit.

A step record holds the gradient AdamW applied to each parameter (after clipping: `guards.py`
clips `.grad` in place before the step) and each param group's learning rate (a per-request rate
included). Everything else AdamW reads — the weights and moments of the version before, the
step count, betas, eps, weight decay — is in that version's state or the run's config. AdamW's
update is elementwise, so the same inputs through the same kernels give the same bits, however
many threads computed the gradient: replaying the record on the version before gives the
version exactly (`tests/test_run_steps.py`). That holds for replicas of one build on one kind
of device. A CPU replica and a CUDA replica, or CPUs whose vector kernels differ (AVX2 against
AVX-512, where one contracts a multiply-add into an FMA and the other does not), or two torch
versions, may round `lerp`/`addcdiv` differently in the last bit. So may a CUDA optimizer built
`fused` on one replica and `foreach` on another; the service builds it the same way everywhere.
"""

from __future__ import annotations

import json

import torch

from r2m_service.runs import Run
from r2m_service.tensor_files import load_tensors, tensor_buffers

STEP_FORMAT = "r2m-step-v1"
_GRAD = "grad/"


def encode_step(run: Run) -> list[memoryview | bytes] | None:
    """The step that made the run's current version, as buffers over its `.grad` tensors (no
    copy; valid until the next step), or None if no training step made this version (it was
    created, loaded or imported)."""
    record = run.last_step
    if record is None or record.version != run.version:
        return None
    names = {param: name for name, param in run.module.named_parameters()}
    grads = {f"{_GRAD}{names[param]}": param.grad for param in _stepped(run)
             if param.grad is not None}
    metadata = {"format": STEP_FORMAT, "run_id": run.run_id, "step": str(run.step),
                "version": str(run.version),
                "learning_rates": json.dumps(list(record.learning_rates))}
    return tensor_buffers(grads, metadata)


def replay_step(run: Run, data: bytes) -> None:
    """Apply a logged step to the run at the version before it (model thread, inside the run's
    write gate): the same `optimizer.step()` on the same gradients at the same rates."""
    metadata, grads = load_tensors(data)
    if metadata.get("format") != STEP_FORMAT:
        raise ValueError(f"not an r2m step (format {metadata.get('format')!r})")
    version = int(metadata["version"])
    if version != run.version + 1:
        raise ValueError(f"the step to version {version} cannot follow version {run.version}")
    groups = run.optimizer.param_groups
    saved = [group["lr"] for group in groups]
    names = {param: name for name, param in run.module.named_parameters()}
    for group, rate in zip(groups, json.loads(metadata["learning_rates"]), strict=True):
        group["lr"] = rate
    try:
        for param in _stepped(run):
            grad = grads.get(f"{_GRAD}{names[param]}")
            param.grad = None if grad is None else grad.to(param.device)
        run.optimizer.step()
    finally:
        for group, rate in zip(groups, saved, strict=True):
            group["lr"] = rate
        run.optimizer.zero_grad(set_to_none=True)
    run.step, run.version, run.last_step = int(metadata["step"]), version, None


def _stepped(run: Run) -> list[torch.nn.Parameter]:
    """The parameters the optimizer steps, in its order (ϕ's bias is not one: guards.py)."""
    return [param for group in run.optimizer.param_groups for param in group["params"]]
