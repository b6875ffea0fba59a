"""Split mode's phases as a sans-I/O protocol shared by both clients.

Each protocol is a generator that yields the `Call` of the next phase and receives its result
(or, at a failed phase, the error): `R2MClient` drives it with blocking sends, `AsyncR2MClient`
with awaited ones, so the phases, the local math and the restart on a version conflict exist
once. A 409 `version_conflict` means an update landed between the query and a later phase, and
a 409 `context_token_stale` that the server no longer holds the contexts an update named: the
protocol starts again from the query (contexts inline), up to `restarts` times.

With `binary`, vectors go both ways as safetensors: request bodies, and answers (`Accept`).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import httpx
import torch
from pydantic import BaseModel, ValidationError

from r2m_client._checks import check_score_batch, check_update
from r2m_client._core import Call, Request, _model, _single
from r2m_client._encode import Body, _TensorSink, json_body
from r2m_client.errors import R2MProtocolError, R2MStatusError
from r2m_client.split import Attention, QueryCache, Recalled, attend_all
from r2m_client.types import Group, Pair
from r2m_proto import (
    IDEMPOTENCY_KEY_HEADER,
    JSON_MEDIA_TYPE,
    SAFETENSORS_MEDIA_TYPE,
    UpdateResponse,
    WireTensor,
    decode_safetensors,
)
from r2m_proto.errors import ErrorCode, WireError
from r2m_proto.media import SAFETENSORS_RESPONSE_KEY
from r2m_proto.split import (
    ContextGroup,
    ContextItem,
    ContextPair,
    ContextRef,
    SplitGradientRequest,
    SplitGradientResponse,
    SplitQueryRequest,
    SplitQueryResponse,
    SplitScoreRequest,
    SplitScoreResponse,
    SplitText,
    SplitUpdateRequest,
)
from r2m_proto.tensors import TensorView

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)
Protocol = Generator[Call[Any], Any, T]
RESTARTS = 3
_RESTART_CODES = {ErrorCode.VERSION_CONFLICT.value: "version",
                  ErrorCode.CONTEXT_TOKEN_STALE.value: None}  # code → the field it must name


def split_score(run_id: str, prompts: Sequence[str], responses: Sequence[str],
                hidden_states: Sequence[object], *, step: int | None, min_version: int | None,
                binary: bool, cache: QueryCache | None = None) -> Protocol[SplitScoreResponse]:
    check_score_batch(prompts, responses, hidden_states)
    fields = [f"hidden_states[{i}]" for i in range(len(prompts))]
    for attempt in _attempts():
        query = yield _query_call(run_id, prompts, responses, step, min_version, binary)
        queries = query.vectors(query.answer.queries)
        attention = attend_all(hidden_states, queries, fields)
        sink = _TensorSink(binary)
        items = [ContextItem(prompt=p, response=r, context=sink.field(
            f"items.{i}.context", _view(a.context))) for i, (p, r, a) in
            enumerate(zip(prompts, responses, attention, strict=True))]
        request = SplitScoreRequest(run_id=run_id, version=query.answer.version,
                                    step=query.answer.step, items=items)
        try:
            scored = yield _single(Request("POST", "/v1/split/score", sink.body(request)),
                                   lambda r: _model(SplitScoreResponse, r))
        except R2MStatusError as error:
            _restart_or_raise(error, attempt)
            continue
        if cache is not None:
            cache.put(run_id, scored.version, prompts, responses, queries,
                      [a.context for a in attention], scored.context_token)
        return scored
    raise AssertionError("unreachable: the last attempt returns or raises")


def split_update(run_id: str, *, groups: Sequence[Group] | None, pairs: Sequence[Pair] | None,
                 step: int | None, idempotency_key: str | None, learning_rate: float | None,
                 binary: bool, cache: QueryCache | None = None) -> Protocol[UpdateResponse]:
    check_update(groups, pairs)
    prompts, responses, hidden, fields = _flatten(groups, pairs)
    key = idempotency_key or str(uuid.uuid4())  # one key: a 409 means nothing was applied
    cached = None if cache is None else cache.get(run_id, prompts, responses)
    for attempt in _attempts():
        recalled: Recalled | None = cached if attempt == 0 else None  # a restart asks afresh
        try:
            if recalled is not None:  # the score of these samples asked already
                phase = _Phase(version=recalled.version, step=step)
                queries = recalled.queries
            else:
                query = yield _query_call(run_id, prompts, responses, step, None, binary)
                phase = _Phase(query.answer.version, query.answer.step)
                queries = query.vectors(query.answer.queries)
            attention = attend_all(hidden, queries, fields)
            refs = None if recalled is None else recalled.context_refs(attention)
            gradient = yield _gradient_call(run_id, phase, groups, pairs, attention, refs,
                                            binary)
            grads = gradient.vectors(gradient.answer.context_grads)
            query_grads = [a.query_gradient(g) for a, g in zip(attention, grads, strict=True)]
            token = gradient.answer.context_token
            if refs is None and token is not None:  # the server kept what we just sent
                refs = [ContextRef(token=token, index=i) for i in range(len(attention))]
            return (yield _update_call(run_id, phase, groups, pairs, attention, refs,
                                       query_grads, key, learning_rate, binary))
        except R2MStatusError as error:
            _restart_or_raise(error, attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")


# ---- calls -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer(Generic[M]):
    """An answer that carries vectors, and the tensors its vector fields name (binary form)."""

    answer: M
    tensors: dict[str, TensorView]

    def vectors(self, fields: Sequence[WireTensor | str]) -> list[torch.Tensor]:
        return [_vector(f if isinstance(f, WireTensor) else self._named(f)) for f in fields]

    def _named(self, name: str) -> TensorView:
        if name not in self.tensors:
            raise R2MProtocolError(f"the answer names tensor {name!r}, which it does not hold")
        return self.tensors[name]


def _vector_answer(model: type[M]) -> Callable[[httpx.Response], _Answer[M]]:
    """Parses the JSON form or the safetensors form (`__metadata__.response` + tensors)."""

    def parse(response: httpx.Response) -> _Answer[M]:
        kind = response.headers.get("content-type", JSON_MEDIA_TYPE).split(";")[0].strip()
        if kind != SAFETENSORS_MEDIA_TYPE:
            return _Answer(_model(model, response), {})
        try:
            metadata, tensors = decode_safetensors(bytearray(response.content))
            return _Answer(model.model_validate_json(metadata[SAFETENSORS_RESPONSE_KEY]),
                           tensors)
        except (WireError, KeyError, ValidationError) as exc:
            raise R2MProtocolError(f"a safetensors answer that is not a {model.__name__}: "
                                   f"{exc}") from exc

    return parse


def _vector_request(path: str, body: Body, binary: bool, headers: dict[str, str] | None = None
                    ) -> Request:
    accept = {"Accept": f"{SAFETENSORS_MEDIA_TYPE}, {JSON_MEDIA_TYPE}"} if binary else {}
    return Request("POST", path, body, {**accept, **(headers or {})})


def _query_call(run_id: str, prompts: Sequence[str], responses: Sequence[str],
                step: int | None, min_version: int | None,
                binary: bool) -> Call[_Answer[SplitQueryResponse]]:
    request = SplitQueryRequest(run_id=run_id, step=step, min_version=min_version, items=[
        SplitText(prompt=p, response=r) for p, r in zip(prompts, responses, strict=True)])
    return _single(_vector_request("/v1/split/query", json_body(request), binary),
                   _vector_answer(SplitQueryResponse))


@dataclass(frozen=True)
class _Phase:
    """The version (and RL step) every phase after the query names."""

    version: int
    step: int | None


def _gradient_call(run_id: str, query: _Phase, groups: Sequence[Group] | None,
                   pairs: Sequence[Pair] | None, attention: Sequence[Attention],
                   refs: Sequence[ContextRef] | None,
                   binary: bool) -> Call[_Answer[SplitGradientResponse]]:
    sink = _TensorSink(binary)
    request = SplitGradientRequest(run_id=run_id, version=query.version, step=query.step,
                                   **_samples(groups, pairs, attention, refs, sink))
    return _single(_vector_request("/v1/split/gradient", sink.body(request), binary),
                   _vector_answer(SplitGradientResponse))


def _update_call(run_id: str, query: _Phase, groups: Sequence[Group] | None,
                 pairs: Sequence[Pair] | None, attention: Sequence[Attention],
                 refs: Sequence[ContextRef] | None, query_grads: Sequence[torch.Tensor],
                 key: str, learning_rate: float | None, binary: bool) -> Call[UpdateResponse]:
    sink = _TensorSink(binary)
    samples = _samples(groups, pairs, attention, refs, sink)
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
             attention: Sequence[Attention], refs: Sequence[ContextRef] | None,
             sink: _TensorSink) -> dict[str, Any]:
    """The samples with their contexts: the server's references where it holds them all."""
    contexts = iter(attention)
    held = iter(refs or ())

    def field(name: str) -> WireTensor | str | ContextRef:
        context = next(contexts).context
        return next(held) if refs is not None else sink.field(name, _view(context))

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
    """A version conflict or a stale context token restarts from the query phase (while
    attempts remain)."""
    restarts = error.status_code == httpx.codes.CONFLICT and error.code in _RESTART_CODES \
        and _RESTART_CODES[error.code] in (None, error.field)
    if not restarts or attempt == RESTARTS:
        raise error


def _vector(wire: WireTensor | TensorView) -> torch.Tensor:
    """A float32 `[D_p]` vector of an answer (a copy: it outlives the answer's buffer)."""
    data = base64.b64decode(wire.data) if isinstance(wire, WireTensor) else wire.data
    return torch.frombuffer(bytearray(data), dtype=torch.float32)


def _view(vector: torch.Tensor) -> TensorView:
    data = vector.detach().to("cpu", torch.float32).contiguous().numpy().tobytes()
    return TensorView("float32", tuple(vector.shape), memoryview(data))
