"""HTTP routes: parse, call the engine, answer. No torch here."""

from __future__ import annotations

from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Header, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel

from r2m_proto.media import CHECKPOINT_MEDIA_TYPE, IDEMPOTENCY_KEY_HEADER, JSON_MEDIA_TYPE
from r2m_proto.schemas import (
    CreateRunRequest,
    InfoResponse,
    RunInfo,
    ScoreRequest,
    ScoreResponse,
    UpdateRequest,
    UpdateResponse,
)
from r2m_proto.split import SplitGradientRequest
from r2m_proto.tensors import TensorView
from r2m_service import __version__
from r2m_service.engine import Engine
from r2m_service.errors import TooManyItems, Unavailable
from r2m_service.http.auth import Scope, require
from r2m_service.http.body import read_checkpoint, read_request
from r2m_service.http.disconnect import unless_disconnected
from r2m_service.http.openapi import checkpoint_body, tensor_body
from r2m_service.metrics import Metrics
from r2m_service.r2m_module import MODULE_DTYPE
from r2m_service.settings import Settings

router = APIRouter()
M = TypeVar("M", bound=BaseModel)


# Dependencies are `async def` although they never await: FastAPI runs a plain `def` dependency
# in its thread pool, a thread hop per dependency per request (most of a 1-item score's own cost
# outside the model thread, bench/RESULTS.md "Overhead per item").


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


async def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


async def get_engine(request: Request) -> Engine:
    engine: Engine | None = request.app.state.engine
    if engine is None:
        error = request.app.state.load_error
        message = (f"the backbone failed to load: {error}" if error
                   else "the backbone is still loading; retry shortly")
        raise Unavailable(message, retry_after_s=None if error else 5)
    return engine


EngineDep = Annotated[Engine, Depends(get_engine)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
MetricsDep = Annotated[Metrics, Depends(get_metrics)]


@router.get("/healthz", tags=["ops"])
async def healthz() -> dict[str, str]:
    """Alive (the process answers), even while the backbone loads."""
    return {"status": "ok"}


@router.get("/readyz", tags=["ops"])
async def readyz(request: Request, engine: EngineDep) -> dict[str, str]:
    """Ready to serve: the backbone is loaded, the state store answers, and no SIGTERM has
    come (while draining, requests still succeed but balancers should stop sending)."""
    if request.app.state.draining:
        raise Unavailable("shutting down: draining before exit", retry_after_s=1)
    await engine.store.ping()
    return {"status": "ready"}


@router.get("/metrics", tags=["ops"], response_class=Response,
            dependencies=[require(Scope.METRICS)])
async def metrics(m: MetricsDep) -> Response:
    return Response(generate_latest(m.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/v1/info", tags=["ops"], dependencies=[require(Scope.SCORE)])
async def info(engine: EngineDep, settings: SettingsDep) -> InfoResponse:
    backbone = engine.backbone
    return InfoResponse(
        backbone=backbone.name, backbone_kind=backbone.kind,
        backbone_identity=backbone.identity, reward_hidden_size=backbone.hidden_size,
        dtype=backbone.dtype, head_dtype=MODULE_DTYPE, device=str(backbone.device),
        max_length=backbone.max_length,
        max_body_bytes=settings.max_body_bytes, max_items=settings.max_items,
        runs=len(engine.runs), score_batch_tokens=engine.sizer.budget(),
        score_batch_tokens_learned=engine.sizer.learned, software_version=__version__,
        settings=settings.public())


@router.post("/v1/runs", status_code=201, tags=["runs"],
             dependencies=[require(Scope.UPDATE)],
             responses={200: {"model": RunInfo, "description": "the run already existed"}})
async def create_run(body: CreateRunRequest, engine: EngineDep, response: Response) -> RunInfo:
    """201 with a new run; 200 with the existing one when `run_id` names a run created with the
    same settings (an idempotent retry); 409 when it names one with other settings."""
    info, created = await engine.create_run(body)
    if not created:
        response.status_code = 200
    return info


@router.get("/v1/runs/{run_id}", tags=["runs"], dependencies=[require(Scope.SCORE)])
async def get_run(run_id: str, engine: EngineDep) -> RunInfo:
    return await engine.get_run(run_id)


@router.delete("/v1/runs/{run_id}", status_code=204, tags=["runs"],
               dependencies=[require(Scope.ADMIN)])
async def delete_run(run_id: str, engine: EngineDep) -> Response:
    await engine.delete_run(run_id)
    return Response(status_code=204)


@router.get("/v1/runs/{run_id}/checkpoint", tags=["runs"], response_class=Response,
            dependencies=[require(Scope.ADMIN)],
            responses={200: {"content": {CHECKPOINT_MEDIA_TYPE: {}},
                             "description": "safetensors file of the trainable tensors"}})
async def checkpoint(run_id: str, engine: EngineDep) -> Response:
    data = await engine.checkpoint(run_id)
    return Response(data, media_type=CHECKPOINT_MEDIA_TYPE, headers={
        "Content-Disposition": f'attachment; filename="{run_id}.safetensors"'})


@router.put("/v1/runs/{run_id}/checkpoint", tags=["runs"], dependencies=[require(Scope.ADMIN)],
            openapi_extra=checkpoint_body())
async def import_checkpoint(run_id: str, request: Request, engine: EngineDep,
                            settings: SettingsDep) -> RunInfo:
    """Load a checkpoint (as `GET` serves it: the six trainable tensors, float32, this run's
    shapes) as the run's next version; AdamW moments restart, the step stays. A wrong file is a
    422 that changes nothing. Restore half of backup/restore (README)."""
    tensors = await read_checkpoint(request, settings.max_body_bytes)
    return await engine.import_checkpoint(run_id, tensors)


@router.post("/v1/score", tags=["reward"], openapi_extra=tensor_body(ScoreRequest),
             dependencies=[require(Scope.SCORE)], response_model=ScoreResponse)
@router.post("/score", tags=["reward"], include_in_schema=False,
             dependencies=[require(Scope.SCORE)], response_model=ScoreResponse)
async def score(request: Request, engine: EngineDep, settings: SettingsDep,
                m: MetricsDep) -> Response:
    """Rewards for prompt-response pairs (+ policy hidden states), one per item, in order."""
    with m.score_phase.labels("decode").time():
        body, tensors = await read_body(request, ScoreRequest, settings, m, "/v1/score")
    check_count(len(body.items), settings.max_items, "items")
    answer = await unless_disconnected(request, engine.score(body, tensors))
    with m.score_phase.labels("response").time():  # encoded once, not re-validated by FastAPI
        return Response(answer.model_dump_json(), media_type=JSON_MEDIA_TYPE)


@router.post("/v1/update", tags=["reward"], openapi_extra=tensor_body(UpdateRequest),
             dependencies=[require(Scope.UPDATE)])
@router.post("/update", tags=["reward"], include_in_schema=False,
             dependencies=[require(Scope.UPDATE)])
async def update(request: Request, engine: EngineDep, settings: SettingsDep, m: MetricsDep,
                 idempotency_key: Annotated[str | None, Header(
                     alias=IDEMPOTENCY_KEY_HEADER, max_length=256)] = None) -> UpdateResponse:
    """One online R2M step: GREBT on self-labelled groups, or BT on labelled pairs."""
    body, tensors = await read_body(request, UpdateRequest, settings, m, "/v1/update")
    check_update_count(body, settings.max_items)
    return await engine.update(body, tensors, idempotency_key)


async def read_body(request: Request, schema: type[M], settings: Settings, metrics: Metrics,
                    route: str) -> tuple[M, dict[str, TensorView] | None]:
    """The request decoded as `schema` (and its tensors), its size recorded under `route`."""
    body, tensors, size = await read_request(request, schema, settings.max_body_bytes)
    metrics.body_bytes.labels(route).observe(size)
    return body, tensors


def check_update_count(body: UpdateRequest | SplitGradientRequest, limit: int) -> None:
    """Samples in an update: K per group, two per pair."""
    if body.groups is not None:
        check_count(sum(len(g.responses) for g in body.groups), limit, "groups")
    else:
        check_count(2 * len(body.pairs or []), limit, "pairs")


def check_count(count: int, limit: int, field: str) -> None:
    if count > limit:
        raise TooManyItems(f"{count} samples exceed the limit of {limit} per request (split "
                           "the batch)", field)
