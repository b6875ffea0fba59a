"""The thin r2m client: score and update a run's reward model from any RL trainer.

Installs with numpy, httpx, pydantic and `r2m_proto` only; torch tensors are accepted but torch
is never imported here (the Hugging Face helpers live in `r2m_client.hf`).
"""

from r2m_client._async import AsyncR2MClient
from r2m_client._core import DEFAULT_BASE_URL, DEFAULT_MAX_REQUEST_BYTES
from r2m_client._retry import RetryPolicy
from r2m_client._sync import R2MClient
from r2m_client.errors import (
    R2MClientError,
    R2MError,
    R2MInputError,
    R2MOverloadedError,
    R2MProtocolError,
    R2MServerError,
    R2MStatusError,
    R2MTransportError,
    RunNotFoundError,
)
from r2m_client.types import Group, Pair, RunOptions
from r2m_proto import InfoResponse, RunConfig, RunInfo, ScoreResponse, UpdateResponse

__all__ = [
    "DEFAULT_BASE_URL",
    "DEFAULT_MAX_REQUEST_BYTES",
    "AsyncR2MClient",
    "Group",
    "InfoResponse",
    "Pair",
    "R2MClient",
    "R2MClientError",
    "R2MError",
    "R2MInputError",
    "R2MOverloadedError",
    "R2MProtocolError",
    "R2MServerError",
    "R2MStatusError",
    "R2MTransportError",
    "RetryPolicy",
    "RunConfig",
    "RunInfo",
    "RunNotFoundError",
    "RunOptions",
    "ScoreResponse",
    "UpdateResponse",
]
