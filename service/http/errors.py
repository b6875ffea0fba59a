"""Every failure leaves as `{"error": {"code", "message", "field"?}}` with the right status."""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from r2m_proto.errors import ErrorBody, ErrorCode, ErrorDetail, WireError, field_path
from r2m_proto.media import RETRY_AFTER_HEADER
from r2m_service.errors import (
    CapacityExceeded,
    InvalidInput,
    Overloaded,
    RetryLater,
    RunExists,
    RunNotFound,
    ServiceError,
    StaleContextToken,
    TooManyItems,
    Unavailable,
    VersionConflict,
    VersionNotReached,
)

log = logging.getLogger(__name__)

STATUS_BY_CODE: dict[ErrorCode, int] = {
    ErrorCode.MALFORMED_BODY: 400,
    ErrorCode.INVALID_REQUEST: 422,
    ErrorCode.UNSUPPORTED_MEDIA_TYPE: 415,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.RUN_NOT_FOUND: 404,
    ErrorCode.NOT_FOUND: 404,
    ErrorCode.VERSION_CONFLICT: 409,
    ErrorCode.CONTEXT_TOKEN_STALE: 409,
    ErrorCode.RUN_EXISTS: 409,
    ErrorCode.OVERLOADED: 429,
    ErrorCode.UNAVAILABLE: 503,
    ErrorCode.CLIENT_CLOSED: 499,  # nginx's convention; nobody is left to read it
    ErrorCode.UNAUTHORIZED: 401,
    ErrorCode.FORBIDDEN: 403,
    ErrorCode.INTERNAL: 500,
}
_CODE_BY_STATUS = {404: ErrorCode.NOT_FOUND, 405: ErrorCode.INVALID_REQUEST}
# The one place where the service's domain errors meet the wire (most specific class first).
_CODE_BY_ERROR: tuple[tuple[type[ServiceError], ErrorCode], ...] = (
    (InvalidInput, ErrorCode.INVALID_REQUEST),
    (TooManyItems, ErrorCode.PAYLOAD_TOO_LARGE),
    (RunNotFound, ErrorCode.RUN_NOT_FOUND),
    (RunExists, ErrorCode.RUN_EXISTS),
    (VersionNotReached, ErrorCode.VERSION_CONFLICT),
    (VersionConflict, ErrorCode.VERSION_CONFLICT),
    (StaleContextToken, ErrorCode.CONTEXT_TOKEN_STALE),
    (Overloaded, ErrorCode.OVERLOADED),
    (CapacityExceeded, ErrorCode.OVERLOADED),
    (Unavailable, ErrorCode.UNAVAILABLE),
)


def code_of(exc: ServiceError) -> ErrorCode:
    return next((code for kind, code in _CODE_BY_ERROR if isinstance(exc, kind)),
                ErrorCode.INTERNAL)


def error_response(code: ErrorCode, message: str, field: str | None = None,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    body = ErrorBody(error=ErrorDetail(code=code, message=message, field=field))
    return JSONResponse(body.model_dump(mode="json", exclude_none=True),
                          status_code=STATUS_BY_CODE[code], headers=headers)


def validation_error_response(exc: ValidationError | RequestValidationError) -> JSONResponse:
    """The first pydantic error, rendered with its field path and what was expected."""
    first = exc.errors()[0]
    if first.get("type") == "json_invalid":
        return error_response(ErrorCode.MALFORMED_BODY, f"body is not valid JSON: {first['msg']}",
                              "body")
    loc = [part for part in first.get("loc", ()) if part != "body"]
    message = first.get("msg", "invalid value").removeprefix("Value error, ")
    return error_response(ErrorCode.INVALID_REQUEST, message, field_path(loc) or None)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(WireError)
    async def _wire(_: Request, exc: WireError) -> JSONResponse:
        return error_response(exc.code, exc.message, exc.field)

    @app.exception_handler(ServiceError)
    async def _service(request: Request, exc: ServiceError) -> JSONResponse:
        code = code_of(exc)
        if code is ErrorCode.INTERNAL:  # a ServiceError nobody mapped: a bug, not the caller's
            log.error("unmapped %s on %s %s", type(exc).__name__, request.method,
                      request.url.path)
        retry = exc.retry_after_s if isinstance(exc, RetryLater) else None
        headers = None if retry is None else {RETRY_AFTER_HEADER: str(retry)}
        return error_response(code, exc.message, exc.field, headers)

    @app.exception_handler(ValidationError)
    async def _validation(_: Request, exc: ValidationError) -> JSONResponse:
        return validation_error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _CODE_BY_STATUS.get(exc.status_code, ErrorCode.INTERNAL)
        headers = exc.headers
        if exc.status_code == 405 and (allow := allowed_methods(request)):
            headers = {**(headers or {}), "Allow": allow}  # Starlette's names one route's only
        response = error_response(code, str(exc.detail), headers=headers)
        response.status_code = exc.status_code
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(ErrorCode.INTERNAL, f"internal error: {type(exc).__name__}")


def allowed_methods(request: Request) -> str:
    """Every method the document lists for the request's path (RFC 9110's `Allow`)."""
    path = request.url.path
    methods: set[str] = set()
    for template, operations in request.app.openapi().get("paths", {}).items():
        if re.fullmatch(re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template)), path):
            methods |= {method.upper() for method in operations}
    return ", ".join(sorted(methods))
