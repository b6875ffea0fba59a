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
between, it answers 409 `version_conflict` and the trainer starts again from the query. RTEs come
from the server's cache and the module forward is recomputed. The one thing the server keeps is
c: the score (and a gradient phase given c inline) answers a short-lived `context_token`, and the
gradient and update phases may name a sample's c as `{token, index}` instead of resending it.
A token that expired, belongs to another run or to another version gets 409
`context_token_stale`, and the trainer starts again from the query with c inline.

Answers carrying vectors (query, gradient) come as safetensors (`__metadata__.response` holds the
JSON, its vector fields name the file's tensors) when the request's `Accept` names
`application/vnd.r2m+safetensors`; as JSON with base64 vectors otherwise.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BeforeValidator, Field, FiniteFloat, ValidationError, model_validator

from r2m_proto.schemas import (
    RUN_ID_PATTERN,
    ScoreResponse,
    Step,
    _Answer,
    _Strict,
    check_one_per_response,
)
from r2m_proto.tensors import WireTensor

VectorField = Annotated[WireTensor | str, Field(
    description="A `[D_p]` float32 vector: inline (JSON) or the name of a tensor in the "
                "safetensors body.")]
TOKEN_PATTERN = r"^[A-Za-z0-9_-]{16,64}$"


class ContextRef(_Strict):
    """A context c the server holds already: entry `index` of a `context_token` (its samples in
    the order of the request that made it)."""

    token: str = Field(pattern=TOKEN_PATTERN)
    index: int = Field(ge=0)


def _reference_first(value: Any) -> Any:
    """An object with a `token` is a reference: validate it as one, so a malformed reference is
    reported as such at its field (not as a failed match of every member of the union)."""
    if not (isinstance(value, dict) and "token" in value):
        return value
    try:
        return ContextRef.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"])
        raise ValueError(f"context reference: {where}: {first['msg']}") from None


ContextField = Annotated[WireTensor | str | ContextRef, BeforeValidator(_reference_first), Field(
    description="c `[D_p]` float32: inline, named in the safetensors body, or a `ContextRef`.")]
TokenAnswer = Field(None, description="Names this request's contexts (in sample order) for the "
                                      "phases that follow; absent when the server keeps none.")
PhaseVersion = Field(ge=0, description="The run version `/v1/split/query` answered with.")


class SplitText(_Strict):
    prompt: str
    response: str


class SplitQueryRequest(_Strict):
    run_id: str = Field(pattern=RUN_ID_PATTERN)
    step: Step | None = None
    min_version: int | None = Field(None, ge=0, description="Read-your-writes: wait for it.")
    items: list[SplitText] = Field(min_length=1)


class SplitQueryResponse(_Answer):
    version: int
    step: int
    omega: float
    queries: list[VectorField] = Field(description="u = W_kᵀ q / √d `[D_p]` float32, per item.")


class ContextItem(SplitText):
    context: VectorField = Field(description="c = softmax(h u)ᵀ h `[D_p]`, float32.")


class SplitScoreRequest(_Strict):
    run_id: str = Field(pattern=RUN_ID_PATTERN)
    version: int = PhaseVersion
    step: Step | None = None
    items: list[ContextItem] = Field(min_length=1)


class SplitScoreResponse(ScoreResponse):
    context_token: str | None = TokenAnswer


class ContextGroup(_Strict):
    """K responses to one prompt, each with its context (GREBT, as `UpdateGroup`)."""

    prompt: str
    responses: list[str] = Field(min_length=2)
    contexts: list[ContextField] = Field(min_length=2)
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
    chosen_context: ContextField
    rejected_context: ContextField


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


class SplitGradientResponse(_Answer):
    version: int
    loss: float
    context_grads: list[VectorField] = Field(
        description="g = ∂L/∂c `[D_p]` float32 per sample, in the request's sample order.")
    context_token: str | None = TokenAnswer


class SplitUpdateRequest(SplitGradientRequest):
    """The step itself: the same samples and contexts, plus ∂L/∂u per sample."""

    query_grads: list[VectorField] = Field(
        min_length=1, description="∂L/∂u `[D_p]` per sample, in the request's sample order.")
    learning_rate: float | None = Field(
        None, gt=0.0, description="This step only: every tensor at this rate (as /v1/update).")
