"""`POST /get_reward`: OpenRLHF's remote reward model (`--reward.remote_url`), no OpenRLHF change.

It parses OpenRLHF's body (`r2m_proto.openrlhf`) and hands the engine an ordinary
`ScoreRequest`, so limits, error shape, metrics and cross-request batching are exactly those of
`/v1/score`. What it scores:

- By default, the **backbone-only reward**, what a static RM gives: ϕ(H_last) of a reserved run
  (`backbone-only`, created on first use with a fixed seed, never trained). For a
  `*ForSequenceClassification` backbone ϕ is the RM's own head, so this is the RM's own logit.
  An encoder backbone has no head: ϕ is then the fixed random projection that seed 0 draws, the
  same on every replica and after every restart.
- With `?run_id=…` in the URL (or the `get_reward_run_id` setting), that **run's** reward at its
  current version. OpenRLHF sends no hidden states, so this is ϕ(H_last) with the run's trained
  head: R2M's reward with the feedback branch left out (as at ω = 1), not the
  ϕ((1 − ω)Ĥ + ωH_last) that a trainer sending hidden states gets.

OpenRLHF's client sends no headers. When API keys are on, put the key in the URL
(`http://r2m:KEY@host:8000/get_reward`): aiohttp turns that into HTTP Basic auth, which this
route accepts, with the key as the password, next to the usual Bearer header.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request

from r2m_proto.openrlhf import GetRewardRequest, GetRewardResponse, split_query
from r2m_proto.schemas import (
    RUN_ID_PATTERN,
    CreateRunRequest,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
)
from r2m_service.engine import Engine
from r2m_service.errors import RunExists, RunNotFound
from r2m_service.http.auth import Scope, authorize
from r2m_service.http.disconnect import unless_disconnected
from r2m_service.http.openapi import tensor_body
from r2m_service.http.routes import EngineDep, MetricsDep, SettingsDep, check_count, read_body

router = APIRouter()

PATH = "/get_reward"
# The run that serves the backbone-only reward. Without hidden states only ϕ is used, so its
# D_p and T are placeholders; the seed fixes ϕ for a backbone without a head of its own.
BACKBONE_ONLY = CreateRunRequest(run_id="backbone-only", policy_hidden_size=1, total_steps=1,
                                 seed=0)


async def _authorize(request: Request) -> None:  # async: no thread hop (http/routes.py)
    """Scope `score`, from a Bearer header or from HTTP Basic with the key as the password."""
    header = request.headers.get("authorization")
    scheme, _, credentials = (header or "").partition(" ")
    if scheme.lower() == "basic":
        header = f"Bearer {_basic_password(credentials)}"
    key = authorize(request.app.state.keyring, header, Scope.SCORE)
    if key is not None:
        request.state.api_key_name = key.name


@router.post(PATH, tags=["openrlhf"], openapi_extra=tensor_body(GetRewardRequest),
             dependencies=[Depends(_authorize)])
async def get_reward(
    request: Request, engine: EngineDep, settings: SettingsDep, m: MetricsDep,
    run_id: Annotated[str | None, Query(
        pattern=RUN_ID_PATTERN, description="Serve this run's reward ϕ(H_last); default: the "
        "server's `get_reward_run_id`, else the backbone-only reward.")] = None,
) -> GetRewardResponse:
    """OpenRLHF's remote-RM call: one reward per query, in order (`rewards` = `scores`)."""
    body, _ = await read_body(request, GetRewardRequest, settings, m, PATH)
    check_count(len(body.query), settings.max_items, "query")
    prompts = body.prompts or [None] * len(body.query)
    items = [ScoreItem(prompt=prompt, response=response)
             for prompt, response in map(split_query, body.query, prompts)]
    chosen = run_id or settings.get_reward_run_id
    work = (engine.score(ScoreRequest(run_id=chosen, items=items), None) if chosen
            else _backbone_only(engine, items))
    scored = await unless_disconnected(request, work)
    return GetRewardResponse(rewards=scored.rewards, scores=scored.rewards)


async def _backbone_only(engine: Engine, items: list[ScoreItem]) -> ScoreResponse:
    """Score on the reserved run, creating it on first use (or after someone deleted it)."""
    request = ScoreRequest(run_id=BACKBONE_ONLY.run_id, items=items)  # type: ignore[arg-type]
    try:
        scored = await engine.score(request, None)
    except RunNotFound:
        await engine.create_run(BACKBONE_ONLY)
        scored = await engine.score(request, None)
    if scored.version != 0:  # an update-scoped key trained it: it is no longer a static RM
        raise RunExists(request.run_id, f"serves the backbone-only reward of {PATH} but was "
                        f"trained to version {scored.version}; delete it and {PATH} recreates "
                        "it")
    return scored


def _basic_password(credentials: str) -> str:
    try:
        decoded = base64.b64decode(credentials, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return ""
    return decoded.partition(":")[2]
