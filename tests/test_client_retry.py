"""Which failures are resent, how long the client waits, and how answers map to exceptions."""

from __future__ import annotations

from email.utils import formatdate

import httpx
import pytest

from r2m_client import (
    R2MClientError,
    R2MError,
    R2MOverloadedError,
    R2MServerError,
    R2MStatusError,
    R2MTransportError,
    RetryPolicy,
    RunNotFoundError,
)
from r2m_client._core import error_from_response, transport_errors
from r2m_client._retry import parse_retry_after


def _status(status: int, code: str | None = None, retry_after: str | None = None,
            content: bytes | None = None) -> R2MStatusError:
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    if content is None:
        return error_from_response(httpx.Response(
            status, headers=headers,
            json={"error": {"code": code or "x", "message": "why", "field": "items[0]"}}))
    return error_from_response(httpx.Response(status, headers=headers, content=content))


POLICY = RetryPolicy(retries=3, backoff=0.5, max_backoff=60.0, jitter=0.5)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 413, 415, 422])
def test_caller_mistakes_are_never_retried(status: int) -> None:
    error = _status(status)
    assert isinstance(error, R2MClientError)
    assert not error.retryable
    assert POLICY.delay(0, error, 0.0) is None


@pytest.mark.parametrize(("status", "cls"), [
    (429, R2MOverloadedError), (503, R2MOverloadedError),
    (500, R2MServerError), (502, R2MServerError), (504, R2MServerError)])
def test_overload_and_server_errors_are_retried(status: int, cls: type[R2MError]) -> None:
    error = _status(status)
    assert type(error) is cls
    assert error.retryable
    assert POLICY.delay(0, error, 0.0) == 0.5


def test_transport_errors_are_retried_unless_the_request_can_never_be_sent() -> None:
    request = httpx.Request("POST", "http://rm:8000/v1/score")
    for exc, retryable in [(httpx.ConnectError("refused"), True),
                           (httpx.ReadTimeout("slow"), True),
                           (httpx.RemoteProtocolError("dropped"), True),
                           (httpx.UnsupportedProtocol("ftp://"), False)]:
        with pytest.raises(R2MTransportError) as info, transport_errors(request):
            raise exc
        assert info.value.retryable is retryable
        assert info.value.__cause__ is exc
        assert (POLICY.delay(0, info.value, 0.0) is not None) is retryable
        assert str(info.value).startswith("POST http://rm:8000/v1/score failed: ")
        assert (info.value.method, info.value.url) == ("POST", "http://rm:8000/v1/score")


def test_messages_name_the_request_but_not_credentials_in_its_url() -> None:
    request = httpx.Request("GET", "http://user:secret@rm:8000/v1/runs/r")
    error = error_from_response(httpx.Response(
        404, request=request, json={"error": {"code": "run_not_found", "message": "no run"}}))
    assert str(error) == "HTTP 404 run_not_found on GET http://rm:8000/v1/runs/r: no run"
    with pytest.raises(R2MTransportError) as info, transport_errors(request):
        raise httpx.ConnectError("refused")
    assert "secret" not in str(info.value) and "http://rm:8000/v1/runs/r" in str(info.value)


def test_backoff_grows_exponentially_within_the_jitter_band_and_caps() -> None:
    error = _status(500)
    assert [POLICY.delay(n, error, 0.0) for n in range(3)] == [0.5, 1.0, 2.0]
    assert [POLICY.delay(n, error, 1.0) for n in range(3)] == [0.25, 0.5, 1.0]
    capped = RetryPolicy(retries=10, backoff=1.0, max_backoff=4.0)
    assert [capped.delay(n, error, 0.0) for n in range(5)] == [1.0, 2.0, 4.0, 4.0, 4.0]


def test_retries_stop_after_the_budget() -> None:
    error = _status(503)
    assert POLICY.delay(2, error, 0.0) is not None
    assert POLICY.delay(3, error, 0.0) is None
    assert RetryPolicy(retries=0).delay(0, error, 0.0) is None


def test_retry_after_is_honoured_over_backoff() -> None:
    assert POLICY.delay(0, _status(429, retry_after="7"), 0.0) == 7.0
    assert POLICY.delay(2, _status(503, retry_after="0"), 0.9) == 0.0
    assert POLICY.delay(0, _status(503, retry_after="3600"), 0.0) is None


def test_retry_after_parses_seconds_and_http_dates() -> None:
    assert parse_retry_after("12") == 12.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after(formatdate(1_000_030, usegmt=True), now=1_000_000) == 30.0
    assert parse_retry_after(formatdate(999_000, usegmt=True), now=1_000_000) == 0.0
    for bad in (None, "", "soon", "nan"):
        assert parse_retry_after(bad) is None


def test_error_body_fields_are_exposed() -> None:
    error = error_from_response(httpx.Response(
        422, headers={"X-Request-ID": "req-1"},
        json={"error": {"code": "invalid_request", "message": "bad shape",
                        "field": "items[2].hidden_states"}}))
    assert (error.status_code, error.code, error.message, error.field, error.request_id) == (
        422, "invalid_request", "bad shape", "items[2].hidden_states", "req-1")
    assert str(error) == "HTTP 422 invalid_request: bad shape (field items[2].hidden_states)"


def test_unknown_run_is_its_own_class_but_an_unknown_route_is_not() -> None:
    assert isinstance(_status(404, "run_not_found"), RunNotFoundError)
    assert type(_status(404, "not_found")) is R2MClientError


def test_non_r2m_error_bodies_still_map_by_status() -> None:
    error = _status(502, content=b"<html>Bad Gateway</html>", retry_after="2")
    assert isinstance(error, R2MServerError)
    assert (error.code, error.field, error.retry_after) == (None, None, 2.0)
    assert "Bad Gateway" in error.message
    assert _status(500, content=b'["not", "an", "error"]').code is None


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="non-negative"):
        RetryPolicy(retries=-1)
    with pytest.raises(ValueError, match="jitter"):
        RetryPolicy(jitter=2.0)
