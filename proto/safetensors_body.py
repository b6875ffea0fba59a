"""The safetensors layout, written and read by hand so that neither side copies tensor bytes.

Layout: u64 little-endian header length N, N bytes of JSON header (padded with spaces to a multiple
of 8), then the raw tensor bytes. The header maps each tensor name to `{dtype, shape,
data_offsets: [begin, end]}` (offsets relative to the end of the header) and may hold a
`__metadata__` map of strings. Parsing the header by hand takes microseconds and the tensors stay
views into the receive buffer (docs/measurements.md#moving-hidden-states); the output is a
standard file `safetensors` reads.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence

from r2m_proto.errors import ErrorCode, WireError
from r2m_proto.tensors import DTYPES, SAFETENSORS_TO_DTYPE, TensorView, make_view

_HEADER_LEN = struct.Struct("<Q")
_MAX_HEADER_BYTES = 100 * 1024 * 1024


def encode_safetensors(
    tensors: Sequence[tuple[str, str, tuple[int, ...], memoryview | bytes]],
    metadata: Mapping[str, str] | None = None,
) -> list[memoryview | bytes]:
    """Return the body as a list of buffers (header first, then each tensor's bytes, uncopied).

    `tensors` holds `(name, wire dtype, shape, raw little-endian bytes)`.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    offset = 0
    for name, dtype, shape, data in tensors:
        if name == "__metadata__" or name in header:
            raise ValueError(f"duplicate or reserved tensor name {name!r}")
        size = len(memoryview(data).cast("B"))
        header[name] = {"dtype": DTYPES[dtype][0], "shape": list(shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    return [_HEADER_LEN.pack(len(raw)) + raw, *(data for _, _, _, data in tensors)]


def decode_safetensors(
    body: bytearray | memoryview,
) -> tuple[dict[str, str], dict[str, TensorView]]:
    """Parse a safetensors body; tensors are zero-copy views into `body`.

    Every malformation raises a `WireError` with code `malformed_body`, never an IndexError deep
    inside the service.
    """
    view = memoryview(body).cast("B")
    if len(view) < _HEADER_LEN.size:
        raise _malformed(f"body is {len(view)} bytes, shorter than the 8-byte header length")
    (header_len,) = _HEADER_LEN.unpack_from(view, 0)
    data_start = _HEADER_LEN.size + header_len
    if header_len > _MAX_HEADER_BYTES or data_start > len(view):
        raise _malformed(f"header length {header_len} exceeds the body ({len(view)} bytes)")
    try:
        header = json.loads(bytes(view[_HEADER_LEN.size:data_start]))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        # RecursionError: nesting deeper than the parser's stack (found by fuzzing: was a 500)
        raise _malformed(f"header is not valid JSON: {exc}") from exc
    if not isinstance(header, dict):
        raise _malformed("header must be a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise _malformed("__metadata__ must map strings to strings")
    data = view[data_start:]
    tensors: dict[str, TensorView] = {}
    for name, entry in header.items():
        tensors[name] = _tensor_entry(name, entry, data)
    return metadata, tensors


def _tensor_entry(name: str, entry: object, data: memoryview) -> TensorView:
    if not isinstance(entry, dict):
        raise _malformed(f"tensor {name!r}: header entry must be an object")
    code, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
    dtype = SAFETENSORS_TO_DTYPE.get(code) if isinstance(code, str) else None
    if dtype is None:
        raise WireError(
            f"tensor {name!r}: unsupported dtype {code!r}; expected one of "
            f"{sorted(SAFETENSORS_TO_DTYPE)} (float32, float16, bfloat16)", f"tensors.{name}.dtype")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise _malformed(f"tensor {name!r}: shape must be a list of non-negative integers")
    well_formed = (isinstance(offsets, list) and len(offsets) == 2
                   and all(isinstance(o, int) for o in offsets))
    if not (well_formed and 0 <= offsets[0] <= offsets[1] <= len(data)):
        raise _malformed(f"tensor {name!r}: data_offsets {offsets!r} fall outside the "
                         f"{len(data)} data bytes")
    return make_view(dtype, tuple(shape), data[offsets[0]:offsets[1]], f"tensors.{name}")


def _malformed(message: str) -> WireError:
    return WireError(message, "body", ErrorCode.MALFORMED_BODY)
