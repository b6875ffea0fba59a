"""Everything the sync and async clients share that is not I/O (the httpx `BaseClient` idea).

Each API method becomes a `Call`: the HTTP requests it needs (several when a score batch is split)
and the function that turns their answers into the result. The twins only send the requests:
`R2MClient` one after another, `AsyncR2MClient` concurrently. Error mapping and retry timing live
here too, so both transports fail and retry the same way.
"""

from __future__ import annotations

import contextlib
import json
import random
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from r2m_client._encode import Body, json_body, score_chunks, update_body
from r2m_client._retry import RetryPolicy, parse_retry_after
from r2m_client._tensors import HiddenStates
from r2m_client.errors import (
    R2MError,
    R2MProtocolError,
    R2MStatusError,
    R2MTransportError,
)
from r2m_client.types import Group, Pair
from r2m_proto import (
    IDEMPOTENCY_KEY_HEADER,
    REQUEST_ID_HEADER,
    CreateRunRequest,
    InfoResponse,
    RunInfo,
    ScoreResponse,
    UpdateResponse,
)
from r2m_proto.media import RETRY_AFTER_HEADER

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_REQUEST_ITEMS = 1024  # the server's default --max-items

T = TypeVar("T")
M = TypeVar("M", bound=BaseModel)


@dataclass(frozen=True)
class Request:
    """One HTTP request, reusable across retries (its body re-iterates, its headers are fixed)."""

    method: str
    path: str
    body: Body | None = None
    headers: Mapping[str, str] = field(default_factory=dict)

    def all_headers(self) -> dict[str, str]:
        return {**self.headers, **(self.body.headers() if self.body else {})}


@dataclass(frozen=True)
class Call(Generic[T]):
    """An API call: its requests, and how their successful answers (same order) become `T`."""

    requests: Sequence[Request]
    parse: Callable[[Sequence[httpx.Response]], T]


class BaseR2MClient:
    """Configuration and call building shared by `R2MClient` and `AsyncR2MClient`."""

    _http_class: ClassVar[type[httpx.Client] | type[httpx.AsyncClient]]
    _http: httpx.Client | httpx.AsyncClient

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float | httpx.Timeout = 60.0,
        retries: int | RetryPolicy = 3,
        binary: bool = True,
        api_key: str | None = None,
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
        max_request_items: int = DEFAULT_MAX_REQUEST_ITEMS,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        if max_request_bytes <= 0 or max_request_items <= 0:
            raise ValueError("max_request_bytes and max_request_items must be positive, got "
                             f"{max_request_bytes} and {max_request_items}")
        self.binary = binary
        self.max_request_bytes = max_request_bytes
        self.max_request_items = max_request_items
        self.retry = retries if isinstance(retries, RetryPolicy) else RetryPolicy(retries=retries)
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = self._http_class(base_url=base_url, timeout=timeout,
                                      headers={**auth, **(headers or {})})

    @property
    def base_url(self) -> httpx.URL:
        return self._http.base_url

    def _retry_delay(self, attempt: int, error: R2MError) -> float | None:
        return self.retry.delay(attempt, error, random.random())

    def _info_call(self) -> Call[InfoResponse]:
        return _single(Request("GET", "/v1/info"), lambda r: _model(InfoResponse, r))

    def _create_run_call(self, *, run_id: str | None, **config: Any) -> Call[RunInfo]:
        """The client names the run itself (unless the caller did), so a retried create
        returns the run the first attempt made instead of making a second one."""
        run_id = run_id or f"run-{uuid.uuid4().hex[:16]}"
        body = json_body(CreateRunRequest(run_id=run_id, **config))
        return _single(Request("POST", "/v1/runs", body), lambda r: _model(RunInfo, r))

    def _get_run_call(self, run_id: str) -> Call[RunInfo]:
        return _single(Request("GET", _run_path(run_id)), lambda r: _model(RunInfo, r))

    def _delete_run_call(self, run_id: str) -> Call[None]:
        return _single(Request("DELETE", _run_path(run_id)), lambda r: None)

    def _checkpoint_call(self, run_id: str) -> Call[bytes]:
        path = _run_path(run_id) + "/checkpoint"
        return _single(Request("GET", path), lambda r: r.content)

    def _score_call(
        self,
        run_id: str,
        prompts: Sequence[str],
        responses: Sequence[str],
        hidden_states: Sequence[HiddenStates | None] | None,
        step: int | None,
        min_version: int | None,
    ) -> Call[ScoreResponse]:
        chunks = score_chunks(run_id, prompts, responses, hidden_states, step=step,
                              min_version=min_version, binary=self.binary,
                              max_bytes=self.max_request_bytes,
                              max_items=self.max_request_items)
        sizes = [chunk.size for chunk in chunks]

        def parse(answers: Sequence[httpx.Response]) -> ScoreResponse:
            return merge_scores([_model(ScoreResponse, a) for a in answers], sizes)

        return Call([Request("POST", "/v1/score", chunk.body) for chunk in chunks], parse)

    def _update_call(
        self,
        run_id: str,
        groups: Sequence[Group] | None,
        pairs: Sequence[Pair] | None,
        step: int | None,
        idempotency_key: str | None,
    ) -> Call[UpdateResponse]:
        body = update_body(run_id, groups=groups, pairs=pairs, step=step, binary=self.binary)
        headers = {IDEMPOTENCY_KEY_HEADER: idempotency_key or str(uuid.uuid4())}
        request = Request("POST", "/v1/update", body, headers)
        return _single(request, lambda r: _model(UpdateResponse, r))


def merge_scores(parts: Sequence[ScoreResponse], sizes: Sequence[int]) -> ScoreResponse:
    """One answer for a split batch: rewards in order; version, step and omega of the oldest
    module version that scored any of it (chunks may straddle a concurrent update)."""
    for part, size in zip(parts, sizes, strict=True):
        if len(part.rewards) != size:
            raise R2MProtocolError(f"server returned {len(part.rewards)} rewards for {size} items")
    oldest = min(parts, key=lambda part: part.version)
    rewards = [reward for part in parts for reward in part.rewards]
    return oldest.model_copy(update={"rewards": rewards})


def check_response(response: httpx.Response) -> httpx.Response:
    """The response itself if 2xx, else raise the matching `R2MStatusError`."""
    if response.is_success:
        return response
    raise error_from_response(response)


def error_from_response(response: httpx.Response) -> R2MStatusError:
    """Map an error answer to the hierarchy; non-r2m bodies (a proxy's page) still map by status."""
    code = field_name = None
    message = response.text[:500] or response.reason_phrase
    with contextlib.suppress(ValueError):
        body = json.loads(response.content)
        error = body.get("error") if isinstance(body, dict) else None
        if isinstance(error, dict):
            code = _str_or_none(error.get("code"))
            field_name = _str_or_none(error.get("field"))
            message = _str_or_none(error.get("message")) or message
    cls = R2MStatusError.for_status(response.status_code, code)
    return cls(message, status_code=response.status_code, code=code, field=field_name,
               retry_after=parse_retry_after(response.headers.get(RETRY_AFTER_HEADER)),
               request_id=response.headers.get(REQUEST_ID_HEADER))


@contextlib.contextmanager
def transport_errors() -> Iterator[None]:
    """Re-raise httpx's no-answer failures as `R2MTransportError` (retryable unless the request
    itself can never be sent: a bad URL scheme or an invalid header)."""
    try:
        yield
    except httpx.TransportError as exc:
        fatal = isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError)
        raise R2MTransportError(f"{type(exc).__name__}: {exc}", retryable=not fatal) from exc


def _single(request: Request, parse: Callable[[httpx.Response], T]) -> Call[T]:
    return Call([request], lambda answers: parse(answers[0]))


def _model(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise R2MProtocolError(f"HTTP {response.status_code} answer is not a {model.__name__} "
                               f"(is base_url an r2m server?): {exc}") from exc


def _run_path(run_id: str) -> str:
    return "/v1/runs/" + quote(run_id, safe="")


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
