"""Policy hidden states (numpy arrays or torch tensors) as wire dtype, shape and raw bytes.

The bytes are a view of the caller's memory whenever it already is little-endian, C-contiguous and
on the CPU. One [2048, 8192] bf16 sample is 32 MiB, and a copy would cost a fresh allocation of
that size and a pass over every byte before the socket sees any of it. numpy has no bfloat16, so a
torch bf16 tensor travels as its 16-bit pattern. torch is never imported here: a tensor is
recognised by its type's module, and the torch it needs is the one that made the tensor.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np

from r2m_client.errors import R2MInputError
from r2m_proto.tensors import TensorView

if TYPE_CHECKING:
    import torch

    HiddenStates: TypeAlias = np.ndarray | torch.Tensor
else:
    HiddenStates: TypeAlias = Any

_NUMPY_DTYPES = {"float32": "float32", "float16": "float16"}
_TORCH_DTYPES = {"torch.float32": "float32", "torch.float16": "float16",
                 "torch.bfloat16": "bfloat16"}


def hidden_states_to_wire(x: HiddenStates, field: str) -> TensorView:
    """Check that `x` is a 2-D [S, D_p] float tensor and expose its little-endian bytes.

    `field` names the argument in error messages, in the caller's terms (`hidden_states[3]`).
    """
    if isinstance(x, np.ndarray):
        dtype = _check(field, _NUMPY_DTYPES.get(x.dtype.name), x.dtype.name, x.shape,
                       "x.astype(numpy.float32)")
        array = x
    elif type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        dtype = _check(field, _TORCH_DTYPES.get(str(x.dtype)), str(x.dtype), tuple(x.shape),
                       "x.float() or x.to(torch.bfloat16)")
        array = _torch_to_numpy(x, bf16=dtype == "bfloat16")
    else:
        raise TypeError(f"{field}: expected a numpy.ndarray or torch.Tensor, got "
                        f"{type(x).__module__}.{type(x).__qualname__}")
    little = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
    return TensorView(dtype=dtype, shape=tuple(little.shape),
                     data=memoryview(little.reshape(-1).view(np.uint8)))


def _check(field: str, dtype: str | None, got: str, shape: tuple[int, ...], convert: str) -> str:
    """The wire dtype; errors say how to convert, because the fix is always one call away."""
    if dtype is None:
        raise TypeError(f"{field}: dtype {got} is not a wire dtype (float32, float16, bfloat16); "
                        f"convert first, e.g. {convert}")
    if len(shape) != 2:
        raise R2MInputError("hidden states must be 2-D [seq_len, policy_hidden_size], got "
                            f"shape {list(shape)}", field=field)
    return dtype


def _torch_to_numpy(tensor: Any, *, bf16: bool) -> np.ndarray:
    """A CPU, contiguous numpy view of the tensor (copies only off-CPU or strided tensors)."""
    tensor = tensor.detach().cpu().contiguous()
    if bf16:
        tensor = tensor.view(sys.modules["torch"].int16)
    return tensor.numpy()
