"""Split mode's phases as a sans-I/O protocol shared by both clients.

Each protocol is a generator that yields the `Call` of the next phase and receives its result
(or, at a failed phase, the error): `R2MClient` drives it with blocking sends, `AsyncR2MClient`
with awaited ones, so the phases, the local math and the restart on a version conflict exist
once. A 409 `version_conflict` means an update landed between the query and a later phase: the
protocol starts again from the query, up to `restarts` times.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import torch

from r2m_client._checks import check_score_batch, check_update
from r2m_client._core import Call, Request, _model, _single
from r2m_client._encode import _TensorSink, json_body
from r2m_client.errors import R2MStatusError
from r2m_client.split import Attention, QueryCache, attend_all
from r2m_client.types import Group, Pair
from r2m_proto import IDEMPOTENCY_KEY_HEADER, ScoreResponse, UpdateResponse, WireTensor
from r2m_proto.split import (
    ContextGroup,
    ContextItem,
    ContextPair,
    SplitGradientRequest,
    SplitGradientResponse,
    SplitQueryRequest,
    SplitQueryResponse,
    SplitScoreRequest,
    SplitText,
    SplitUpdateRequest,
)
from r2m_proto.tensors import TensorView

T = TypeVar("T")
Protocol = Generator[Call[Any], Any, T]
RESTARTS = 3


def split_score(run_id: str, prompts: Sequence[str], responses: Sequence[str],
                hidden_states: Sequence[object], *, step: int | None, min_version: int | None,
                binary: bool, cache: QueryCache | None = None) -> Protocol[ScoreResponse]:
    check_score_batch(prompts, responses, hidden_states)
    fields = [f"hidden_states[{i}]" for i in range(len(prompts))]
    for attempt in _attempts():
        query = yield _query_call(run_id, prompts, responses, step, min_version)
        queries = _vectors(query.queries)
        if cache is not None:
            cache.put(run_id, query.version, prompts, responses, queries)
        attention = attend_all(hidden_states, queries, fields)
        sink = _TensorSink(binary)
        items = [ContextItem(prompt=p, response=r, context=sink.field(
            f"items.{i}.context", _view(a.context))) for i, (p, r, a) in
            enumerate(zip(prompts, responses, attention, strict=True))]
        request = SplitScoreRequest(run_id=run_id, version=query.version, step=query.step,
                                    items=items)
        try:
            return (yield _single(Request("POST", "/v1/split/score", sink.body(request)),
                                  lambda r: _model(ScoreResponse, r)))
        except R2MStatusError as error:
            _restart_or_raise(error, attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


def split_update(run_id: str, *, groups: Sequence[Group] | None, pairs: Sequence[Pair] | None,
                 step: int | None, idempotency_key: str | None, learning_rate: float | None,
                 binary: bool, cache: QueryCache | None = None) -> Protocol[UpdateResponse]:
    check_update(groups, pairs)
    prompts, responses, hidden, fields = _flatten(groups, pairs)
    key = idempotency_key or str(uuid.uuid4())  # one key: a 409 means nothing was applied
    cached = None if cache is None else cache.get(run_id, prompts, responses)
    for attempt in _attempts():
        try:
            if attempt == 0 and cached is not None:  # the score of these samples asked already
                phase = _Phase(version=cached[0], step=step)
                queries = cached[1]
            else:
                query = yield _query_call(run_id, prompts, responses, step, None)
                phase, queries = _Phase(query.version, query.step), _vectors(query.queries)
            attention = attend_all(hidden, queries, fields)
            gradient = yield _gradient_call(run_id, phase, groups, pairs, attention, binary)
            grads = _vectors(gradient.context_grads)
            query_grads = [a.query_gradient(g) for a, g in zip(attention, grads, strict=True)]
            return (yield _update_call(run_id, phase, groups, pairs, attention, query_grads,
                                       key, learning_rate, binary))
        except R2MStatusError as error:
            _restart_or_raise(error, attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


# ---- calls -----------------------------------------------------------------------------------


def _query_call(run_id: str, prompts: Sequence[str], responses: Sequence[str],
                step: int | None, min_version: int | None) -> Call[SplitQueryResponse]:
    request = SplitQueryRequest(run_id=run_id, step=step, min_version=min_version, items=[
        SplitText(prompt=p, response=r) for p, r in zip(prompts, responses, strict=True)])
    return _single(Request("POST", "/v1/split/query", json_body(request)),
                   lambda r: _model(SplitQueryResponse, r))


@dataclass(frozen=True)
class _Phase:
    """The version (and RL step) every phase after the query names."""

    version: int
    step: int | None


def _gradient_call(run_id: str, query: _Phase, groups: Sequence[Group] | None,
                   pairs: Sequence[Pair] | None, attention: Sequence[Attention],
                   binary: bool) -> Call[SplitGradientResponse]:
    sink = _TensorSink(binary)
    request = SplitGradientRequest(run_id=run_id, version=query.version, step=query.step,
                                   **_samples(groups, pairs, attention, sink))
    return _single(Request("POST", "/v1/split/gradient", sink.body(request)),
                   lambda r: _model(SplitGradientResponse, r))


def _update_call(run_id: str, query: _Phase, groups: Sequence[Group] | None,
                 pairs: Sequence[Pair] | None, attention: Sequence[Attention],
                 query_grads: Sequence[torch.Tensor], key: str, learning_rate: float | None,
                 binary: bool) -> Call[UpdateResponse]:
    sink = _TensorSink(binary)
    samples = _samples(groups, pairs, attention, sink)
    grads = [sink.field(f"query_grads.{i}", _view(g)) for i, g in enumerate(query_grads)]
    request = SplitUpdateRequest(run_id=run_id, version=query.version, step=query.step,
                                 query_grads=grads, learning_rate=learning_rate, **samples)
    headers = {IDEMPOTENCY_KEY_HEADER: key}
    return _single(Request("POST", "/v1/split/update", sink.body(request), headers),
                   lambda r: _model(UpdateResponse, r))


# ---- samples ---------------------------------------------------------------------------------


def _flatten(groups: Sequence[Group] | None, pairs: Sequence[Pair] | None
             ) -> tuple[list[str], list[str], list[object], list[str]]:
    """The update's samples in the server's order (pairs: chosen, rejected; groups: in order)."""
    prompts, responses, hidden, fields = [], [], [], []
    for i, pair in enumerate(pairs or []):
        for side in ("chosen", "rejected"):
            prompts.append(pair.prompt)
            responses.append(getattr(pair, side))
            hidden.append(getattr(pair, f"{side}_hidden"))
            fields.append(f"pairs[{i}].{side}_hidden")
    for g, group in enumerate(groups or []):
        for k, (response, states) in enumerate(zip(group.responses, group.hidden_states,
                                                   strict=True)):
            prompts.append(group.prompt)
            responses.append(response)
            hidden.append(states)
            fields.append(f"groups[{g}].hidden_states[{k}]")
    return prompts, responses, hidden, fields


def _samples(groups: Sequence[Group] | None, pairs: Sequence[Pair] | None,
             attention: Sequence[Attention], sink: _TensorSink) -> dict[str, Any]:
    contexts = iter(attention)

    def field(name: str) -> WireTensor | str:
        return sink.field(name, _view(next(contexts).context))

    if pairs is not None:
        return {"pairs": [ContextPair(prompt=p.prompt, chosen=p.chosen, rejected=p.rejected,
                                      chosen_context=field(f"pairs.{i}.chosen_context"),
                                      rejected_context=field(f"pairs.{i}.rejected_context"))
                          for i, p in enumerate(pairs)]}
    return {"groups": [ContextGroup(
        prompt=g.prompt, responses=list(g.responses),
        contexts=[field(f"groups.{i}.contexts.{k}") for k in range(len(g.responses))],
        scores=None if g.scores is None else list(g.scores)) for i, g in enumerate(groups or [])]}


# ---- helpers ---------------------------------------------------------------------------------


def _attempts() -> range:
    return range(RESTARTS + 1)


def _restart_or_raise(error: R2MStatusError, attempt: int) -> None:
    """A version conflict restarts from the query phase (while attempts remain)."""
    if error.status_code != httpx.codes.CONFLICT or error.code != "version_conflict" \
            or error.field != "version" or attempt == RESTARTS:
        raise error


def _vectors(wire: Sequence[WireTensor]) -> list[torch.Tensor]:
    return [torch.frombuffer(bytearray(base64.b64decode(w.data)), dtype=torch.float32)
            for w in wire]


def _view(vector: torch.Tensor) -> TensorView:
    data = vector.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return TensorView("float32", tuple(vector.shape), memoryview(data))
