"""The one error shape every non-2xx answer has: `{"error": {"code", "message", "field"?}}`."""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel


class ErrorCode(str, Enum):
    """Machine-readable error codes; the HTTP status says the class, the code says the cause."""

    MALFORMED_BODY = "malformed_body"
    INVALID_REQUEST = "invalid_request"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    RUN_NOT_FOUND = "run_not_found"
    NOT_FOUND = "not_found"
    VERSION_CONFLICT = "version_conflict"  # min_version not reached in time
    # split mode: a context token expired, unknown, of another run or version; resend c inline
    CONTEXT_TOKEN_STALE = "context_token_stale"
    RUN_EXISTS = "run_exists"  # a caller-chosen run id taken by a run with other settings
    OVERLOADED = "overloaded"
    UNAVAILABLE = "unavailable"
    CLIENT_CLOSED = "client_closed"
    UNAUTHORIZED = "unauthorized"
    FORBIDDEN = "forbidden"
    INTERNAL = "internal"


class ErrorDetail(BaseModel):
    code: ErrorCode
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class WireError(ValueError):
    """A request that cannot be decoded from the wire (body, media type, credentials), with the
    error code it answers. The service's own refusals are domain errors (`r2m_service.errors`).

    `field` is a path such as `items[2].hidden_states`.
    """

    def __init__(self, message: str, field: str | None = None,
                 code: ErrorCode = ErrorCode.INVALID_REQUEST) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.code = code


def field_path(loc: tuple[str | int, ...] | list[str | int]) -> str:
    """Render a pydantic-style location as `groups[0].hidden_states[1]`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out
