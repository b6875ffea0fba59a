"""The r2m wire contract: request/response schemas, tensor codecs and error shapes.

Client and service both import this package, so every schema and constant exists exactly once.
It depends on pydantic only (no numpy, no torch) so that it installs anywhere.
"""

from r2m_proto.errors import ErrorBody, ErrorCode, ErrorDetail, WireError
from r2m_proto.media import (
    IDEMPOTENCY_KEY_HEADER,
    JSON_MEDIA_TYPE,
    REQUEST_ID_HEADER,
    SAFETENSORS_MEDIA_TYPE,
    SAFETENSORS_REQUEST_KEY,
)
from r2m_proto.safetensors_body import decode_safetensors, encode_safetensors
from r2m_proto.schemas import (
    CreateRunRequest,
    InfoResponse,
    RunConfig,
    RunInfo,
    ScoreItem,
    ScoreRequest,
    ScoreResponse,
    UpdateGroup,
    UpdatePair,
    UpdateRequest,
    UpdateResponse,
)
from r2m_proto.tensors import DTYPES, TensorView, WireTensor

__all__ = [
    "DTYPES",
    "IDEMPOTENCY_KEY_HEADER",
    "JSON_MEDIA_TYPE",
    "REQUEST_ID_HEADER",
    "SAFETENSORS_MEDIA_TYPE",
    "SAFETENSORS_REQUEST_KEY",
    "CreateRunRequest",
    "ErrorBody",
    "ErrorCode",
    "ErrorDetail",
    "InfoResponse",
    "RunConfig",
    "RunInfo",
    "ScoreItem",
    "ScoreRequest",
    "ScoreResponse",
    "TensorView",
    "UpdateGroup",
    "UpdatePair",
    "UpdateRequest",
    "UpdateResponse",
    "WireError",
    "WireTensor",
    "decode_safetensors",
    "encode_safetensors",
]
