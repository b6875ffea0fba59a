"""The guards beyond the paper (service/guards.py, service/reward_diagnostics.py): `init=zero_o`,
separate and per-request learning rates, gradient clipping, and the per-run reward diagnostics
in `GET /v1/runs/{id}` and `/metrics`, each against values computed independently."""

from __future__ import annotations

import math
from pathlib import Path

import httpx
import pytest
import torch
from prometheus_client.parser import text_string_to_metric_families
from safetensors.torch import load as load_safetensors

from r2m_client import Group, R2MClient
from r2m_proto.schemas import RunSettings
from r2m_service.backbone import Backbone
from r2m_service.guards import build_optimizer, optimizer_step
from r2m_service.r2m_module import R2MModule, omega
from tests.conftest import Server
from tests.helpers import PROMPTS, RESPONSES, hidden
from tests.test_update import rtes

D_P = 16
ATTENTION = 8


@pytest.fixture(scope="module")
def backbone(llama_rm_dir: Path) -> Backbone:
    """The same backbone, in-process, to compute expected values independently."""
    return Backbone(str(llama_rm_dir), max_length=64)


def feedback_and_rte(w: dict[str, torch.Tensor], rte: torch.Tensor, states: list[torch.Tensor],
                     om: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 3–4 written out: (1 − ω)·w·Ĥ and ω·w·H_last + b per item."""
    feedback = []
    for h_last, h in zip(rte, states, strict=True):
        q, k, v = w["q_proj.weight"] @ h_last, h @ w["k_proj.weight"].T, h @ w["v_proj.weight"].T
        h_hat = torch.softmax(k @ q / math.sqrt(ATTENTION), dim=0) @ v @ w["o_proj.weight"].T
        feedback.append((1 - om) * float(h_hat @ w["score.weight"][0]))
    return (torch.tensor(feedback, dtype=torch.float64),
            (om * (rte @ w["score.weight"][0]) + w["score.bias"][0]).double())


def checkpoint(rm: R2MClient, run_id: str) -> dict[str, torch.Tensor]:
    return load_safetensors(rm.checkpoint(run_id))


def test_zero_o_serves_the_static_ranking_at_any_omega(llama_server: Server,
                                                       backbone: Backbone) -> None:
    states = hidden([4, 2, 7, 3], D_P, seed=3)
    with R2MClient(llama_server.url) as rm:
        run = rm.create_run(policy_hidden_size=D_P, total_steps=10, init="zero_o", seed=5)
        served = rm.score(run.run_id, PROMPTS, RESPONSES, states, step=7)
        w = checkpoint(rm, run.run_id)
        default = checkpoint(rm, rm.create_run(policy_hidden_size=D_P, total_steps=10,
                                               seed=5).run_id)
    assert run.config.init == "zero_o"
    assert torch.count_nonzero(w["o_proj.weight"]) == 0
    for name in ("q_proj.weight", "k_proj.weight", "v_proj.weight"):
        assert torch.equal(w[name], default[name]), "only W_o differs from the seed's default"
    rte = rtes(backbone, PROMPTS, RESPONSES)
    om = omega(7, 10, 0.6)
    expected = om * (rte @ w["score.weight"][0]) + w["score.bias"][0]
    assert served.rewards == pytest.approx(expected.tolist(), abs=1e-5)


def _max_change(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor],
                name: str) -> float:
    return float((after[name] - before[name]).abs().max())


def test_head_and_attention_learn_at_their_own_rates(llama_server: Server) -> None:
    """Adam's first step moves each trained element by lr·g/(|g| + ε) ≈ lr: the largest move
    of each tensor is its group's rate."""
    group = Group(PROMPTS[0], RESPONSES, hidden([4, 2, 7, 3], D_P, seed=1))
    with R2MClient(llama_server.url) as rm:
        run = rm.create_run(policy_hidden_size=D_P, total_steps=10, learning_rate=1e-3,
                            head_learning_rate=1e-2, attention_dim=ATTENTION, seed=2)
        before = checkpoint(rm, run.run_id)
        rm.update(run.run_id, groups=[group], step=5)
        after = checkpoint(rm, run.run_id)
    assert _max_change(before, after, "score.weight") == pytest.approx(1e-2, rel=1e-3)
    for name in ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"):
        assert _max_change(before, after, name) == pytest.approx(1e-3, rel=1e-3), name


def test_a_request_learning_rate_applies_to_that_step_only(llama_server: Server) -> None:
    group = Group(PROMPTS[0], RESPONSES, hidden([4, 2, 7, 3], D_P, seed=1))
    with R2MClient(llama_server.url) as rm:
        run = rm.create_run(policy_hidden_size=D_P, total_steps=10, learning_rate=1e-4,
                            head_learning_rate=1e-3, attention_dim=ATTENTION, seed=2)
        first = checkpoint(rm, run.run_id)
        rm.update(run.run_id, groups=[group], step=5, learning_rate=5e-2)
        second = checkpoint(rm, run.run_id)
        rm.update(run.run_id, groups=[group], step=5)
        third = checkpoint(rm, run.run_id)
        info = rm.get_run(run.run_id)
    for name in ("score.weight", "q_proj.weight", "o_proj.weight"):
        assert _max_change(first, second, name) == pytest.approx(5e-2, rel=1e-3), name
    # back at the run's rates: an Adam step moves an element by a few lr at most
    assert _max_change(second, third, "score.weight") < 5e-3
    assert _max_change(second, third, "q_proj.weight") < 5e-4
    assert (info.config.learning_rate, info.config.head_learning_rate) == (1e-4, 1e-3)


def test_max_grad_norm_clips_and_reports_the_norm_before_clipping() -> None:
    """In process, with SGD so that the clipped gradient shows one-to-one in the step."""
    torch.manual_seed(0)
    module = R2MModule(6, 5, 4)
    rte, states = torch.randn(3, 6), [torch.randn(n, 5) for n in (2, 4, 3)]
    module(rte, states, 0.5).pow(2).sum().backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    total = math.sqrt(sum(float(g.pow(2).sum()) for g in grads.values()))
    before = {name: p.detach().clone() for name, p in module.named_parameters()}
    reported = optimizer_step(torch.optim.SGD(module.parameters(), lr=1.0), module, 0.1, None)
    assert float(reported) == pytest.approx(total, rel=1e-5)
    for name, p in module.named_parameters():
        torch.testing.assert_close(before[name] - p.detach(), grads[name] * 0.1 / total)


def test_optimizer_groups_follow_the_settings() -> None:
    module = R2MModule(6, 5, 4)
    settings = RunSettings(policy_hidden_size=5, total_steps=3, learning_rate=1e-4,
                           head_learning_rate=3e-3, weight_decay=0.01)
    groups = build_optimizer(module, settings).param_groups
    assert [g["lr"] for g in groups] == [1e-4, 3e-3]
    assert {id(p) for p in groups[1]["params"]} == {id(module.score.weight)}
    assert all(p is not module.score.bias for g in groups for p in g["params"])
    assert all(g["weight_decay"] == 0.01 for g in groups)
    same = build_optimizer(module, settings.model_copy(update={"head_learning_rate": None}))
    assert [g["lr"] for g in same.param_groups] == [1e-4, 1e-4]


def _exported(url: str, run_id: str) -> dict[tuple[str, str], float]:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    return {(s.name, s.labels.get("branch") or s.labels.get("tensor") or ""): s.value
            for family in text_string_to_metric_families(text) for s in family.samples
            if s.name.startswith("r2m_run_") and s.labels.get("run") == run_id
            and s.name != "r2m_run_version"}


def test_diagnostics_split_the_reward_into_its_two_branches(llama_server: Server,
                                                            backbone: Backbone) -> None:
    states = hidden([4, 2, 7, 3], D_P, seed=11)
    with R2MClient(llama_server.url) as rm:
        run = rm.create_run(policy_hidden_size=D_P, total_steps=10, attention_dim=ATTENTION,
                            learning_rate=1e-2, seed=4)
        assert rm.get_run(run.run_id).diagnostics.step is None, "nothing scored yet"
        rm.update(run.run_id, groups=[Group(PROMPTS[0], RESPONSES, states)], step=3)
        served = torch.tensor(rm.score(run.run_id, PROMPTS, RESPONSES, states, step=7).rewards,
                              dtype=torch.float64)
        diagnostics = rm.get_run(run.run_id).diagnostics
        w = checkpoint(rm, run.run_id)
    feedback, rte_branch = feedback_and_rte(w, rtes(backbone, PROMPTS, RESPONSES), states,
                                            omega(7, 10, 0.6))
    torch.testing.assert_close(feedback + rte_branch, served, rtol=0, atol=1e-5)
    std = {name: float(x.std(correction=0)) for name, x in
           (("reward", served), ("feedback", feedback), ("rte", rte_branch))}
    assert (diagnostics.step, diagnostics.items) == (7, 4)
    assert diagnostics.reward_mean == pytest.approx(float(served.mean()), abs=1e-6)
    assert diagnostics.reward_std == pytest.approx(std["reward"], abs=1e-6)
    assert diagnostics.feedback_std == pytest.approx(std["feedback"], abs=1e-5)
    assert diagnostics.rte_std == pytest.approx(std["rte"], abs=1e-5)
    share = std["feedback"] ** 2 / (std["feedback"] ** 2 + std["rte"] ** 2)
    assert diagnostics.feedback_share == pytest.approx(share, abs=1e-4)
    assert diagnostics.o_norm == pytest.approx(float(w["o_proj.weight"].norm()), rel=1e-5)
    assert diagnostics.head_norm == pytest.approx(float(w["score.weight"].norm()), rel=1e-5)
    assert diagnostics.scale_drift == 1.0, "the first scored step is the reference"
    exported = _exported(llama_server.url, run.run_id)
    assert exported[("r2m_run_feedback_share", "")] == pytest.approx(diagnostics.feedback_share)
    assert exported[("r2m_run_branch_std", "feedback")] == pytest.approx(diagnostics.feedback_std)
    assert exported[("r2m_run_weight_norm", "o_proj")] == pytest.approx(diagnostics.o_norm)


def test_scale_drift_compares_each_step_with_the_first(llama_server: Server) -> None:
    states = hidden([4, 2, 7, 3], D_P, seed=12)
    group = Group(PROMPTS[0], RESPONSES, states)
    with R2MClient(llama_server.url) as rm:
        run = rm.create_run(policy_hidden_size=D_P, total_steps=10, seed=6)
        first = rm.score(run.run_id, PROMPTS, RESPONSES, step=1).rewards  # text only
        at_first = rm.get_run(run.run_id).diagnostics
        for _ in range(3):
            rm.update(run.run_id, groups=[group], step=1, learning_rate=0.3)
        later = rm.score(run.run_id, PROMPTS, RESPONSES, [*states[:2], None, None],
                         step=2).rewards
        at_later = rm.get_run(run.run_id).diagnostics
        rm.delete_run(run.run_id)
        left = _exported(llama_server.url, run.run_id)

    def std(x: list[float]) -> float:
        return float(torch.tensor(x, dtype=torch.float64).std(correction=0))

    assert at_first.feedback_share == 0.0 and at_first.feedback_std == 0.0, "no hidden states"
    assert at_first.reference_reward_std == pytest.approx(std(first), abs=1e-6)
    assert (at_later.step, at_later.items) == (2, 4), "a new step starts a new tally"
    assert at_later.scale_drift == pytest.approx(std(later) / std(first), rel=1e-4)
    assert left == {}, "a deleted run leaves no diagnostic series"
