"""Both body formats carry the same request; every wire dtype is accepted; a big body reads the
same whether its length is declared or it comes chunked."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest
import torch

from r2m_client import R2MClient
from r2m_proto import SAFETENSORS_MEDIA_TYPE, encode_safetensors
from tests.conftest import Server
from tests.helpers import D_P, PROMPTS, RESPONSES, hidden, wire


@pytest.fixture
def run_id(llama_server: Server) -> str:
    with R2MClient(llama_server.url) as rm:
        return rm.create_run(policy_hidden_size=D_P, total_steps=10, seed=3).run_id


def test_json_and_binary_bodies_give_the_same_rewards(llama_server: Server, run_id: str) -> None:
    states = hidden([4, 2, 7, 3], D_P)
    with R2MClient(llama_server.url, binary=True) as binary, \
            R2MClient(llama_server.url, binary=False) as json_client:
        a = binary.score(run_id, PROMPTS, RESPONSES, states, step=5)
        b = json_client.score(run_id, PROMPTS, RESPONSES, states, step=5)
    assert a.rewards == b.rewards
    assert a.omega == b.omega < 1.0


@pytest.mark.parametrize("binary", [True, False])
def test_every_wire_dtype_is_accepted(llama_server: Server, run_id: str, binary: bool) -> None:
    # values exactly representable in bfloat16, so all three dtypes carry the same numbers
    states = [s.to(torch.bfloat16) for s in hidden([4, 2, 7, 3], D_P)]
    with R2MClient(llama_server.url, binary=binary) as rm:
        rewards = [rm.score(run_id, PROMPTS, RESPONSES, [s.to(dtype) for s in states],
                            step=5).rewards
                   for dtype in (torch.float32, torch.float16, torch.bfloat16)]
    assert rewards[0] == rewards[1] == rewards[2]


def test_hand_built_safetensors_body(http: httpx.Client, run_id: str) -> None:
    """The binary format is plain safetensors: any writer works, not just our client."""
    state = hidden([3], D_P)[0]
    request = json.dumps({"run_id": run_id, "step": 5, "items": [
        {"prompt": "p", "response": "r", "hidden_states": "h0"}]})
    parts = encode_safetensors([("h0", "float32", (3, D_P), state.numpy().tobytes())],
                               {"request": request})
    answer = http.post("/v1/score", content=b"".join(parts),
                       headers={"content-type": SAFETENSORS_MEDIA_TYPE})
    assert answer.status_code == 200, answer.text
    json_answer = http.post("/v1/score", json={"run_id": run_id, "step": 5, "items": [
        {"prompt": "p", "response": "r", "hidden_states": wire(state)}]})
    assert answer.json()["rewards"] == json_answer.json()["rewards"]


def test_items_without_hidden_states_get_the_backbone_reward(
        http: httpx.Client, run_id: str) -> None:
    state = hidden([3], D_P)[0]
    mixed = http.post("/v1/score", json={"run_id": run_id, "step": 5, "items": [
        {"prompt": "p", "response": "r"},
        {"prompt": "p", "response": "r", "hidden_states": wire(state)}]}).json()
    vanilla = http.post("/v1/score", json={"run_id": run_id, "step": 0, "items": [
        {"prompt": "p", "response": "r"}]}).json()
    assert mixed["rewards"][0] == pytest.approx(vanilla["rewards"][0], abs=1e-6)
    assert mixed["rewards"][1] != pytest.approx(mixed["rewards"][0], abs=1e-6)


def _pieces(body: bytes, size: int) -> Iterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]


def test_a_big_body_reads_the_same_with_a_length_or_chunked(llama_server: Server) -> None:
    """A 24 MiB body read into an uninitialized buffer sized from its Content-Length, or grown
    from uneven chunks (no length): every byte is the body's, so the rewards are the same."""
    states = hidden([1536] * 4, 1024, seed=9)  # 4 × 1536 × 1024 float32 = 24 MiB
    with R2MClient(llama_server.url) as rm:
        run_id = rm.create_run(policy_hidden_size=1024, total_steps=10, seed=3).run_id
    request = json.dumps({"run_id": run_id, "step": 5, "items": [
        {"prompt": p, "response": r, "hidden_states": f"h{i}"}
        for i, (p, r) in enumerate(zip(PROMPTS, RESPONSES, strict=True))]})
    body = b"".join(encode_safetensors([(f"h{i}", "float32", tuple(s.shape), s.numpy().tobytes())
                                        for i, s in enumerate(states)], {"request": request}))
    rewards = []
    for content in (body, _pieces(body, 3_000_001)):
        answer = httpx.post(f"{llama_server.url}/v1/score", content=content, timeout=120,
                            headers={"content-type": SAFETENSORS_MEDIA_TYPE})
        assert answer.status_code == 200, answer.text
        rewards.append(answer.json()["rewards"])
    assert rewards[0] == rewards[1]
