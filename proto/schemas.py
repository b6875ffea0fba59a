"""Request and response schemas of the HTTP API v1 (the small JSON parts).

A hidden-state field holds either a `WireTensor` (JSON body) or a string naming a tensor of the
binary safetensors body. Bulk tensor bytes are never pydantic-validated element by element.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, FiniteFloat, model_validator

from r2m_proto.tensors import WireTensor

TensorField = Annotated[
    WireTensor | str,
    Field(description="Policy last-layer hidden states [S, D_p]: inline (JSON body) or the name "
                      "of a tensor in the safetensors body."),
]
RUN_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
Step = Annotated[int, Field(ge=0, description="RL step t; sets ω(t). Defaults to the run's step.")]


class _Strict(BaseModel):
    """Fields exactly as documented: no unknown ones, and JSON types as stated (pydantic's lax
    mode would take `false` for an integer; schemathesis found `min_version: false` served)."""

    model_config = ConfigDict(extra="forbid", strict=True)


class _Answer(BaseModel):
    """What the server sends back. A client ignores fields it does not know, so a newer server,
    which may add fields (as `/v1/info` has), never breaks an older client; types stay strict.
    Requests stay `_Strict`: there, an unknown field is a caller's mistake worth a 422."""

    model_config = ConfigDict(extra="ignore", strict=True)


class RunSettings(_Strict):
    """The R2M hyper-parameters of one training run (docs/method.md#notation)."""

    policy_hidden_size: int = Field(gt=0, description="D_p, the policy's hidden size.")
    total_steps: int = Field(gt=0, description="T, the total number of RL steps.")
    omega_floor: float = Field(0.6, ge=0.0, le=1.0, description="Ω, the floor of ω(t).")
    alpha: float = Field(0.3, ge=0.0, le=1.0, description="α, the GRE weight in GREBT.")
    learning_rate: FiniteFloat = Field(1e-6, gt=0.0, description="AdamW learning rate.")
    weight_decay: FiniteFloat = Field(0.0, ge=0.0, description="AdamW weight decay.")
    attention_dim: int | None = Field(None, gt=0, description="d; default min(D_rm, 2048).")
    seed: int | None = Field(None, ge=-(2**63), lt=2**64,  # what torch.manual_seed takes
                             description="Seed of the module's initialisation.")
    # Guards beyond the paper (service/guards.py); the defaults are the paper's setting.
    init: Literal["default", "zero_o"] = Field(
        "default", description="[choice, beyond the paper] `default`: PyTorch's Linear init for "
        "W_q, W_k, W_v, W_o. `zero_o`: W_o = 0, so until trained the reward is ϕ(ω·H_last), the "
        "static RM's ranking at any ω, with no random feedback branch.")
    head_learning_rate: FiniteFloat | None = Field(
        None, gt=0.0, description="[beyond the paper] AdamW learning rate of ϕ; `learning_rate` "
        "then applies to W_q, W_k, W_v, W_o only. Default: `learning_rate` for all.")
    max_grad_norm: FiniteFloat | None = Field(
        None, gt=0.0, description="[beyond the paper] Clip the global gradient norm of the "
        "module to this before each step. Default: no clipping (the paper's).")


class CreateRunRequest(RunSettings):
    """`POST /v1/runs`. With `run_id`, creation is idempotent: the same id and settings again
    answer the existing run (200), other settings answer 409 — so a retried create cannot make
    a second run."""

    run_id: str | None = Field(
        None, pattern=RUN_ID_PATTERN,
        description="Choose the run's id (letters, digits, `._-`, ≤ 128); default: generated.")


class RunConfig(RunSettings):
    """A run's settings with every default resolved."""

    # Part of answers and of stored run state: like `_Answer`, it ignores fields a newer release
    # added (an older client, or an older replica reading the store, meets them).
    model_config = ConfigDict(extra="ignore")

    attention_dim: int
    seed: int


class RewardDiagnostics(_Answer):
    """[beyond the paper] How a run's reward behaves, from the rewards this process served at
    the run's latest scored RL step. R2M's reward is linear in H_fin, so it splits exactly into
    the feedback branch (1 − ω)·w·Ĥ and the RTE branch ω·w·H_last + b. Figures need ≥ 2 rewards
    at a step; they restart with the process (not part of the run's stored state)."""

    step: int | None = Field(None, description="RL step of the rewards described.")
    items: int = Field(0, description="Rewards served at that step.")
    reward_mean: float | None = None
    reward_std: float | None = Field(None, description="Population std over the step's rewards.")
    feedback_std: float | None = Field(None, description="Std of (1 − ω)·w·Ĥ.")
    rte_std: float | None = Field(None, description="Std of ω·w·H_last + b.")
    feedback_share: float | None = Field(
        None, description="Var(feedback) / (Var(feedback) + Var(RTE)): near 1 when the feedback "
        "branch dominates the ranking.")
    reference_reward_std: float | None = Field(
        None, description="Reward std at the first scored step with a spread.")
    scale_drift: float | None = Field(
        None, description="reward_std / reference_reward_std: how far the reward scale moved.")
    o_norm: float | None = Field(None, description="‖W_o‖ (Frobenius), after the latest "
                                 "score or update.")
    head_norm: float | None = Field(None, description="‖w‖ of ϕ, likewise.")


class RunInfo(_Answer):
    run_id: str
    config: RunConfig
    step: int
    version: int
    diagnostics: RewardDiagnostics = Field(default_factory=RewardDiagnostics)


class ScoreItem(_Strict):
    prompt: str
    response: str
    hidden_states: TensorField | None = None


class ScoreRequest(_Strict):
    run_id: str
    step: Step | None = None
    min_version: int | None = Field(None, ge=0, description="Read-your-writes: wait for it.")
    items: list[ScoreItem] = Field(min_length=1)


class ScoreResponse(_Answer):
    rewards: list[float]
    version: int
    step: int
    omega: float


class UpdateGroup(_Strict):
    """K responses to one prompt; GREBT self-labels the best and worst of them."""

    prompt: str
    responses: list[str] = Field(min_length=2)
    hidden_states: list[TensorField] = Field(min_length=2)
    scores: list[FiniteFloat] | None = Field(
        None, description="Annotation-phase rewards; pick winner/loser. Default: recomputed.")

    @model_validator(mode="after")
    def _same_k(self) -> UpdateGroup:
        check_one_per_response(self.responses, hidden_states=self.hidden_states,
                               scores=self.scores)
        return self


def check_one_per_response(responses: list[str], **per_response: list[object] | None) -> None:
    """A group's per-response lists (tensors, scores) have one entry for each of its K
    responses; a None list is absent and fine."""
    k = len(responses)
    for name, values in per_response.items():
        if values is not None and len(values) != k:
            raise ValueError(f"{name} has {len(values)} entries for {k} responses; expected "
                             "one per response")


class UpdatePair(_Strict):
    """An externally labelled preference pair (plain Bradley–Terry)."""

    prompt: str
    chosen: str
    rejected: str
    chosen_hidden: TensorField
    rejected_hidden: TensorField


class UpdateRequest(_Strict):
    run_id: str
    step: Step | None = None
    groups: list[UpdateGroup] | None = Field(None, min_length=1)
    pairs: list[UpdatePair] | None = Field(None, min_length=1)
    learning_rate: FiniteFloat | None = Field(
        None, gt=0.0, description="[beyond the paper] This step's learning rate for every "
        "trainable tensor instead of the run's (e.g. fitting ϕ on labelled pairs at step 0, "
        "then online updates at the run's rate). The run's settings do not change.")

    @model_validator(mode="after")
    def _one_kind(self) -> UpdateRequest:
        if (self.groups is None) == (self.pairs is None):
            raise ValueError("give exactly one of `groups` (GREBT) or `pairs` (BT)")
        return self


class UpdateResponse(_Answer):
    version: int
    step: int
    loss: float
    bt_loss: float
    gre_loss: float | None
    omega: float
    grad_norm: float


class InfoResponse(_Answer):
    backbone: str
    backbone_kind: str
    backbone_identity: str
    reward_hidden_size: int
    dtype: str = Field(description="The backbone's compute dtype.")
    head_dtype: str = Field(
        "float32", description="The dtype ϕ and the R2M module compute in (float32 master "
        "weights). With a bfloat16 backbone the step-0 reward is this head on the bf16 features, "
        "so it differs from the model's own bf16 logit by that logit's bf16 rounding "
        "(docs/method.md#scoring-head).")
    device: str
    max_length: int
    max_body_bytes: int
    max_items: int
    runs: int
    score_batch_tokens: int = Field(
        0, description="Token budget of a /v1/score model batch now in force (padded tokens).")
    score_batch_tokens_learned: bool = Field(
        False, description="Whether that budget was learned from forward timings (else set).")
    software_version: str = Field(description="The r2m release serving (a run's `version` "
                                              "counts its updates; this is unrelated).")
    settings: dict[str, Any] = Field(
        default_factory=dict, description="The server's effective settings (`r2m serve "
        "--help`), secrets redacted.")
