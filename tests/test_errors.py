"""Bad input gets a clear 4xx naming the field; the server keeps serving; the run is untouched."""

from __future__ import annotations

import base64
import struct
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import torch

from r2m_proto import SAFETENSORS_MEDIA_TYPE, encode_safetensors
from tests.conftest import Server
from tests.helpers import D_P, hidden, wire


@pytest.fixture(scope="module")
def run_id(llama_server: Server) -> str:
    return httpx.post(f"{llama_server.url}/v1/runs", json={
        "policy_hidden_size": D_P, "total_steps": 10, "learning_rate": 1e-2}).json()["run_id"]


def item(state: dict[str, Any] | str | None = None, response: str = "r") -> dict[str, Any]:
    out: dict[str, Any] = {"prompt": "p", "response": response}
    if state is not None:
        out["hidden_states"] = state
    return out


def good_state() -> dict[str, Any]:
    return wire(hidden([3], D_P)[0])


def group(k: int = 3, n_states: int | None = None, **extra: Any) -> dict[str, Any]:
    return {"prompt": "p", "responses": [f"r{i}" for i in range(k)],
            "hidden_states": [good_state() for _ in range(k if n_states is None else n_states)],
            **extra}


def binary(request: str, tensors: list[tuple[str, torch.Tensor]]) -> bytes:
    parts = encode_safetensors([(n, "float32", tuple(t.shape), t.numpy().tobytes())
                                for n, t in tensors], {"request": request})
    return b"".join(parts)


Body = Callable[[str], dict[str, Any]]
# (name, route, JSON body builder, status, code, field)
JSON_CASES: list[tuple[str, str, Body, int, str, str | None]] = [
    ("wrong hidden size", "/v1/score",
     lambda r: {"run_id": r, "items": [item(wire(torch.zeros(3, D_P + 1)))]},
     422, "invalid_request", "items[0].hidden_states"),
    ("wrong rank", "/v1/score",
     lambda r: {"run_id": r, "items": [item(wire(torch.zeros(D_P)))]},
     422, "invalid_request", "items[0].hidden_states"),
    ("zero tokens", "/v1/score",
     lambda r: {"run_id": r, "items": [item(wire(torch.zeros(0, D_P)))]},
     422, "invalid_request", "items[0].hidden_states"),
    ("NaN", "/v1/score",
     lambda r: {"run_id": r, "items": [item(wire(torch.full((2, D_P), float("nan"))))]},
     422, "invalid_request", "items[0].hidden_states"),
    ("Inf", "/v1/score",
     lambda r: {"run_id": r, "items": [item(), item(wire(torch.full((2, D_P), float("inf"))))]},
     422, "invalid_request", "items[1].hidden_states"),
    ("unknown dtype", "/v1/score",
     lambda r: {"run_id": r, "items": [item({**good_state(), "dtype": "int8"})]},
     422, "invalid_request", "items[0].hidden_states.dtype"),
    ("byte count vs shape", "/v1/score",
     lambda r: {"run_id": r, "items": [item({**good_state(), "shape": [4, D_P]})]},
     422, "invalid_request", "items[0].hidden_states"),
    ("bad base64", "/v1/score",
     lambda r: {"run_id": r, "items": [item({**good_state(), "data": "@@not-base64@@"})]},
     422, "invalid_request", "items[0].hidden_states.data"),
    ("tensor name in a JSON body", "/v1/score",
     lambda r: {"run_id": r, "items": [item("h0")]},
     422, "invalid_request", "items[0].hidden_states"),
    ("empty batch", "/v1/score", lambda r: {"run_id": r, "items": []},
     422, "invalid_request", "items"),
    ("missing field", "/v1/score", lambda r: {"run_id": r},
     422, "invalid_request", "items"),
    ("unknown field", "/v1/score", lambda r: {"run_id": r, "items": [item()], "temperature": 1},
     422, "invalid_request", "temperature"),
    ("negative step", "/v1/score", lambda r: {"run_id": r, "step": -1, "items": [item()]},
     422, "invalid_request", "step"),
    ("unknown run", "/v1/score", lambda r: {"run_id": "run-nope", "items": [item()]},
     404, "run_not_found", "run_id"),
    ("response longer than max_length", "/v1/score",
     lambda r: {"run_id": r, "items": [item(response="word " * 200)]},
     422, "invalid_request", "items[0].response"),
    ("ragged K", "/v1/update", lambda r: {"run_id": r, "groups": [group(3, n_states=2)]},
     422, "invalid_request", "groups[0]"),
    ("K below 2", "/v1/update", lambda r: {"run_id": r, "groups": [group(1)]},
     422, "invalid_request", "groups[0].responses"),
    ("scores of the wrong length", "/v1/update",
     lambda r: {"run_id": r, "groups": [group(3, scores=[1.0, 2.0])]},
     422, "invalid_request", "groups[0]"),
    ("groups and pairs", "/v1/update",
     lambda r: {"run_id": r, "groups": [group()], "pairs": [{
         "prompt": "p", "chosen": "a", "rejected": "b", "chosen_hidden": good_state(),
         "rejected_hidden": good_state()}]},
     422, "invalid_request", None),
    ("neither groups nor pairs", "/v1/update", lambda r: {"run_id": r},
     422, "invalid_request", None),
    ("bad hidden state in a later group", "/v1/update",
     lambda r: {"run_id": r, "groups": [group(), {
         **group(), "hidden_states": [good_state(), wire(torch.zeros(2, 3)), good_state()]}]},
     422, "invalid_request", "groups[1].hidden_states[1]"),
    ("pair without a side", "/v1/update",
     lambda r: {"run_id": r, "pairs": [{"prompt": "p", "chosen": "a", "rejected": "b",
                                        "chosen_hidden": good_state()}]},
     422, "invalid_request", "pairs[0].rejected_hidden"),
    ("bad run config", "/v1/runs", lambda r: {"policy_hidden_size": 0, "total_steps": 10},
     422, "invalid_request", "policy_hidden_size"),
    ("omega floor above 1", "/v1/runs",
     lambda r: {"policy_hidden_size": 8, "total_steps": 10, "omega_floor": 1.5},
     422, "invalid_request", "omega_floor"),
]


def assert_error(answer: httpx.Response, status: int, code: str, field: str | None) -> None:
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["code"] == code and error["message"]
    if field is not None:
        assert error.get("field") == field, error


def assert_untouched(http: httpx.Client, run_id: str, checkpoint: bytes) -> None:
    assert http.get("/healthz").status_code == 200
    assert http.get(f"/v1/runs/{run_id}").json()["version"] == 0
    assert http.get(f"/v1/runs/{run_id}/checkpoint").content == checkpoint
    ok = http.post("/v1/score", json={"run_id": run_id, "items": [item(good_state())]})
    assert ok.status_code == 200


@pytest.mark.parametrize(("route", "body", "status", "code", "field"),
                         [case[1:] for case in JSON_CASES], ids=[case[0] for case in JSON_CASES])
def test_bad_json_input(http: httpx.Client, run_id: str, route: str, body: Body, status: int,
                        code: str, field: str | None) -> None:
    checkpoint = http.get(f"/v1/runs/{run_id}/checkpoint").content
    assert_error(http.post(route, json=body(run_id)), status, code, field)
    assert_untouched(http, run_id, checkpoint)


def _score_request(run_id: str, ref: str = "h0") -> str:
    return f'{{"run_id": "{run_id}", "items": [{{"prompt": "p", "response": "r", ' \
           f'"hidden_states": "{ref}"}}]}}'


RAW_CASES: list[tuple[str, Callable[[str], tuple[bytes, str]], int, str, str | None]] = [
    ("malformed JSON", lambda r: (b'{"run_id": ', "application/json"), 400, "malformed_body",
     "body"),
    ("empty JSON body", lambda r: (b"", "application/json"), 400, "malformed_body", "body"),
    ("unsupported content type", lambda r: (b"x", "text/plain"), 415, "unsupported_media_type",
     "content-type"),
    ("garbage safetensors", lambda r: (b"\x01\x02", SAFETENSORS_MEDIA_TYPE), 400,
     "malformed_body", "body"),
    ("safetensors header past the end",
     lambda r: (struct.pack("<Q", 10**6) + b"{}", SAFETENSORS_MEDIA_TYPE), 400, "malformed_body",
     "body"),
    ("safetensors without request metadata",
     lambda r: (b"".join(encode_safetensors([("h0", "float32", (1, D_P), bytes(4 * D_P))])),
                SAFETENSORS_MEDIA_TYPE), 400, "malformed_body", "body"),
    ("safetensors tensor name not in the body",
     lambda r: (binary(_score_request(r, "h9"), [("h0", torch.zeros(2, D_P))]),
                SAFETENSORS_MEDIA_TYPE), 422, "invalid_request", "items[0].hidden_states"),
    ("safetensors tensor not referenced",
     lambda r: (binary(_score_request(r), [("h0", torch.zeros(2, D_P)),
                                           ("h1", torch.zeros(2, D_P))]),
                SAFETENSORS_MEDIA_TYPE), 422, "invalid_request", "body"),
    ("safetensors with NaN",
     lambda r: (binary(_score_request(r), [("h0", torch.full((2, D_P), float("nan")))]),
                SAFETENSORS_MEDIA_TYPE), 422, "invalid_request", "items[0].hidden_states"),
    ("safetensors request JSON malformed",
     lambda r: (binary("{oops", [("h0", torch.zeros(2, D_P))]), SAFETENSORS_MEDIA_TYPE), 400,
     "malformed_body", "body"),
]


@pytest.mark.parametrize(("make", "status", "code", "field"), [c[1:] for c in RAW_CASES],
                         ids=[c[0] for c in RAW_CASES])
def test_bad_raw_body(http: httpx.Client, run_id: str, make: Callable[[str], tuple[bytes, str]],
                      status: int, code: str, field: str | None) -> None:
    checkpoint = http.get(f"/v1/runs/{run_id}/checkpoint").content
    content, media = make(run_id)
    answer = http.post("/v1/score", content=content, headers={"content-type": media})
    assert_error(answer, status, code, field)
    assert_untouched(http, run_id, checkpoint)


def test_unknown_dtype_in_safetensors(http: httpx.Client, run_id: str) -> None:
    header = (b'{"__metadata__": {"request": ' + _json_str(_score_request(run_id)) +
              b'}, "h0": {"dtype": "I64", "shape": [1, 2], "data_offsets": [0, 16]}}')
    body = struct.pack("<Q", len(header)) + header + bytes(16)
    answer = http.post("/v1/score", content=body, headers={"content-type": SAFETENSORS_MEDIA_TYPE})
    assert_error(answer, 422, "invalid_request", "tensors.h0.dtype")


def _json_str(text: str) -> bytes:
    import json

    return json.dumps(text).encode()


def test_too_large_body_is_413_with_the_limit(limits_server: Server) -> None:
    with httpx.Client(base_url=limits_server.url) as http:
        run = http.post("/v1/runs", json={"policy_hidden_size": D_P, "total_steps": 10}).json()
        big = wire(torch.zeros(2000, D_P))  # ~170 KB of base64 > 64 KiB limit
        answer = http.post("/v1/score", json={"run_id": run["run_id"], "items": [item(big)]})
        assert_error(answer, 413, "payload_too_large", "body")
        assert "65536" in answer.json()["error"]["message"]
        many = http.post("/v1/score", json={"run_id": run["run_id"],
                                            "items": [item() for _ in range(9)]})
        assert_error(many, 413, "payload_too_large", "items")
        assert http.post("/v1/score", json={"run_id": run["run_id"], "items": [item()]}
                         ).status_code == 200


def test_chunked_body_over_the_limit_is_413(limits_server: Server) -> None:
    def chunks():  # no Content-Length: the server must count as it reads
        for _ in range(100):
            yield base64.b64encode(bytes(3000))

    with httpx.Client(base_url=limits_server.url) as http:
        answer = http.post("/v1/score", content=chunks(),
                           headers={"content-type": "application/json"})
    assert_error(answer, 413, "payload_too_large", "body")
