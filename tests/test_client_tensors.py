"""Hidden states leave the caller bit-exact, in the wire dtype, and uncopied when possible."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from r2m_client._encode import score_chunks
from r2m_client._tensors import hidden_states_to_wire
from r2m_proto import SAFETENSORS_REQUEST_KEY, ScoreRequest, TensorView, decode_safetensors

TORCH_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
SPECIALS = [0.0, -0.0, 1.0, -2.5, float("inf"), float("-inf"), float("nan"), 1e-3, 65504.0]


def _numpy(dtype: str) -> np.ndarray:
    values = np.array(SPECIALS + list(np.random.default_rng(0).standard_normal(7)))
    return values.astype(dtype).reshape(4, 4)


def _torch(dtype: str) -> torch.Tensor:
    values = torch.tensor(SPECIALS + torch.randn(7, generator=torch.Generator().manual_seed(0))
                          .tolist())
    return values.to(TORCH_DTYPES[dtype]).reshape(4, 4)


CASES = [("numpy", "float32"), ("numpy", "float16"),
         ("torch", "float32"), ("torch", "float16"), ("torch", "bfloat16")]


def _make(kind: str, dtype: str) -> np.ndarray | torch.Tensor:
    return _numpy(dtype) if kind == "numpy" else _torch(dtype)


def _sent_view(x: np.ndarray | torch.Tensor, binary: bool) -> TensorView:
    """Encode one score item as the client would and decode it as the service would."""
    (chunk,) = score_chunks("run", ["p"], ["r"], [x], step=None, min_version=None, binary=binary,
                            max_bytes=1 << 20)
    raw = bytearray(b"".join(chunk.body.buffers))
    if binary:
        metadata, tensors = decode_safetensors(raw)
        request = ScoreRequest.model_validate_json(metadata[SAFETENSORS_REQUEST_KEY])
        return tensors[request.items[0].hidden_states]
    request = ScoreRequest.model_validate(json.loads(raw))
    return request.items[0].hidden_states.view("items.0.hidden_states")


def _bits(x: np.ndarray | torch.Tensor) -> bytes:
    if isinstance(x, np.ndarray):
        return x.astype(x.dtype.newbyteorder("<")).tobytes()
    return x.contiguous().view(torch.int16 if x.element_size() == 2 else torch.int32).numpy() \
        .tobytes()


@pytest.mark.parametrize("binary", [True, False], ids=["safetensors", "json"])
@pytest.mark.parametrize(("kind", "dtype"), CASES)
def test_round_trip_is_bit_exact(kind: str, dtype: str, binary: bool) -> None:
    x = _make(kind, dtype)
    view = _sent_view(x, binary)
    assert view.dtype == dtype
    assert view.shape == (4, 4)
    assert bytes(view.data) == _bits(x)
    rebuilt = torch.frombuffer(bytearray(view.data), dtype=TORCH_DTYPES[dtype]).reshape(view.shape)
    original = x if kind == "torch" else torch.from_numpy(x)
    assert torch.equal(rebuilt.view(torch.uint8), original.contiguous().view(torch.uint8))


def test_contiguous_little_endian_numpy_is_not_copied() -> None:
    x = np.ones((3, 5), dtype=np.float32)
    wire = hidden_states_to_wire(x, "h")
    assert np.shares_memory(np.frombuffer(wire.data, dtype=np.uint8), x)


def test_cpu_torch_tensor_is_not_copied() -> None:
    x = torch.ones(3, 5, dtype=torch.bfloat16)
    wire = hidden_states_to_wire(x, "h")
    x[0, 0] = 2.0
    assert bytes(wire.data[:2]) == torch.tensor([2.0], dtype=torch.bfloat16).view(torch.int16) \
        .numpy().tobytes()


def test_strided_and_big_endian_arrays_are_sent_as_row_major_little_endian() -> None:
    base = np.arange(12, dtype=np.float32).reshape(3, 4)
    for x in (base.T, base.astype(">f4"), base[:, ::2]):
        wire = hidden_states_to_wire(x, "h")
        assert wire.shape == x.shape
        assert bytes(wire.data) == np.ascontiguousarray(x, dtype="<f4").tobytes()
    t = torch.arange(12, dtype=torch.float32).reshape(3, 4).t()
    assert bytes(hidden_states_to_wire(t, "h").data) == t.contiguous().numpy().tobytes()


def test_tensor_that_requires_grad_is_detached() -> None:
    x = torch.ones(2, 3, requires_grad=True)
    assert hidden_states_to_wire(x * 2, "h").shape == (2, 3)


@pytest.mark.parametrize(("x", "hint"), [
    (np.zeros((2, 2), dtype=np.float64), "astype(numpy.float32)"),
    (np.zeros((2, 2), dtype=np.int64), "astype(numpy.float32)"),
    (torch.zeros(2, 2, dtype=torch.float64), "x.float()"),
    (torch.zeros(2, 2, dtype=torch.int32), "x.float()"),
])
def test_non_wire_dtypes_say_how_to_convert(x: object, hint: str) -> None:
    with pytest.raises(TypeError, match=r"items\.2\.hidden_states") as info:
        hidden_states_to_wire(x, "items.2.hidden_states")
    assert hint in str(info.value)


def test_non_arrays_are_refused() -> None:
    with pytest.raises(TypeError, match=r"numpy.ndarray or torch.Tensor, got builtins.list"):
        hidden_states_to_wire([[0.0, 1.0]], "h")


@pytest.mark.parametrize("shape", [(4,), (1, 4, 8), ()])
def test_hidden_states_must_be_2d(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"2-D \[seq_len, policy_hidden_size\]"):
        hidden_states_to_wire(np.zeros(shape, dtype=np.float32), "h")
    with pytest.raises(ValueError, match="2-D"):
        hidden_states_to_wire(torch.zeros(shape), "h")


def test_empty_sequence_is_a_valid_tensor() -> None:
    wire = hidden_states_to_wire(np.zeros((0, 8), dtype=np.float16), "h")
    assert (wire.dtype, wire.shape, wire.nbytes) == ("float16", (0, 8), 0)
