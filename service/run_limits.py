"""How large a run may be, checked before anything is allocated.

A run's size follows from its request alone: the R2M module has d·(2·D_rm + 2·D_p) + D_rm + 1
float32 parameters, and each parameter costs 16 bytes while the run is held (weights, gradients
and two AdamW moments). One unchecked `POST /v1/runs` asking for D_p = 2.5M once took the server
down building billions of parameters, so every dimension and the derived size are bounded by
settings, and all runs held together by a per-process budget (`RunDirectory` enforces that one).
"""

from __future__ import annotations

from dataclasses import dataclass

from r2m_proto.schemas import RunConfig
from r2m_service.errors import InvalidInput
from r2m_service.settings import Settings

BYTES_PER_PARAMETER = 16  # float32 weight + gradient + AdamW exp_avg + exp_avg_sq


def parameter_count(config: RunConfig, reward_hidden_size: int) -> int:
    """W_q [d, D_rm], W_k and W_v [d, D_p], W_o [D_rm, d], ϕ [1, D_rm] + bias."""
    d = config.attention_dim
    return d * (2 * reward_hidden_size + 2 * config.policy_hidden_size) + reward_hidden_size + 1


def state_bytes(config: RunConfig, reward_hidden_size: int) -> int:
    return parameter_count(config, reward_hidden_size) * BYTES_PER_PARAMETER


class LimitExceeded(InvalidInput):
    """A run setting beyond the server's limit; names the setting that bounds it."""

    def __init__(self, field: str, what: str, setting: str, limit: int) -> None:
        super().__init__(f"{what} exceeds this server's limit {setting} = {limit}", field)


@dataclass(frozen=True)
class RunLimits:
    """One run's bounds (`check`), and those of all runs one process holds."""

    max_policy_hidden_size: int
    max_attention_dim: int
    max_total_steps: int
    max_run_bytes: int
    runs_memory_bytes: int
    max_runs: int

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> RunLimits:
        """From `settings`; without, the settings' defaults (environment not read)."""
        s = settings or Settings.model_construct()
        return cls(s.max_policy_hidden_size, s.max_attention_dim, s.max_total_steps,
                   s.max_run_bytes, s.runs_memory_bytes, s.max_runs)

    def check(self, config: RunConfig, reward_hidden_size: int) -> int:
        """The run's state bytes, or `LimitExceeded` for the first setting it breaks."""
        for field, value, setting, limit in (
                ("policy_hidden_size", config.policy_hidden_size, "max_policy_hidden_size",
                 self.max_policy_hidden_size),
                ("attention_dim", config.attention_dim, "max_attention_dim",
                 self.max_attention_dim),
                ("total_steps", config.total_steps, "max_total_steps", self.max_total_steps)):
            if value > limit:
                raise LimitExceeded(field, f"{field} = {value}", setting, limit)
        size = state_bytes(config, reward_hidden_size)
        if size > self.max_run_bytes:
            raise LimitExceeded(
                "attention_dim", f"the run's state of {size} bytes (D_rm = {reward_hidden_size}, "
                f"D_p = {config.policy_hidden_size}, d = {config.attention_dim})",
                "max_run_bytes", self.max_run_bytes)
        return size
