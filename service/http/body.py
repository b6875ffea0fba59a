"""Request bodies: read with a size limit, decode JSON or safetensors into (schema, tensors);
and answers that carry vectors, in the format the caller's `Accept` asks for.

Reading streams straight into one preallocated buffer sized from Content-Length (no join copy;
413 before a byte is read when it is too large). Decoding runs in a worker thread, never on the
event loop: a 64 MiB JSON body would stall every other request (docs/measurements.md).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TypeVar

import numpy as np
from fastapi import Request, Response
from pydantic import BaseModel
from starlette.requests import ClientDisconnect

from r2m_proto.errors import ErrorCode, WireError
from r2m_proto.media import (
    CHECKPOINT_MEDIA_TYPE,
    JSON_MEDIA_TYPE,
    SAFETENSORS_MEDIA_TYPE,
    SAFETENSORS_REQUEST_KEY,
    SAFETENSORS_RESPONSE_KEY,
)
from r2m_proto.safetensors_body import decode_safetensors
from r2m_proto.tensor_sink import TensorSink
from r2m_proto.tensors import TensorView
from r2m_service.http.disconnect import ClientDisconnected

M = TypeVar("M", bound=BaseModel)
# Bodies up to this size are decoded on the event loop: parsing 16 KiB takes about as long as
# the hop to a worker thread and back (~0.1 ms), which most score requests would otherwise pay.
INLINE_DECODE_BYTES = 16 * 1024


def _too_large(size: int | str, limit: int) -> WireError:
    return WireError(f"body of {size} bytes exceeds the limit of {limit} bytes "
                     "(split the batch; the r2m client does this itself)", "body",
                     ErrorCode.PAYLOAD_TOO_LARGE)


def _uninitialized(size: int) -> memoryview:
    """A writable buffer of `size` bytes that nobody zero-fills: every byte is about to be
    overwritten by the body, and zeroing 64 MiB first cost 12 ms of a 23 ms allocate-and-fill
    (bench/RESULTS.md, "Wire")."""
    return memoryview(np.empty(size, np.uint8)).cast("B")


async def read_body(request: Request, limit: int) -> memoryview:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise WireError(f"invalid Content-Length {declared!r}", "body",
                            ErrorCode.MALFORMED_BODY)
        size = int(declared)
        if size > limit:
            raise _too_large(size, limit)
        buffer = _uninitialized(size)
        filled = 0
        async for chunk in _chunks(request):
            end = filled + len(chunk)
            if end > size:
                return _complete(buffer, end)  # raises: longer than its Content-Length
            buffer[filled:end] = chunk
            filled = end
        return _complete(buffer, filled)
    grown = bytearray()
    async for chunk in _chunks(request):
        grown += chunk
        if len(grown) > limit:
            raise _too_large(f"more than {limit}", limit)
    return memoryview(grown)


def _complete(buffer: memoryview, received: int) -> memoryview:
    """The buffer, if exactly its size arrived (the size its Content-Length declared)."""
    if received > len(buffer):
        raise WireError("body is longer than its Content-Length", "body", ErrorCode.MALFORMED_BODY)
    if received < len(buffer):
        raise WireError(f"body ended after {received} of {len(buffer)} bytes", "body",
                        ErrorCode.MALFORMED_BODY)
    return buffer


async def _chunks(request: Request) -> AsyncIterator[bytes]:
    """The body's chunks; a client that leaves mid-upload is a 499, not a server error."""
    try:
        async for chunk in request.stream():
            yield chunk
    except ClientDisconnect:
        raise ClientDisconnected from None


def media_type(request: Request) -> str:
    return request.headers.get("content-type", JSON_MEDIA_TYPE).split(";")[0].strip().lower()


def check_media_type(kind: str) -> None:
    if kind not in (JSON_MEDIA_TYPE, SAFETENSORS_MEDIA_TYPE):
        raise WireError(f"unsupported content type {kind!r}; expected {JSON_MEDIA_TYPE} or "
                        f"{SAFETENSORS_MEDIA_TYPE}", "content-type",
                        ErrorCode.UNSUPPORTED_MEDIA_TYPE)


def decode(kind: str, body: memoryview | bytearray, schema: type[M]
           ) -> tuple[M, dict[str, TensorView] | None]:
    """JSON → (request, None); safetensors → (request from metadata, tensors by name)."""
    check_media_type(kind)
    if kind == JSON_MEDIA_TYPE:
        if not body:
            raise WireError("empty body; expected a JSON object", "body", ErrorCode.MALFORMED_BODY)
        return schema.model_validate_json(bytes(body)), None  # pydantic takes no views
    metadata, tensors = decode_safetensors(body)
    if SAFETENSORS_REQUEST_KEY not in metadata:
        raise WireError(f"safetensors __metadata__ lacks the {SAFETENSORS_REQUEST_KEY!r} "
                        "entry holding the request JSON", "body", ErrorCode.MALFORMED_BODY)
    return schema.model_validate_json(metadata[SAFETENSORS_REQUEST_KEY]), tensors


async def read_request(request: Request, schema: type[M], limit: int
                       ) -> tuple[M, dict[str, TensorView] | None, int]:
    """Read and decode a request; returns the body size too, for metrics."""
    kind = media_type(request)
    check_media_type(kind)  # 415 before reading a byte
    body = await read_body(request, limit)
    if len(body) <= INLINE_DECODE_BYTES:
        parsed, tensors = decode(kind, body, schema)
    else:
        parsed, tensors = await asyncio.to_thread(decode, kind, body, schema)
    return parsed, tensors, len(body)


async def read_checkpoint(request: Request, limit: int) -> dict[str, TensorView]:
    """A checkpoint upload (`PUT /v1/runs/{id}/checkpoint`): a safetensors file as
    `GET .../checkpoint` serves it, its tensors as views into the body."""
    kind = media_type(request)
    if kind != CHECKPOINT_MEDIA_TYPE:
        raise WireError(f"unsupported content type {kind!r}; a checkpoint is "
                        f"{CHECKPOINT_MEDIA_TYPE} (a safetensors file)", "content-type",
                        ErrorCode.UNSUPPORTED_MEDIA_TYPE)
    body = await read_body(request, limit)
    _, tensors = await asyncio.to_thread(decode_safetensors, body)
    return tensors


class AnswerTensors(TensorSink):
    """The vectors of one answer: named tensors of a safetensors answer (`__metadata__.response`
    holds the answer JSON) when the request's Accept names the safetensors media type, else
    inline base64 in a JSON answer (the default: any HTTP client reads it). Binary saves the
    base64's third and the JSON's float formatting; split mode's client asks for it."""

    def __init__(self, request: Request) -> None:
        super().__init__(SAFETENSORS_MEDIA_TYPE in request.headers.get("accept", "").lower())

    def response(self, answer: BaseModel) -> Response:
        payload = answer.model_dump_json(exclude_none=True)
        if not self.binary:
            return Response(payload, media_type=JSON_MEDIA_TYPE)
        parts = self.safetensors(payload, SAFETENSORS_RESPONSE_KEY)
        return Response(b"".join(parts), media_type=SAFETENSORS_MEDIA_TYPE)
