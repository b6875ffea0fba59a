"""Split-mode routes (`proto/split.py`): the phases of a score and an update for trainers that
keep the policy's hidden states and ship `[D_p]` vectors. Same limits, scopes, error shape and
metrics as `/v1/score` and `/v1/update`; the answers that carry vectors come as safetensors when
the request's Accept asks for it."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Request, Response

from r2m_proto.media import IDEMPOTENCY_KEY_HEADER, SAFETENSORS_MEDIA_TYPE
from r2m_proto.schemas import UpdateResponse
from r2m_proto.split import (
    SplitGradientRequest,
    SplitGradientResponse,
    SplitQueryRequest,
    SplitQueryResponse,
    SplitScoreRequest,
    SplitScoreResponse,
    SplitUpdateRequest,
)
from r2m_service.http.auth import Scope, require
from r2m_service.http.body import AnswerTensors
from r2m_service.http.disconnect import unless_disconnected
from r2m_service.http.openapi import tensor_body
from r2m_service.http.routes import (
    EngineDep,
    MetricsDep,
    SettingsDep,
    check_count,
    check_update_count,
    read_body,
)
from r2m_service.split import SplitPhases

router = APIRouter(prefix="/v1/split", tags=["split mode"])


def _vector_answer(model: type[Any]) -> dict[int | str, dict[str, Any]]:
    """`responses` declaring the safetensors form of an answer that carries vectors."""
    return {200: {"model": model, "content": {SAFETENSORS_MEDIA_TYPE: {"schema": {
        "type": "string", "format": "binary",
        "description": f"with `Accept: {SAFETENSORS_MEDIA_TYPE}`: a safetensors file whose "
                       f"__metadata__.response is a {model.__name__} naming its tensors"}}}}}


@router.post("/query", dependencies=[require(Scope.SCORE)], response_model=SplitQueryResponse,
             responses=_vector_answer(SplitQueryResponse))
async def query(request: Request, body: SplitQueryRequest, engine: EngineDep,
                settings: SettingsDep) -> Response:
    """Phase 1 of a score or an update: u = W_kᵀ q / √d per item, and the run's version."""
    check_count(len(body.items), settings.max_items, "items")
    sink = AnswerTensors(request)
    return sink.response(await SplitPhases(engine).query(body, sink.field))


@router.post("/score", openapi_extra=tensor_body(SplitScoreRequest),
             dependencies=[require(Scope.SCORE)])
async def score(request: Request, engine: EngineDep, settings: SettingsDep,
                m: MetricsDep) -> SplitScoreResponse:
    """Rewards from the contexts c = softmax(h u)ᵀ h, at the query's version; the answer's
    `context_token` holds the contexts for the update of the same samples."""
    body, tensors = await read_body(request, SplitScoreRequest, settings, m, "/v1/split/score")
    check_count(len(body.items), settings.max_items, "items")
    return await unless_disconnected(request, SplitPhases(engine).score(body, tensors))


@router.post("/gradient", openapi_extra=tensor_body(SplitGradientRequest),
             dependencies=[require(Scope.UPDATE)], response_model=SplitGradientResponse,
             responses=_vector_answer(SplitGradientResponse))
async def gradient(request: Request, engine: EngineDep, settings: SettingsDep,
                   m: MetricsDep) -> Response:
    """The update's loss and g = ∂L/∂c per sample, at the query's version (no step). Contexts
    sent inline are kept under a `context_token` for the update phase."""
    body, tensors = await read_body(request, SplitGradientRequest, settings, m,
                                    "/v1/split/gradient")
    check_update_count(body, settings.max_items)
    sink = AnswerTensors(request)
    return sink.response(await SplitPhases(engine).gradient(body, tensors, sink.field))


@router.post("/update", openapi_extra=tensor_body(SplitUpdateRequest),
             dependencies=[require(Scope.UPDATE)])
async def update(request: Request, engine: EngineDep, settings: SettingsDep, m: MetricsDep,
                 idempotency_key: Annotated[str | None, Header(
                     alias=IDEMPOTENCY_KEY_HEADER, max_length=256)] = None) -> UpdateResponse:
    """The optimizer step from the contexts and ∂L/∂u: exactly `/v1/update`'s step."""
    body, tensors = await read_body(request, SplitUpdateRequest, settings, m, "/v1/split/update")
    check_update_count(body, settings.max_items)
    return await SplitPhases(engine).update(body, tensors, idempotency_key)
