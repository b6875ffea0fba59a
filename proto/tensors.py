"""Tensors on the wire, without numpy or torch: dtype table, the JSON form and a byte view.

JSON form: `{"dtype": "bfloat16", "shape": [S, D], "data": "<base64 of little-endian bytes>"}`.
Binary form: a tensor inside a safetensors body (see `safetensors_body`). Both decode to a
`TensorView`, which the service turns into a torch tensor without copying.
"""

from __future__ import annotations

import base64
import binascii
import math
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from r2m_proto.errors import ErrorCode, WireError

# wire dtype name -> (safetensors dtype code, bytes per element)
DTYPES: dict[str, tuple[str, int]] = {
    "float32": ("F32", 4),
    "float16": ("F16", 2),
    "bfloat16": ("BF16", 2),
}
SAFETENSORS_TO_DTYPE: dict[str, str] = {code: name for name, (code, _) in DTYPES.items()}


@dataclass(frozen=True)
class TensorView:
    """A tensor's dtype and shape over bytes it does not own (a slice of the request body)."""

    dtype: str
    shape: tuple[int, ...]
    data: memoryview

    @property
    def nbytes(self) -> int:
        return len(self.data)


class WireTensor(BaseModel):
    """A tensor inlined in a JSON body."""

    model_config = ConfigDict(extra="forbid", strict=True)  # as `schemas._Strict`

    dtype: str = Field(description="One of float32, float16, bfloat16.", examples=["bfloat16"])
    shape: list[int] = Field(description="Tensor shape, e.g. [S, D_p].", examples=[[128, 768]])
    data: str = Field(description="Base64 of the raw little-endian bytes, row-major.")

    def view(self, field: str) -> TensorView:
        """Decode the base64 payload; errors name `field`."""
        try:
            raw = bytearray(base64.b64decode(self.data, validate=True))
        except (binascii.Error, ValueError) as exc:
            raise WireError(f"data is not valid base64: {exc}", f"{field}.data") from exc
        return make_view(self.dtype, tuple(self.shape), memoryview(raw), field)


def make_view(dtype: str, shape: tuple[int, ...], data: memoryview, field: str) -> TensorView:
    """Check dtype, shape and byte count agree, then wrap them."""
    if dtype not in DTYPES:
        raise WireError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}",
                        f"{field}.dtype")
    if any(not isinstance(d, int) or d < 0 for d in shape):
        raise WireError(f"shape must be non-negative integers, got {list(shape)}", f"{field}.shape")
    expected = math.prod(shape) * DTYPES[dtype][1]
    if len(data) != expected:
        raise WireError(
            f"{len(data)} bytes do not match dtype {dtype} with shape {list(shape)} "
            f"(expected {expected} bytes)", field)
    return TensorView(dtype=dtype, shape=shape, data=data)


def encode_wire_tensor(dtype: str, shape: tuple[int, ...], data: bytes | memoryview) -> WireTensor:
    """Build the JSON form from raw little-endian bytes."""
    if dtype not in DTYPES:
        raise WireError(f"unknown dtype {dtype!r}; expected one of {sorted(DTYPES)}",
                        code=ErrorCode.INVALID_REQUEST)
    return WireTensor(dtype=dtype, shape=list(shape), data=base64.b64encode(data).decode("ascii"))
