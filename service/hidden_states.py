"""Wire tensors → torch tensors, zero-copy, with every check a client deserves a clear 4xx for."""

from __future__ import annotations

import warnings

import torch

from r2m_proto.schemas import TensorField
from r2m_proto.tensors import TensorView, WireTensor
from r2m_service.backbone import TORCH_DTYPES
from r2m_service.errors import InvalidInput


def to_torch(view: TensorView) -> torch.Tensor:
    """View the bytes as a tensor without copying (the buffer is the request body)."""
    if view.nbytes == 0:
        return torch.empty(view.shape, dtype=TORCH_DTYPES[view.dtype])
    with warnings.catch_warnings():  # read-only buffers warn; the tensor is never written
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(view.data, dtype=TORCH_DTYPES[view.dtype])
    return flat.view(view.shape)


class HiddenStateResolver:
    """Resolves each hidden-state field of a request to a checked `[S, D_p]` tensor.

    JSON bodies inline tensors; binary bodies name tensors of the safetensors body. Each body
    tensor must be used exactly once, so a client's naming bug is an error, not a silent drop.
    """

    def __init__(self, policy_hidden_size: int, body_tensors: dict[str, TensorView] | None) -> None:
        self.policy_hidden_size = policy_hidden_size
        self._body = body_tensors
        self._used: set[str] = set()

    def resolve(self, value: TensorField, field: str) -> torch.Tensor:
        view = self._view(value, field)
        if len(view.shape) != 2:
            raise InvalidInput(f"expected a rank-2 tensor [S, D_p={self.policy_hidden_size}], got "
                            f"shape {list(view.shape)}", field)
        length, width = view.shape
        if width != self.policy_hidden_size:
            raise InvalidInput(f"expected hidden size D_p={self.policy_hidden_size} (the run's "
                            f"policy_hidden_size), got shape {list(view.shape)}", field)
        if length == 0:
            raise InvalidInput("expected at least one token (S ≥ 1), got S = 0", field)
        tensor = to_torch(view)
        if not _all_finite(tensor):
            raise InvalidInput("hidden states contain NaN or Inf", field)
        return tensor

    def resolve_vector(self, value: TensorField, field: str) -> torch.Tensor:
        """A checked `[D_p]` vector (split mode's contexts and query gradients)."""
        view = self._view(value, field)
        if view.shape != (self.policy_hidden_size,):
            raise InvalidInput(f"expected a vector [D_p={self.policy_hidden_size}], got shape "
                               f"{list(view.shape)}", field)
        tensor = to_torch(view)
        if not _all_finite(tensor):
            raise InvalidInput("vector contains NaN or Inf", field)
        return tensor

    def check_all_used(self) -> None:
        unused = sorted(set(self._body or ()) - self._used)
        if unused:
            raise InvalidInput(f"body tensors not referenced by the request: {unused[:5]}", "body")

    def _view(self, value: TensorField, field: str) -> TensorView:
        if isinstance(value, WireTensor):
            return value.view(field)
        if self._body is None:
            raise InvalidInput("tensor names refer to a safetensors body; in a JSON body give "
                            "{dtype, shape, data}", field)
        if value not in self._body:
            raise InvalidInput(f"no tensor named {value!r} in the body", field)
        if value in self._used:
            raise InvalidInput(f"tensor {value!r} is referenced twice", field)
        self._used.add(value)
        return self._body[value]


def _all_finite(tensor: torch.Tensor) -> bool:
    """Exact and ~10× faster than `isfinite(t).all()` on large tensors: NaN propagates into
    aminmax and ±Inf lands on an extreme, so checking the two extremes is enough."""
    low, high = torch.aminmax(tensor)
    return bool(torch.isfinite(low) & torch.isfinite(high))
