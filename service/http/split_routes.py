"""Split-mode routes (`proto/split.py`): the phases of a score and an update for trainers that
keep the policy's hidden states and ship `[D_p]` vectors. Same limits, scopes, error shape and
metrics as `/v1/score` and `/v1/update`."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request

from r2m_proto.media import IDEMPOTENCY_KEY_HEADER
from r2m_proto.schemas import ScoreResponse, UpdateResponse
from r2m_proto.split import (
    SplitGradientRequest,
    SplitGradientResponse,
    SplitQueryRequest,
    SplitQueryResponse,
    SplitScoreRequest,
    SplitUpdateRequest,
)
from r2m_service.http.auth import Scope, require
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


@router.post("/query", dependencies=[require(Scope.SCORE)])
async def query(body: SplitQueryRequest, engine: EngineDep,
                settings: SettingsDep) -> SplitQueryResponse:
    """Phase 1 of a score or an update: u = W_kᵀ q / √d per item, and the run's version."""
    check_count(len(body.items), settings.max_items, "items")
    return await SplitPhases(engine).query(body)


@router.post("/score", openapi_extra=tensor_body(SplitScoreRequest),
             dependencies=[require(Scope.SCORE)])
async def score(request: Request, engine: EngineDep, settings: SettingsDep,
                m: MetricsDep) -> ScoreResponse:
    """Rewards from the contexts c = softmax(h u)ᵀ h, at the query's version."""
    body, tensors = await read_body(request, SplitScoreRequest, settings, m, "/v1/split/score")
    check_count(len(body.items), settings.max_items, "items")
    return await unless_disconnected(request, SplitPhases(engine).score(body, tensors))


@router.post("/gradient", openapi_extra=tensor_body(SplitGradientRequest),
             dependencies=[require(Scope.UPDATE)])
async def gradient(request: Request, engine: EngineDep, settings: SettingsDep,
                   m: MetricsDep) -> SplitGradientResponse:
    """The update's loss and g = ∂L/∂c per sample, at the query's version (no step)."""
    body, tensors = await read_body(request, SplitGradientRequest, settings, m,
                                    "/v1/split/gradient")
    check_update_count(body, settings.max_items)
    return await SplitPhases(engine).gradient(body, tensors)


@router.post("/update", openapi_extra=tensor_body(SplitUpdateRequest),
             dependencies=[require(Scope.UPDATE)])
async def update(request: Request, engine: EngineDep, settings: SettingsDep, m: MetricsDep,
                 idempotency_key: Annotated[str | None, Header(
                     alias=IDEMPOTENCY_KEY_HEADER, max_length=256)] = None) -> UpdateResponse:
    """The optimizer step from the contexts and ∂L/∂u: exactly `/v1/update`'s step."""
    body, tensors = await read_body(request, SplitUpdateRequest, settings, m, "/v1/split/update")
    check_update_count(body, settings.max_items)
    return await SplitPhases(engine).update(body, tensors, idempotency_key)
