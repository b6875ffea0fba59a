"""hypothesis against the body decoders: the safetensors parser, the JSON body and the JSON tensor
form. Whatever the bytes, a decoder answers with the wire's own errors (which the service maps to
400, 413 or 422; never a 500), and it allocates in proportion to the body it was given — never to
a size, shape or offset the body merely declares."""

from __future__ import annotations

import base64
import json
import struct
import tracemalloc
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from r2m_proto.errors import WireError
from r2m_proto.media import JSON_MEDIA_TYPE, SAFETENSORS_MEDIA_TYPE, SAFETENSORS_REQUEST_KEY
from r2m_proto.safetensors_body import decode_safetensors
from r2m_proto.schemas import ScoreRequest, UpdateRequest
from r2m_proto.tensors import DTYPES, WireTensor
from r2m_service.http.body import decode
from r2m_service.http.errors import STATUS_BY_CODE, validation_error_response

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
# Decoding parses JSON into Python objects, which take more room than their text (a dict entry
# of 10 bytes of text is ~100 bytes of objects): allocation may be a multiple of the body, never
# a function of what the body declares.
ALLOCATION_FACTOR = 64
ALLOCATION_SLACK = 256 * 1024

big = st.integers(min_value=2**31, max_value=2**64 - 1)
dims = st.one_of(st.integers(-4, 64), big)
dtype_codes = st.one_of(st.sampled_from([code for code, _ in DTYPES.values()]),
                        st.sampled_from(["F64", "I8", "U8", "BOOL", ""]), st.text(max_size=4))


def status_of(decoder: Callable[[], object]) -> int:
    """200 when the input decodes, else the status the service answers it with."""
    try:
        decoder()
    except WireError as exc:
        return STATUS_BY_CODE[exc.code]
    except ValidationError as exc:
        return validation_error_response(exc).status_code
    return 200


def peak_allocation(decoder: Callable[[], object]) -> int:
    tracemalloc.start()
    try:
        status_of(decoder)
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def assert_bounded(body: bytes | bytearray, decoder: Callable[[], object]) -> None:
    assert status_of(decoder) in (200, 400, 413, 422)
    assert peak_allocation(decoder) <= ALLOCATION_FACTOR * len(body) + ALLOCATION_SLACK


@st.composite
def safetensors_bodies(draw: st.DrawFn) -> bytes:
    """Mostly well-formed headers with hostile entries: wrong dtypes, huge or negative shapes,
    offsets overlapping or past the end, a lying header length, a truncated tail."""
    data_len = draw(st.integers(0, 256))
    header: dict[str, object] = {}
    for i in range(draw(st.integers(0, 4))):
        begin = draw(st.one_of(st.integers(-8, data_len + 8), big))
        header[f"t{i}"] = {
            "dtype": draw(dtype_codes),
            "shape": draw(st.one_of(st.lists(dims, max_size=4), st.just("x"), st.none())),
            "data_offsets": draw(st.one_of(
                st.tuples(st.just(begin), st.one_of(st.integers(-8, data_len + 8), big)).map(list),
                st.lists(st.integers(0, data_len), max_size=3), st.just(None)))}
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.one_of(
            st.dictionaries(st.text(max_size=8), st.text(max_size=16), max_size=3),
            st.just({SAFETENSORS_REQUEST_KEY: '{"run_id": "r", "items": []}'}),
            st.lists(st.integers(), max_size=2)))
    raw = json.dumps(header).encode()
    declared = draw(st.one_of(st.just(len(raw)), st.integers(0, len(raw) + 16), big))
    body = struct.pack("<Q", declared) + raw + draw(st.binary(min_size=data_len,
                                                               max_size=data_len))
    return body[:draw(st.integers(0, len(body)))] if draw(st.booleans()) else body


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_are_a_400(body: bytes) -> None:
    buffer = bytearray(body)
    assert_bounded(body, lambda: decode_safetensors(buffer))


@FUZZ
@given(safetensors_bodies())
def test_hostile_safetensors_headers_are_refused_cheaply(body: bytes) -> None:
    buffer = bytearray(body)
    assert_bounded(body, lambda: decode_safetensors(buffer))
    assert_bounded(body, lambda: decode(SAFETENSORS_MEDIA_TYPE, buffer, ScoreRequest))


@pytest.mark.parametrize("header", [b"[" * 100_000, b'{"a":' * 50_000, b'"\\ud800"'])
def test_pathological_headers_are_a_400(header: bytes) -> None:
    """Nesting deeper than the JSON parser's recursion limit once escaped as a RecursionError
    (a 500)."""
    body = bytearray(struct.pack("<Q", len(header)) + header)
    assert status_of(lambda: decode_safetensors(body)) == 400


@FUZZ
@given(st.dictionaries(st.sampled_from(["dtype", "shape", "data", "extra"]), st.one_of(
    st.sampled_from(list(DTYPES)), st.lists(dims, max_size=3), st.text(max_size=12),
    st.binary(max_size=48).map(lambda b: base64.b64encode(b).decode()), st.integers())))
def test_json_tensors_are_refused_with_a_422(fields: dict[str, object]) -> None:
    def view() -> object:
        return WireTensor.model_validate(fields).view("items[0].hidden_states")

    assert status_of(view) in (200, 422)
    assert peak_allocation(view) <= ALLOCATION_SLACK


@FUZZ
@given(st.one_of(
    st.binary(max_size=256),
    st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                 lambda inner: st.lists(inner, max_size=4)
                 | st.dictionaries(st.text(max_size=8), inner, max_size=4),
                 max_leaves=20).map(lambda v: json.dumps(v).encode())))
def test_json_bodies_are_a_400_or_422(body: bytes) -> None:
    buffer = bytearray(body)
    for schema in (ScoreRequest, UpdateRequest):
        assert_bounded(body, lambda s=schema: decode(JSON_MEDIA_TYPE, buffer, s))


def test_a_declared_huge_tensor_allocates_nothing() -> None:
    """A shape of 2^40 elements over 8 data bytes: refused by arithmetic, not by trying."""
    raw = json.dumps({"h": {"dtype": "F32", "shape": [2**20, 2**20],
                            "data_offsets": [0, 8]}}).encode()
    body = bytearray(struct.pack("<Q", len(raw)) + raw + bytes(8))
    assert status_of(lambda: decode_safetensors(body)) == 422
    assert peak_allocation(lambda: decode_safetensors(body)) <= ALLOCATION_SLACK
