"""Split mode (paper §6.1): the policy's hidden states never leave the trainer.

The cross-attention's query is one vector per sample, so the attention factors exactly into a
part that needs the RTE (server) and a part that needs the hidden states h `[S, D_p]` (trainer):

- `/v1/split/query` → u = W_kᵀ q / √d `[D_p]` per sample (q = W_q H_last);
- the trainer computes a = softmax(h u) and the context c = aᵀ h `[D_p]`;
- `/v1/split/score` with c → rewards (Ĥ = W_o W_v c; the rest as in full mode);
- `/v1/split/gradient` with c → g = ∂L/∂c per sample (the GREBT/BT loss, no step);
- the trainer computes ∂L/∂u = Σ_s a_s (g·h_s − g·c) h_s;
- `/v1/split/update` with c and ∂L/∂u → the same optimizer step as `/v1/update`.

Every phase after the query names the run `version` the query answered; if an update landed in
between, it answers 409 `version_conflict` and the trainer starts again from the query. The
server keeps nothing between phases: RTEs come from its cache, the module forward is recomputed.
"""

from __future__ import annotations

from pydantic import Field, FiniteFloat, model_validator

from r2m_proto.schemas import (
    RUN_ID_PATTERN,
    Step,
    TensorField,
    _Strict,
    check_one_per_response,
)
from r2m_proto.tensors import WireTensor

VectorField = TensorField  # a `[D_p]` vector, inline or named in the safetensors body
PhaseVersion = Field(ge=0, description="The run version `/v1/split/query` answered with.")


class SplitText(_Strict):
    prompt: str
    response: str


class SplitQueryRequest(_Strict):
    run_id: str = Field(pattern=RUN_ID_PATTERN)
    step: Step | None = None
    min_version: int | None = Field(None, ge=0, description="Read-your-writes: wait for it.")
    items: list[SplitText] = Field(min_length=1)


class SplitQueryResponse(_Strict):
    version: int
    step: int
    omega: float
    queries: list[WireTensor] = Field(description="u = W_kᵀ q / √d `[D_p]` float32, per item.")


class ContextItem(SplitText):
    context: VectorField = Field(description="c = softmax(h u)ᵀ h `[D_p]`, float32.")


class SplitScoreRequest(_Strict):
    run_id: str = Field(pattern=RUN_ID_PATTERN)
    version: int = PhaseVersion
    step: Step | None = None
    items: list[ContextItem] = Field(min_length=1)


class ContextGroup(_Strict):
    """K responses to one prompt, each with its context (GREBT, as `UpdateGroup`)."""

    prompt: str
    responses: list[str] = Field(min_length=2)
    contexts: list[VectorField] = Field(min_length=2)
    scores: list[FiniteFloat] | None = Field(
        None, description="Annotation-phase rewards; pick winner/loser. Default: recomputed.")

    @model_validator(mode="after")
    def _same_k(self) -> ContextGroup:
        check_one_per_response(self.responses, contexts=self.contexts, scores=self.scores)
        return self


class ContextPair(_Strict):
    """A labelled preference pair (plain Bradley–Terry), as `UpdatePair`."""

    prompt: str
    chosen: str
    rejected: str
    chosen_context: VectorField
    rejected_context: VectorField


class SplitGradientRequest(_Strict):
    """The loss of one update at the weights of `version`, and ∂L/∂c for each sample (groups
    flattened in order; pairs as chosen, rejected, …)."""

    run_id: str = Field(pattern=RUN_ID_PATTERN)
    version: int = PhaseVersion
    step: Step | None = None
    groups: list[ContextGroup] | None = Field(None, min_length=1)
    pairs: list[ContextPair] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_kind(self) -> SplitGradientRequest:
        if (self.groups is None) == (self.pairs is None):
            raise ValueError("give exactly one of `groups` (GREBT) or `pairs` (BT)")
        return self


class SplitGradientResponse(_Strict):
    version: int
    loss: float
    context_grads: list[WireTensor] = Field(
        description="g = ∂L/∂c `[D_p]` float32 per sample, in the request's sample order.")


class SplitUpdateRequest(SplitGradientRequest):
    """The step itself: the same samples and contexts, plus ∂L/∂u per sample."""

    query_grads: list[VectorField] = Field(
        min_length=1, description="∂L/∂u `[D_p]` per sample, in the request's sample order.")
    learning_rate: float | None = Field(
        None, gt=0.0, description="This step only: every tensor at this rate (as /v1/update).")
