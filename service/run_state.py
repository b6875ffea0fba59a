"""A run's full state as bytes — trainable tensors, AdamW moments, step, version, config — so a
run can live in Redis or a checkpoint dir and come back bit-exactly on any replica; and a stored
version (a snapshot and the logged steps after it, `run_steps.py`) brought into a run.

The file is plain safetensors (float32): the six checkpoint tensors under their documented names
(docs/design.md) plus `optimizer/<param>/<moment>`; everything else rides in `__metadata__`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from r2m_proto.schemas import RunConfig
from r2m_service.r2m_module import TRAINABLE_TENSORS
from r2m_service.run_steps import replay_step
from r2m_service.runs import Run, build_run
from r2m_service.state import StoredRun
from r2m_service.tensor_files import load_tensors, tensor_buffers

STATE_FORMAT = "r2m-state-v1"
_OPTIMIZER_PREFIX = "optimizer/"


@dataclass(frozen=True)
class RunState:
    run_id: str
    config: RunConfig
    step: int
    version: int
    backbone_identity: str
    tensors: dict[str, torch.Tensor]


def encode_run(run: Run) -> list[memoryview | bytes]:
    """The state as buffers over the run's own tensors (no copy): write them out before the run
    changes again, i.e. inside its write gate."""
    tensors = dict(run.module.state_dict())
    names = {p: n for n, p in run.module.named_parameters()}
    for param, moments in run.optimizer.state.items():
        for moment, value in moments.items():
            tensors[f"{_OPTIMIZER_PREFIX}{names[param]}/{moment}"] = value
    metadata = {"format": STATE_FORMAT, "run_id": run.run_id, "step": str(run.step),
                "version": str(run.version), "config": run.config.model_dump_json(),
                "backbone_identity": run.backbone_identity}
    return tensor_buffers(tensors, metadata)


def decode_run(data: bytes | bytearray) -> RunState:
    metadata, tensors = load_tensors(data)
    if metadata.get("format") != STATE_FORMAT:
        raise ValueError(f"not an r2m run state (format {metadata.get('format')!r})")
    return RunState(run_id=metadata["run_id"],
                    config=RunConfig(**json.loads(metadata["config"])),
                    step=int(metadata["step"]), version=int(metadata["version"]),
                    backbone_identity=metadata["backbone_identity"], tensors=tensors)


def apply_state(run: Run, state: RunState) -> None:
    """Overwrite a run's module, optimizer moments, step and version in place (model thread)."""
    device = next(run.module.parameters()).device
    with torch.no_grad():
        for name in TRAINABLE_TENSORS:
            run.module.get_parameter(name).copy_(state.tensors[name])
    run.optimizer.state.clear()
    for name, param in run.module.named_parameters():
        moments = {key.rsplit("/", 1)[1]: value for key, value in state.tensors.items()
                   if key.startswith(f"{_OPTIMIZER_PREFIX}{name}/")}
        if moments:
            run.optimizer.state[param] = {
                k: v if k == "step" else v.to(device) for k, v in moments.items()}
    run.step, run.version, run.last_step = state.step, state.version, None


def restore_run(state: RunState, steps: list[bytes], reward_hidden_size: int,
                device: torch.device) -> Run:
    """A run rebuilt from a snapshot and the logged steps after it (model thread)."""
    run = build_run(state.run_id, state.config, reward_hidden_size, state.backbone_identity,
                    None, device)
    apply_state(run, state)
    for step in steps:
        replay_step(run, step)
    return run


def catch_up(run: Run, stored: StoredRun) -> None:
    """Bring a run forward to a stored newer version (model thread, write gate held): replay
    only the steps after the run's version where the stored steps reach back to it, else load
    the snapshot and replay them all. A run already there (it moved on meanwhile) is left
    alone. Every version a run holds outside a failed commit is the committed one (`reset`
    undoes the others), so the log's steps apply to it."""
    if stored.version <= run.version:
        return
    first = stored.version - len(stored.steps) + 1  # the version the first step makes
    if run.version + 1 < first:
        if stored.snapshot is None:
            raise ValueError(f"run {run.run_id}: the steps from version {first} cannot follow "
                             f"version {run.version}")
        apply_state(run, decode_run(stored.snapshot))
    for step in stored.steps[max(0, run.version + 1 - first):]:
        replay_step(run, step)


def reset(run: Run, stored: StoredRun) -> None:
    """Put a run at the stored version whatever it holds now (after a failed commit)."""
    assert stored.snapshot is not None, "reset needs a snapshot: load without `since`"
    apply_state(run, decode_run(stored.snapshot))
    for step in stored.steps:
        replay_step(run, step)
