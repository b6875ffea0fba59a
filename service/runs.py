"""Runs: one training job's R2M module, optimizer, RL step and version, isolated from the others."""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass, field

import torch

from r2m_proto.schemas import CreateRunRequest, RunConfig, RunInfo
from r2m_service.guards import build_optimizer
from r2m_service.r2m_module import TRAINABLE_TENSORS, R2MModule, omega
from r2m_service.reward_diagnostics import RunDiagnostics
from r2m_service.run_gate import RunGate
from r2m_service.tensor_files import dump_tensors

MAX_ATTENTION_DIM = 2048  # the paper's d
CHECKPOINT_FORMAT = "r2m-checkpoint-v1"


@dataclass(frozen=True)
class StepRecord:
    """The learning rate of each param group in the optimizer step that made `version`. With
    the gradients that step left in the parameters' `.grad`, it is what `run_steps` logs so the
    store can keep that version as a step instead of a full state."""

    version: int
    learning_rates: tuple[float, ...]


@dataclass
class Run:
    """Mutable state of one run. Its module, optimizer, step and version change only on the
    model thread inside `gate.write()`: by a training step (`advance`) or by loading another
    version (`run_state.apply_state`, `run_steps.replay_step`), both driven by the run
    directory's update cycle."""

    run_id: str
    config: RunConfig
    module: R2MModule
    optimizer: torch.optim.Optimizer
    backbone_identity: str
    step: int = 0
    version: int = 0
    gate: RunGate = field(default_factory=RunGate)
    diagnostics: RunDiagnostics = field(default_factory=RunDiagnostics, repr=False)
    # the step that made the current version, when a training step did (`advance`)
    last_step: StepRecord | None = field(default=None, repr=False)
    _step_rates: tuple[float, ...] = field(default=(), repr=False)

    def __post_init__(self) -> None:
        # The rates of every optimizer step, read inside `step()`: a per-request rate is set
        # only around the call (guards.py), so afterwards the group no longer shows it.
        self.optimizer.register_step_pre_hook(self._record_rates)

    def _record_rates(self, optimizer: torch.optim.Optimizer, *_: object) -> None:
        self._step_rates = tuple(float(group["lr"]) for group in optimizer.param_groups)

    def step_and_omega(self, step: int | None) -> tuple[int, float]:
        """The RL step a request names (else the run's) and ω(t) there. Read under the run's
        gate, so a response's version, step and ω belong together."""
        step = self.step if step is None else step
        return step, omega(step, self.config.total_steps, self.config.omega_floor)

    def advance(self, step: int) -> None:
        """After an optimizer step taken at RL step `step`: the run is at a new version."""
        self.step = step + 1
        self.version += 1
        self.last_step = StepRecord(self.version, self._step_rates)

    def info(self) -> RunInfo:
        return RunInfo(run_id=self.run_id, config=self.config, step=self.step,
                       version=self.version, diagnostics=self.diagnostics.snapshot())

    def checkpoint(self) -> bytes:
        """The trainable tensors as safetensors (float32), step/version/config in the metadata.

        Byte-for-byte deterministic for the same state."""
        state = self.module.state_dict()
        metadata = {"format": CHECKPOINT_FORMAT, "run_id": self.run_id, "step": str(self.step),
                    "version": str(self.version), "config": self.config.model_dump_json(),
                    "backbone_identity": self.backbone_identity}
        return dump_tensors({name: state[name] for name in TRAINABLE_TENSORS}, metadata)


def resolve_config(request: CreateRunRequest, reward_hidden_size: int) -> RunConfig:
    """Fill the defaults that depend on the backbone (d) or on chance (seed, recorded)."""
    values = request.model_dump(exclude={"run_id"})
    if values["attention_dim"] is None:
        values["attention_dim"] = min(reward_hidden_size, MAX_ATTENTION_DIM)
    if values["seed"] is None:
        values["seed"] = secrets.randbits(63)
    return RunConfig(**values)


RESOLVED_AT_CREATION = ("attention_dim", "seed")  # None in a request: chosen by the server


def matches(request: CreateRunRequest, config: RunConfig) -> bool:
    """Whether an existing run's config is what a (retried) create asked for: every setting
    the request gives explicitly or by default. Unset `attention_dim`/`seed` match any (they
    are resolved at creation); any other unset setting means its default, None included (an
    unclipped run is not the same run as a clipped one)."""
    asked = request.model_dump(exclude={"run_id"})
    return all(getattr(config, name) == value for name, value in asked.items()
               if value is not None or name not in RESOLVED_AT_CREATION)


def build_run(run_id: str, config: RunConfig, reward_hidden_size: int, backbone_identity: str,
              initial_head: tuple[torch.Tensor, torch.Tensor] | None,
              device: torch.device) -> Run:
    """A fresh run. Initialisation is seeded and done on the CPU, so a seed means the same
    module on any device. **[choice]** W_q, W_k, W_v, W_o use PyTorch's default Linear init;
    a fresh ϕ (encoder backbones) too; `init` and the optimizer's groups: service/guards.py."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        module = R2MModule(reward_hidden_size, config.policy_hidden_size, config.attention_dim,
                           initial_head, init=config.init)
    module = module.to(device)
    optimizer = build_optimizer(module, config)
    return Run(run_id=run_id, config=config, module=module, optimizer=optimizer,
               backbone_identity=backbone_identity)


def new_run_id() -> str:
    return f"run-{uuid.uuid4().hex[:16]}"
