"""`PUT /v1/runs/{id}/checkpoint`: a module trained elsewhere (or a backup) becomes a run's next
version.

The file is what `GET /v1/runs/{id}/checkpoint` writes: safetensors with exactly the trainable
tensors under their documented names (`TRAINABLE_TENSORS`), float32, in the run's shapes.
Everything is checked before the run is locked, so a wrong file (names, shapes, dtypes,
non-finite values) is a 422 that changes nothing. The AdamW moments restart from zero: they
belong to the training that produced the weights, not to this run's. The RL step is the run's.
"""

from __future__ import annotations

import warnings

import torch

from r2m_proto.tensors import TensorView
from r2m_service.errors import InvalidInput
from r2m_service.r2m_module import TRAINABLE_TENSORS
from r2m_service.runs import Run

_FIELD = "checkpoint"


def checkpoint_weights(run: Run, tensors: dict[str, TensorView]) -> dict[str, torch.Tensor]:
    """The file's tensors as float32 torch tensors of the run's shapes, or `InvalidInput`."""
    names = set(tensors)
    missing = [n for n in TRAINABLE_TENSORS if n not in names]
    unexpected = sorted(names - set(TRAINABLE_TENSORS))
    if missing or unexpected:
        raise InvalidInput(f"a checkpoint holds exactly {list(TRAINABLE_TENSORS)}; missing "
                           f"{missing}, unexpected {unexpected}", _FIELD)
    weights = {}
    for name in TRAINABLE_TENSORS:
        view, field = tensors[name], f"{_FIELD}.{name}"
        expected = tuple(run.module.get_parameter(name).shape)
        if view.dtype != "float32":
            raise InvalidInput(f"{name} is {view.dtype}; checkpoints are float32", field)
        if view.shape != expected:
            raise InvalidInput(f"{name} has shape {list(view.shape)}; this run's is "
                               f"{list(expected)}", field)
        with warnings.catch_warnings():  # a read-only buffer: the clone below owns its bytes
            warnings.simplefilter("ignore", UserWarning)
            flat = (torch.frombuffer(view.data, dtype=torch.float32) if view.nbytes
                    else torch.empty(0))
        weight = flat.view(expected).clone()
        if not bool(torch.isfinite(weight).all()):
            raise InvalidInput(f"{name} holds non-finite values", field)
        weights[name] = weight
    return weights


def load_weights(run: Run, weights: dict[str, torch.Tensor]) -> None:
    """Model thread, inside the run's update cycle: the weights in, fresh moments, one version
    on (the step stays: it counts the trainer's RL steps, not imports)."""
    with torch.no_grad():
        for name, weight in weights.items():
            run.module.get_parameter(name).copy_(weight)
    run.optimizer.state.clear()
    run.version += 1
