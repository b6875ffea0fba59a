"""Split mode: the hidden states stay with the trainer, and the results are those of full mode —
rewards to float rounding, and after many updates the same weights (including W_q and W_k,
whose gradients reach the server only through ∂L/∂u)."""

from __future__ import annotations

import base64
import math

import httpx
import pytest
import torch
from safetensors.torch import load as load_safetensors

from r2m_client import Group, Pair, R2MClient
from r2m_client._split import split_score
from r2m_client.errors import R2MStatusError
from r2m_service.r2m_module import TRAINABLE_TENSORS
from tests.conftest import Server
from tests.helpers import D_P, PROMPTS, RESPONSES, hidden, wire

LENGTHS = [5, 1, 17, 3]


def _runs(rm: R2MClient, count: int, **settings: object) -> list[str]:
    """Runs with identical modules (one seed), so full and split mode start from the same."""
    return [rm.create_run(policy_hidden_size=D_P, total_steps=20, attention_dim=8, seed=11,
                          **settings).run_id for _ in range(count)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_split_rewards_equal_full_mode(llama_server: Server, dtype: torch.dtype) -> None:
    states = hidden(LENGTHS, D_P, seed=3, dtype=dtype)
    with R2MClient(llama_server.url) as rm:
        for run_id in _runs(rm, 2):
            rm.update(run_id, groups=[Group(PROMPTS[0], RESPONSES, hidden(LENGTHS, D_P))],
                      step=1)  # move every tensor off its initial value
            full = rm.score(run_id, PROMPTS, RESPONSES, states, step=4)
            split = rm.score(run_id, PROMPTS, RESPONSES, states, step=4, split=True)
            assert (split.version, split.step, split.omega) == (full.version, full.step,
                                                                full.omega)
            assert split.rewards == pytest.approx(full.rewards, rel=1e-5, abs=1e-6)


def test_ten_split_updates_give_the_weights_of_ten_full_updates(llama_server: Server) -> None:
    with R2MClient(llama_server.url) as rm:
        full_run, split_run = _runs(rm, 2, learning_rate=1e-3)
        for step in range(10):
            groups = [Group(PROMPTS[k % 4], RESPONSES, hidden(LENGTHS, D_P, seed=10 * step + k),
                            scores=None if k else [0.1, 0.4, -0.2, 0.3]) for k in range(2)]
            pairs = [Pair(PROMPTS[1], RESPONSES[1], RESPONSES[2], *hidden([4, 6], D_P, seed=step))]
            kind = {"pairs": pairs} if step % 3 == 2 else {"groups": groups}
            full = rm.update(full_run, step=step, **kind)
            split = rm.update(split_run, step=step, split=True, **kind)
            assert split.version == full.version == step + 1
            assert split.loss == pytest.approx(full.loss, rel=1e-5, abs=1e-6)
        full_weights = load_safetensors(rm.checkpoint(full_run))
        split_weights = load_safetensors(rm.checkpoint(split_run))
    for name in TRAINABLE_TENSORS:  # relative to the tensor's scale: Adam divides by √v, so
        # rounding in a near-zero gradient element moves that element by a fraction of the lr
        scale = full_weights[name].abs().max()
        assert (split_weights[name] - full_weights[name]).abs().max() <= 1e-5 * scale, name
    # and the attention's query side really trained (its gradient is the split-only path)
    with R2MClient(llama_server.url) as rm:
        fresh = load_safetensors(rm.checkpoint(_runs(rm, 1, learning_rate=1e-3)[0]))
    for name in ("q_proj.weight", "k_proj.weight"):
        assert not torch.equal(fresh[name], split_weights[name]), name


def test_a_version_conflict_between_phases_restarts_from_the_query(
        llama_server: Server) -> None:
    states = hidden(LENGTHS, D_P, seed=5)
    with R2MClient(llama_server.url) as rm:
        (run_id,) = _runs(rm, 1, learning_rate=1e-2)
        protocol = split_score(run_id, PROMPTS, RESPONSES, states, step=3, min_version=None,
                               binary=True)
        first_query = rm._run(next(protocol))
        score_call = protocol.send(first_query)  # contexts computed at version 0
        rm.update(run_id, groups=[Group(PROMPTS[0], RESPONSES, states)], step=2)  # → version 1
        with pytest.raises(R2MStatusError) as conflict:
            rm._run(score_call)
        assert conflict.value.status_code == 409 and conflict.value.field == "version"
        second_query_call = protocol.throw(conflict.value)  # the protocol starts again
        second_query = rm._run(second_query_call)
        assert (first_query.version, second_query.version) == (0, 1)
        with pytest.raises(StopIteration) as done:
            protocol.send(rm._run(protocol.send(second_query)))
        result = done.value.value
        expected = rm.score(run_id, PROMPTS, RESPONSES, states, step=3)
    assert result.version == 1
    assert result.rewards == pytest.approx(expected.rewards, rel=1e-5, abs=1e-6)


def _vector(values: torch.Tensor) -> dict[str, object]:
    return wire(values.to(torch.float32))


@pytest.mark.parametrize(("route", "mutate", "status", "field"), [
    ("score", lambda body: body["items"][0].update(context=_vector(torch.zeros(D_P + 1))), 422,
     "items[0].context"),
    ("score", lambda body: body["items"][1].update(context=_vector(torch.full((D_P,), math.nan))),
     422, "items[1].context"),
    ("score", lambda body: body.update(version=body["version"] + 5), 409, "version"),
    ("update", lambda body: body["query_grads"].pop(), 422, "query_grads"),
    ("update", lambda body: body["query_grads"][2].update(
        shape=[1, D_P]), 422, "query_grads[2]"),
    ("update", lambda body: body.update(version=body["version"] - 1), 409, "version"),
    ("gradient", lambda body: body["groups"][0]["contexts"][0].update(
        data=base64.b64encode(b"\0" * 3).decode()), 422, "groups[0].contexts[0]"),
])
def test_bad_phase_inputs_are_refused_and_change_nothing(
        http: httpx.Client, route: str, mutate: object, status: int, field: str) -> None:
    run_id = http.post("/v1/runs", json={"policy_hidden_size": D_P, "total_steps": 10}).json()[
        "run_id"]
    http.post("/v1/update", json={"run_id": run_id, "groups": [{
        "prompt": "p", "responses": ["a", "b"],
        "hidden_states": [wire(h) for h in hidden([2, 3], D_P)]}]})  # version 1
    items = [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    query = http.post("/v1/split/query", json={"run_id": run_id, "items": items}).json()
    contexts = [_vector(torch.randn(D_P)) for _ in items]
    if route == "score":
        body = {"run_id": run_id, "version": query["version"],
                "items": [{**item, "context": c} for item, c in zip(items, contexts, strict=True)]}
    else:
        body = {"run_id": run_id, "version": query["version"], "groups": [{
            "prompt": PROMPTS[0], "responses": RESPONSES, "contexts": contexts}]}
        if route == "update":
            body["query_grads"] = [_vector(torch.randn(D_P)) for _ in items]
    mutate(body)  # type: ignore[operator]
    before = http.get(f"/v1/runs/{run_id}").json()
    answer = http.post(f"/v1/split/{route}", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["field"] == field
    assert http.get(f"/v1/runs/{run_id}").json()["version"] == before["version"] == 1


def _queries_served(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("r2m_request_duration_seconds_count")
               and 'route="/v1/split/query"' in line)


def test_an_update_reuses_the_scores_queries_until_the_version_moves(
        llama_server: Server) -> None:
    states = hidden(LENGTHS, D_P, seed=8)
    group = Group(PROMPTS[2], RESPONSES, states)
    with R2MClient(llama_server.url) as rm, R2MClient(llama_server.url) as other:
        (run_id,) = _runs(rm, 1, learning_rate=1e-3)
        start = _queries_served(llama_server.url)
        rm.score(run_id, [PROMPTS[2]] * 4, RESPONSES, states, step=3, split=True)
        first = rm.update(run_id, groups=[group], step=3, split=True)
        assert _queries_served(llama_server.url) - start == 1  # the score's query served both
        rm.score(run_id, [PROMPTS[2]] * 4, RESPONSES, states, step=4, split=True)
        other.update(run_id, groups=[group], step=4)  # another trainer moves the run on
        second = rm.update(run_id, groups=[group], step=4, split=True)
        assert _queries_served(llama_server.url) - start == 3  # stale: asked again once
    assert (first.version, second.version) == (1, 3)
