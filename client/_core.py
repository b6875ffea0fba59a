"""Everything the sync and async clients share that is not I/O (the httpx `BaseClient` idea).

Each API method becomes a `Call`: the HTTP requests it needs (several when a score batch is split)
and the function that turns their answers into the result. The twins only send the requests:
`R2MClient` one after another, `AsyncR2MClient` concurrently. Error mapping, retry timing and the
request limits (read from the server's `/v1/info`) live here too, so both transports fail, retry
and split the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar
from urllib.parse import quote

import httpx
from pydantic import BaseModel, ValidationError

from r2m_client._checks import build
from r2m_client._encode import Body, ScoreBatch, json_body, update_body
from r2m_client._retry import RetryPolicy, parse_retry_after
from r2m_client.errors import (
    R2MError,
    R2MInputError,
    R2MProtocolError,
    R2MStatusError,
    R2MTransportError,
)
from r2m_client.types import Group, Pair, RunOptions
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

if TYPE_CHECKING:  # torch: only split mode imports it, at run time
    from r2m_client.split import QueryCache

DEFAULT_BASE_URL = "http://127.0.0.1:8000"
# The largest score request the client makes unless told otherwise, whatever more the server
# accepts: a [2048, 8192] bf16 sample is 32 MiB, and requests of a few such samples let the async
# client upload them in parallel instead of one huge body at a time. A smaller server limit wins.
DEFAULT_MAX_REQUEST_BYTES = 64 * 1024 * 1024
# The fields of `/v1/info` (`InfoResponse`) that bound one request.
_INFO_MAX_BYTES = "max_body_bytes"
_INFO_MAX_ITEMS = "max_items"

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
class RequestLimits:
    """How big one score request may be: `max_bytes` of body, `max_items` items (None: no limit
    known; the server then answers 413 if it has one)."""

    max_bytes: int | None = None
    max_items: int | None = None


@dataclass(frozen=True)
class Call(Generic[T]):
    """An API call: its requests, and how their successful answers (same order) become `T`."""

    requests: Sequence[Request]
    parse: Callable[[Sequence[httpx.Response]], T]


class BaseR2MClient:
    """Configuration and call building shared by `R2MClient` and `AsyncR2MClient`."""

    _http_class: ClassVar[type[httpx.Client] | type[httpx.AsyncClient]]
    _lock_class: ClassVar[Callable[[], threading.Lock | asyncio.Lock]]
    _http: httpx.Client | httpx.AsyncClient

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout: float | httpx.Timeout = 60.0,
        retries: int | RetryPolicy = 3,
        binary: bool = True,
        api_key: str | None = None,
        max_request_bytes: int | None = None,
        max_request_items: int | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        for name, value in (("max_request_bytes", max_request_bytes),
                            ("max_request_items", max_request_items)):
            if value is not None and value <= 0:
                raise R2MInputError(f"must be positive, got {value}", field=name)
        self.binary = binary
        self._query_cache: QueryCache | None = None
        self.retry = retries if isinstance(retries, RetryPolicy) else RetryPolicy(retries=retries)
        self._given_limits = RequestLimits(max_request_bytes, max_request_items)
        # Both given: the server is never asked. Otherwise the first score call asks it once.
        self._limits: RequestLimits | None = (
            self._given_limits if None not in (max_request_bytes, max_request_items) else None)
        self._limits_lock = self._lock_class()
        auth = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = self._http_class(base_url=check_base_url(base_url), timeout=timeout,
                                      headers={**auth, **(headers or {})})

    @property
    def base_url(self) -> httpx.URL:
        return self._http.base_url

    def _build(self, request: Request,
               content: Iterator[memoryview] | AsyncIterator[memoryview] | None) -> httpx.Request:
        """The httpx request for one try; built per try, because `content` is consumed."""
        return self._http.build_request(request.method, request.path,
                                        headers=request.all_headers(), content=content)

    def _retry_delay(self, attempt: int, error: R2MError) -> float | None:
        return self.retry.delay(attempt, error, random.random())

    def _split_score(self, run_id: str, prompts: Sequence[str], responses: Sequence[str],
                     hidden_states: Sequence[object] | None, step: int | None,
                     min_version: int | None) -> Generator[Call[Any], Any, ScoreResponse]:
        """Split mode's score phases (`_split.py`); imported here, so torch is needed only by
        callers who ask for split mode."""
        from r2m_client._split import split_score

        return split_score(run_id, prompts, responses, hidden_states or [], step=step,
                           min_version=min_version, binary=self.binary,
                           cache=self._split_queries())

    def _split_update(self, run_id: str, groups: Sequence[Group] | None,
                      pairs: Sequence[Pair] | None, step: int | None,
                      idempotency_key: str | None, learning_rate: float | None
                      ) -> Generator[Call[Any], Any, UpdateResponse]:
        from r2m_client._split import split_update

        return split_update(run_id, groups=groups, pairs=pairs, step=step,
                            idempotency_key=idempotency_key, learning_rate=learning_rate,
                            binary=self.binary, cache=self._split_queries())

    def _split_queries(self) -> QueryCache:
        """This client's split-mode query cache (made on first use: it needs torch)."""
        from r2m_client.split import QueryCache

        if self._query_cache is None:
            self._query_cache = QueryCache()
        return self._query_cache

    def _info_call(self) -> Call[InfoResponse]:
        return _single(Request("GET", "/v1/info"), lambda r: _model(InfoResponse, r))

    def _limits_call(self) -> Call[RequestLimits]:
        """The request limits: the constructor's where given, else the server's `/v1/info`.

        The answer is read leniently, for these two fields only, so a server that reports more,
        less or other fields (another version) still serves: a limit it does not report is
        none on the client's side, and the server's own check answers 413 if needed.
        """
        def parse(response: httpx.Response) -> RequestLimits:
            server, given = server_limits(response), self._given_limits
            return RequestLimits(
                max_bytes=given.max_bytes or min(server.max_bytes or DEFAULT_MAX_REQUEST_BYTES,
                                                 DEFAULT_MAX_REQUEST_BYTES),
                max_items=given.max_items or server.max_items)

        return _single(Request("GET", "/v1/info"), parse)

    def _create_run_call(self, policy_hidden_size: int, total_steps: int, run_id: str | None,
                         options: RunOptions) -> Call[RunInfo]:
        """The client names the run itself (unless the caller did), so a retried create
        returns the run the first attempt made instead of making a second one.

        Settings left out (or None) are left out of the body too: `CreateRunRequest` is the one
        place their defaults live, and the server applies them.
        """
        run_id = run_id or f"run-{uuid.uuid4().hex[:16]}"
        given = {name: value for name, value in options.items() if value is not None}
        request = build(CreateRunRequest, run_id=run_id, policy_hidden_size=policy_hidden_size,
                        total_steps=total_steps, **given)
        body = json_body(request.model_dump_json(exclude_unset=True))
        return _single(Request("POST", "/v1/runs", body), lambda r: _model(RunInfo, r))

    def _get_run_call(self, run_id: str) -> Call[RunInfo]:
        return _single(Request("GET", _run_path(run_id)), lambda r: _model(RunInfo, r))

    def _delete_run_call(self, run_id: str) -> Call[None]:
        return _single(Request("DELETE", _run_path(run_id)), lambda r: None)

    def _checkpoint_call(self, run_id: str) -> Call[bytes]:
        path = _run_path(run_id) + "/checkpoint"
        return _single(Request("GET", path), lambda r: r.content)

    def _score_call(self, batch: ScoreBatch, limits: RequestLimits) -> Call[ScoreResponse]:
        chunks = batch.chunks(binary=self.binary,
                              max_bytes=limits.max_bytes or DEFAULT_MAX_REQUEST_BYTES,
                              max_items=limits.max_items)
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
        learning_rate: float | None = None,
    ) -> Call[UpdateResponse]:
        body = update_body(run_id, groups=groups, pairs=pairs, step=step, binary=self.binary,
                           learning_rate=learning_rate)
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


def check_base_url(base_url: str) -> str:
    """`base_url` if the client can use it: http(s), and the server's root rather than its API.

    The client adds `/v1/...` itself, so a base URL ending in `/v1` would request `/v1/v1/...`
    and get a bare 404; said here, at construction, the fix is obvious. Other paths are kept:
    a proxy may serve r2m under a prefix such as `http://gateway/r2m`.
    """
    url = httpx.URL(base_url)
    if url.scheme not in ("http", "https") or not url.host:
        raise R2MInputError(f"expected http://host:port or https://host, got {base_url!r}",
                            field="base_url")
    path = url.path.rstrip("/")
    if path == "/v1" or path.endswith("/v1"):
        root = str(url.copy_with(path=path.removesuffix("/v1") or "/")).rstrip("/")
        raise R2MInputError(f"{base_url!r} ends in /v1, but the client adds the API version "
                            f"to every path itself; pass the server's root: {root!r}",
                            field="base_url")
    return base_url


def server_limits(response: httpx.Response) -> RequestLimits:
    """The limits a `/v1/info` answer reports; a field that is absent or not a positive integer
    is no limit. Never fails on the rest of the body: only these two fields matter here."""
    with contextlib.suppress(ValueError):
        body = json.loads(response.content)
        if isinstance(body, dict):
            return RequestLimits(_positive_int(body.get(_INFO_MAX_BYTES)),
                                 _positive_int(body.get(_INFO_MAX_ITEMS)))
    raise R2MProtocolError(f"{_describe(response)} answered HTTP {response.status_code} with a "
                           "body that is not a JSON object (is base_url an r2m server?)")


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
    request = _request_of(response)
    return cls(message, status_code=response.status_code, code=code, field=field_name,
               retry_after=parse_retry_after(response.headers.get(RETRY_AFTER_HEADER)),
               request_id=response.headers.get(REQUEST_ID_HEADER),
               method=request.method if request else None,
               url=_safe_url(request.url) if request else None)


@contextlib.contextmanager
def transport_errors(request: httpx.Request) -> Iterator[None]:
    """Re-raise httpx's no-answer failures as `R2MTransportError` naming the request (retryable
    unless the request itself can never be sent: a bad URL scheme or an invalid header)."""
    try:
        yield
    except httpx.TransportError as exc:
        fatal = isinstance(exc, httpx.UnsupportedProtocol | httpx.LocalProtocolError)
        url = _safe_url(request.url)
        raise R2MTransportError(f"{request.method} {url} failed: {type(exc).__name__}: {exc}",
                                retryable=not fatal, method=request.method, url=url) from exc


def _single(request: Request, parse: Callable[[httpx.Response], T]) -> Call[T]:
    return Call([request], lambda answers: parse(answers[0]))


def _model(model: type[M], response: httpx.Response) -> M:
    try:
        return model.model_validate_json(response.content)
    except ValidationError as exc:
        raise R2MProtocolError(f"{_describe(response)} answered HTTP {response.status_code} with "
                               f"a body that is not a {model.__name__} (is base_url an r2m "
                               f"server?): {exc}") from exc


def _request_of(response: httpx.Response) -> httpx.Request | None:
    """The request that got `response`; None for a response made by hand (httpx raises)."""
    try:
        return response.request
    except RuntimeError:
        return None


def _describe(response: httpx.Response) -> str:
    request = _request_of(response)
    return f"{request.method} {_safe_url(request.url)}" if request else "the server"


def _safe_url(url: httpx.URL) -> str:
    """The URL for a message: without credentials, which a base URL may carry."""
    return str(url.copy_with(username=None, password=None) if url.userinfo else url)


def _positive_int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _run_path(run_id: str) -> str:
    return "/v1/runs/" + quote(run_id, safe="")


def _str_or_none(value: object) -> str | None:
    return value if isinstance(value, str) else None
