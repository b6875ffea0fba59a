"""Wire tensors → torch tensors, zero-copy, with every check a client deserves a clear 4xx for."""

from __future__ import annotations

import math
import warnings

import torch

from r2m_proto.schemas import TensorField
from r2m_proto.tensors import TensorView, WireTensor
from r2m_service.backbone import TORCH_DTYPES
from r2m_service.errors import InvalidInput


def to_torch(view: TensorView) -> torch.Tensor:
    """View the bytes as a tensor without copying (the buffer is the request body)."""
    dtype = TORCH_DTYPES[view.dtype]
    if view.nbytes == 0:
        return torch.empty(view.shape, dtype=dtype)
    if not view.data.readonly:  # request bodies are writable: no warning filter (costs µs/item)
        return torch.frombuffer(view.data, dtype=dtype).view(view.shape)
    with warnings.catch_warnings():  # read-only buffers warn; the tensor is never written
        warnings.simplefilter("ignore", UserWarning)
        flat = torch.frombuffer(view.data, dtype=dtype)
    return flat.view(view.shape)


class HiddenStateResolver:
    """Resolves each hidden-state field of a request to a checked `[S, D_p]` tensor.

    JSON bodies inline tensors; binary bodies name tensors of the safetensors body. Each body
    tensor must be used exactly once, so a client's naming bug is an error, not a silent drop.
    Shapes are checked at once; NaN/Inf for all tensors together in `check_all_used`, which
    every caller runs before using any tensor (see `_first_non_finite` for why).
    """

    def __init__(self, policy_hidden_size: int, body_tensors: dict[str, TensorView] | None) -> None:
        self.policy_hidden_size = policy_hidden_size
        self._body = body_tensors
        self._used: set[str] = set()
        self._unchecked: list[tuple[torch.Tensor, str, str]] = []  # tensor, field, error

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
        self._unchecked.append((tensor, field, "hidden states contain NaN or Inf"))
        return tensor

    def resolve_vector(self, value: TensorField, field: str) -> torch.Tensor:
        """A checked `[D_p]` vector (split mode's contexts and query gradients)."""
        view = self._view(value, field)
        if view.shape != (self.policy_hidden_size,):
            raise InvalidInput(f"expected a vector [D_p={self.policy_hidden_size}], got shape "
                               f"{list(view.shape)}", field)
        tensor = to_torch(view)
        self._unchecked.append((tensor, field, "vector contains NaN or Inf"))
        return tensor

    def check_all_used(self) -> None:
        """Every tensor resolved so far is finite, and every body tensor was used."""
        bad = _first_non_finite(self._unchecked)
        self._unchecked = []
        if bad is not None:
            _, field, message = bad
            raise InvalidInput(message, field)
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


# Small tensors are checked for NaN/Inf together, up to this many bytes per concatenation; a
# tensor this large or larger is checked alone (its own reduction amortises the call, and copying
# it into a group would cost more than the check: 22 of 49 ms for a 64 MiB body).
_FINITE_CHECK_BYTES = 1 << 20


def _first_non_finite(tensors: list[tuple[torch.Tensor, str, str]]
                      ) -> tuple[torch.Tensor, str, str] | None:
    """The first entry whose tensor holds NaN or ±Inf, in request order, or None.

    Same-rank tensors are concatenated into groups of up to `_FINITE_CHECK_BYTES` and each group
    is checked with one reduction: every torch call releases and retakes the GIL, and with the
    model thread busy in Python that round trip cost ~60 µs per item, far more than the check
    itself (bench/RESULTS.md#overhead-per-item-issue-11). A group that fails is searched item
    by item.
    """
    start = 0
    while start < len(tensors):
        end, size = start, 0
        rank = tensors[start][0].dim()
        while (end < len(tensors) and tensors[end][0].dim() == rank
               and (end == start or size + tensors[end][0].nbytes <= _FINITE_CHECK_BYTES)):
            size += tensors[end][0].nbytes
            end += 1
        group = [t for t, _, _ in tensors[start:end]]
        if not _all_finite(group[0] if len(group) == 1 else torch.cat(group)):
            return next(entry for entry in tensors[start:end] if not _all_finite(entry[0]))
        start = end
    return None


def _all_finite(tensor: torch.Tensor) -> bool:
    """Exact and ~10× faster than `isfinite(t).all()` on large tensors: NaN propagates into
    aminmax and ±Inf lands on an extreme, so checking the two extremes is enough. The extremes
    are checked as Python floats: `torch.isfinite` on two scalars cost 15× the aminmax itself
    on small tensors (bench/overhead_per_item.py)."""
    low, high = torch.aminmax(tensor)
    return math.isfinite(low.item()) and math.isfinite(high.item())
