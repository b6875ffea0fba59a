"""Online updates: what changes, what does not, versions, idempotency, checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load as load_safetensors

from r2m_client import Group, Pair, R2MClient, RunNotFoundError
from r2m_proto import IDEMPOTENCY_KEY_HEADER, decode_safetensors
from r2m_service.backbone import Backbone
from r2m_service.r2m_module import TRAINABLE_TENSORS, omega
from r2m_service.text_format import TextPair
from tests.conftest import Server
from tests.helpers import D_P, PROMPTS, RESPONSES, hidden, wire

D_RM = 32  # the tiny Llama's hidden size


@pytest.fixture(scope="module")
def backbone(llama_rm_dir: Path) -> Backbone:
    """The same backbone, in-process, to compute expected values independently."""
    return Backbone(str(llama_rm_dir), max_length=64)


def rtes(backbone: Backbone, prompts: list[str], responses: list[str]) -> torch.Tensor:
    pairs = [TextPair(p, r, f"items[{i}]")
             for i, (p, r) in enumerate(zip(prompts, responses, strict=True))]
    return backbone.embed(backbone.formatter.encode(pairs)).rtes


def group(seed: int = 0) -> Group:
    return Group(prompt=PROMPTS[0], responses=RESPONSES, hidden_states=hidden([4, 2, 7, 3], D_P,
                                                                               seed=seed))


def test_checkpoint_names_shapes_and_metadata(llama_server: Server) -> None:
    with R2MClient(llama_server.url) as rm:
        run = rm.create_run(policy_hidden_size=D_P, total_steps=10, attention_dim=8)
        raw = rm.checkpoint(run.run_id)
    tensors = load_safetensors(raw)
    shapes = {name: tuple(t.shape) for name, t in tensors.items()}
    assert shapes == {"q_proj.weight": (8, D_RM), "k_proj.weight": (8, D_P),
                      "v_proj.weight": (8, D_P), "o_proj.weight": (D_RM, 8),
                      "score.weight": (1, D_RM), "score.bias": (1,)}
    metadata, _ = decode_safetensors(bytearray(raw))
    assert metadata["version"] == "0" and metadata["step"] == "0"
    assert '"attention_dim":8' in metadata["config"]


def test_update_trains_only_the_module_and_lowers_the_loss(
        llama_server: Server, backbone: Backbone) -> None:
    with R2MClient(llama_server.url) as rm:
        run = rm.create_run(policy_hidden_size=D_P, total_steps=10, learning_rate=1e-2, seed=7)
        before = load_safetensors(rm.checkpoint(run.run_id))
        vanilla_before = rm.score(run.run_id, PROMPTS, RESPONSES, step=0).rewards
        answers = [rm.update(run.run_id, groups=[group()], step=5) for _ in range(5)]
        after = load_safetensors(rm.checkpoint(run.run_id))
        vanilla_after = rm.score(run.run_id, PROMPTS, RESPONSES, step=0).rewards
        info = rm.get_run(run.run_id)

    assert [a.version for a in answers] == [1, 2, 3, 4, 5]
    assert info.version == 5 and info.step == 6
    assert answers[-1].loss < answers[0].loss
    assert all(a.omega == omega(5, 10, 0.6) and a.gre_loss is not None for a in answers)
    for name in TRAINABLE_TENSORS:  # ϕ's bias has no gradient in any objective: never stepped
        moved = not torch.equal(before[name], after[name])
        assert moved == (name != "score.bias"), f"{name}: moved={moved}"
    # the backbone is unchanged: its RTEs, read through the old and new heads, give both rewards
    rte = rtes(backbone, PROMPTS, RESPONSES)
    for rewards, state in ((vanilla_before, before), (vanilla_after, after)):
        expected = rte @ state["score.weight"][0] + state["score.bias"][0]
        assert rewards == pytest.approx(expected.tolist(), abs=1e-5)


def test_served_reward_is_the_paper_formula(llama_server: Server, backbone: Backbone) -> None:
    """End to end: reward from the server == Eq. 3–4 evaluated on the checkpoint's tensors."""
    states = hidden([4, 2, 7, 3], D_P, seed=11)
    with R2MClient(llama_server.url) as rm:
        run = rm.create_run(policy_hidden_size=D_P, total_steps=10, attention_dim=8,
                            learning_rate=1e-3)
        rm.update(run.run_id, groups=[group(seed=2)], step=3)
        served = rm.score(run.run_id, PROMPTS, RESPONSES, states, step=7)
        w = load_safetensors(rm.checkpoint(run.run_id))
    rte = rtes(backbone, PROMPTS, RESPONSES)
    om = omega(7, 10, 0.6)
    expected = []
    for h_last, h in zip(rte, states, strict=True):
        q, k, v = w["q_proj.weight"] @ h_last, h @ w["k_proj.weight"].T, h @ w["v_proj.weight"].T
        h_hat = torch.softmax(k @ q / math.sqrt(8), dim=0) @ v @ w["o_proj.weight"].T
        h_fin = (1 - om) * h_hat + om * h_last
        expected.append(float(h_fin @ w["score.weight"][0] + w["score.bias"][0]))
    assert served.omega == om
    assert served.rewards == pytest.approx(expected, abs=1e-5)


def test_pairs_update_is_plain_bradley_terry(llama_server: Server) -> None:
    a, b = hidden([3, 5], D_P)
    with R2MClient(llama_server.url) as rm:
        run = rm.create_run(policy_hidden_size=D_P, total_steps=10, learning_rate=1e-2)
        before = rm.score(run.run_id, [PROMPTS[0]] * 2, RESPONSES[:2], [a, b], step=5).rewards
        answer = rm.update(run.run_id, pairs=[Pair(PROMPTS[0], RESPONSES[0], RESPONSES[1], a, b)],
                           step=5)
        after = rm.score(run.run_id, [PROMPTS[0]] * 2, RESPONSES[:2], [a, b], step=5).rewards
    assert answer.gre_loss is None and answer.loss == answer.bt_loss
    assert answer.bt_loss == pytest.approx(-math.log(1 / (1 + math.exp(before[1] - before[0]))),
                                           abs=1e-5)
    assert after[0] - after[1] > before[0] - before[1]  # the chosen side gained


def test_annotation_scores_choose_winner_and_loser(llama_server: Server) -> None:
    """With caller scores the BT term follows them, not the recomputed rewards."""
    g = group()
    with R2MClient(llama_server.url) as rm:
        run = rm.create_run(policy_hidden_size=D_P, total_steps=10)
        r = rm.score(run.run_id, [g.prompt] * 4, g.responses, g.hidden_states, step=5).rewards
        scores = [0.0, 0.0, 0.0, 0.0]
        scores[1], scores[2] = 1.0, -1.0  # winner 1, loser 2
        answer = rm.update(run.run_id, groups=[Group(g.prompt, g.responses, g.hidden_states,
                                                      scores)], step=5)
    assert answer.bt_loss == pytest.approx(-math.log(1 / (1 + math.exp(r[2] - r[1]))), abs=1e-5)


def test_idempotency_key_applies_an_update_once(http: httpx.Client) -> None:
    run = http.post("/v1/runs", json={"policy_hidden_size": D_P, "total_steps": 10,
                                      "learning_rate": 1e-2}).json()
    g = group()
    body = {"run_id": run["run_id"], "step": 5, "groups": [{
        "prompt": g.prompt, "responses": g.responses,
        "hidden_states": [wire(h) for h in g.hidden_states]}]}
    first = http.post("/v1/update", json=body, headers={IDEMPOTENCY_KEY_HEADER: "k-1"})
    weights = http.get(f"/v1/runs/{run['run_id']}/checkpoint").content
    retry = http.post("/v1/update", json=body, headers={IDEMPOTENCY_KEY_HEADER: "k-1"})
    assert first.status_code == retry.status_code == 200
    assert retry.json() == first.json() and first.json()["version"] == 1
    assert http.get(f"/v1/runs/{run['run_id']}/checkpoint").content == weights
    other = http.post("/v1/update", json=body, headers={IDEMPOTENCY_KEY_HEADER: "k-2"})
    assert other.json()["version"] == 2


def test_runs_are_isolated_and_deletable(llama_server: Server) -> None:
    states = hidden([4, 2, 7, 3], D_P)
    with R2MClient(llama_server.url) as rm:
        a = rm.create_run(policy_hidden_size=D_P, total_steps=10, learning_rate=1e-2, seed=1)
        b = rm.create_run(policy_hidden_size=D_P, total_steps=10, learning_rate=1e-2, seed=1)
        b_before = rm.score(b.run_id, PROMPTS, RESPONSES, states, step=5).rewards
        rm.update(a.run_id, groups=[group()], step=5)
        assert rm.score(b.run_id, PROMPTS, RESPONSES, states, step=5).rewards == b_before
        assert rm.score(a.run_id, PROMPTS, RESPONSES, states, step=5).rewards != b_before
        rm.delete_run(a.run_id)
        with pytest.raises(RunNotFoundError):
            rm.get_run(a.run_id)


def test_create_with_a_chosen_id_is_idempotent(http: httpx.Client) -> None:
    body = {"policy_hidden_size": D_P, "total_steps": 10, "run_id": "trainer-7.ppo_run"}
    first = http.post("/v1/runs", json=body)
    again = http.post("/v1/runs", json=body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    other = http.post("/v1/runs", json={**body, "total_steps": 99})
    assert other.status_code == 409 and other.json()["error"]["field"] == "run_id"
    assert other.json()["error"]["code"] == "run_exists"
    clipped = {**body, "run_id": "clipped", "max_grad_norm": 1.0}
    assert http.post("/v1/runs", json=clipped).status_code == 201
    unclipped = http.post("/v1/runs", json={**body, "run_id": "clipped"})  # None is a setting
    assert unclipped.status_code == 409, unclipped.text
    bad = http.post("/v1/runs", json={**body, "run_id": "no spaces/slashes"})
    assert bad.status_code == 422 and bad.json()["error"]["field"] == "run_id"
