"""The R2M math (docs/method.md, Eq. 3–7) against direct formulas on hand-made tensors."""

from __future__ import annotations

import math
from collections.abc import Callable

import pytest
import torch

from r2m_service.losses import bradley_terry, grebt, group_reward_entropy, pairwise_bt
from r2m_service.r2m_module import R2MModule, omega, pad_hidden_states

D_RM, D_P, D = 6, 5, 4


def direct_reward(module: R2MModule, rte: torch.Tensor, hidden: list[torch.Tensor],
                  omega_t: float) -> torch.Tensor:
    """Eq. 3–4 written out literally, one item at a time, forming q, k, v."""
    rewards = []
    for h_last, h in zip(rte, hidden, strict=True):
        q = h_last @ module.q_proj.weight.T
        k = h @ module.k_proj.weight.T
        v = h @ module.v_proj.weight.T
        attn = torch.softmax(q @ k.T / math.sqrt(D), dim=-1)
        h_hat = attn @ v @ module.o_proj.weight.T
        h_fin = (1 - omega_t) * h_hat + omega_t * h_last
        rewards.append(h_fin @ module.score.weight[0] + module.score.bias[0])
    return torch.stack(rewards)


@pytest.fixture
def module() -> R2MModule:
    torch.manual_seed(0)
    return R2MModule(D_RM, D_P, D).double()


def ragged(lengths: list[int]) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [torch.randn(n, D_P, generator=g, dtype=torch.float64) for n in lengths]


def padded_forward(module: R2MModule, rte: torch.Tensor, hidden: list[torch.Tensor],
                   omega_t: float) -> torch.Tensor:
    """The padded, masked batch path (the one CUDA takes)."""
    padded, mask = pad_hidden_states(hidden, torch.device("cpu"), torch.float64)
    fused = (1 - omega_t) * module.attend_padded(rte, padded, mask) + omega_t * rte
    return module.score(fused).squeeze(-1)


def ragged_forward(module: R2MModule, rte: torch.Tensor, hidden: list[torch.Tensor],
                   omega_t: float) -> torch.Tensor:
    """The item-by-item path (the one a CPU takes for long hidden states)."""
    fused = (1 - omega_t) * module.attend_ragged(rte, hidden) + omega_t * rte
    return module.score(fused).squeeze(-1)


def module_forward(module: R2MModule, rte: torch.Tensor, hidden: list[torch.Tensor],
                   omega_t: float) -> torch.Tensor:
    """The module's own forward (which picks one of the two by size and device)."""
    return module(rte, hidden, omega_t)


Forward = Callable[[R2MModule, torch.Tensor, list[torch.Tensor], float], torch.Tensor]
PATHS: list[Forward] = [padded_forward, ragged_forward, module_forward]


@pytest.mark.parametrize("path", PATHS)
def test_cross_attention_matches_direct_formula(module: R2MModule, path: Forward) -> None:
    rte = torch.randn(3, D_RM, dtype=torch.float64)
    hidden = ragged([1, 4, 7])
    got = path(module, rte, hidden, 0.3)
    assert torch.allclose(got, direct_reward(module, rte, hidden, 0.3), atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_padding_does_not_change_a_reward(module: R2MModule, path: Forward) -> None:
    rte = torch.randn(2, D_RM, dtype=torch.float64)
    hidden = ragged([3, 9])
    batched = path(module, rte, hidden, 0.5)
    assert torch.allclose(batched[0], path(module, rte[:1], hidden[:1], 0.5)[0], atol=1e-12)


@pytest.mark.parametrize("path", PATHS)
def test_gradients_match_direct_formula(module: R2MModule, path: Forward) -> None:
    rte = torch.randn(3, D_RM, dtype=torch.float64)
    hidden = ragged([2, 5, 3])
    path(module, rte, hidden, 0.2).square().sum().backward()
    fast = [p.grad.clone() for p in module.parameters()]
    module.zero_grad()
    direct_reward(module, rte, hidden, 0.2).square().sum().backward()
    for a, b in zip(fast, [p.grad for p in module.parameters()], strict=True):
        assert torch.allclose(a, b, atol=1e-10)


def test_omega_one_is_the_vanilla_reward(module: R2MModule) -> None:
    rte = torch.randn(2, D_RM, dtype=torch.float64)
    vanilla = rte @ module.score.weight[0] + module.score.bias[0]
    assert torch.allclose(module(rte, ragged([3, 3]), 1.0), vanilla)
    assert torch.allclose(module(rte, None, 0.4), vanilla)


def test_initial_head_is_copied() -> None:
    weight, bias = torch.randn(1, D_RM), torch.randn(1)
    m = R2MModule(D_RM, D_P, D, initial_head=(weight, bias))
    assert torch.equal(m.score.weight.data, weight) and torch.equal(m.score.bias.data, bias)


@pytest.mark.parametrize(("step", "total", "floor", "expected"), [
    (0, 100, 0.6, 1.0),
    (50, 100, 0.0, 0.5),
    (50, 100, 0.6, 0.6),
    (25, 100, 0.0, 0.5 * math.cos(math.pi / 4) + 0.5),
    (100, 100, 0.0, 0.0),
    (100, 100, 0.7, 0.7),
    (150, 100, 0.0, 0.0),  # clamped at T
])
def test_omega(step: int, total: int, floor: float, expected: float) -> None:
    assert omega(step, total, floor) == pytest.approx(expected, abs=1e-12)


def test_bradley_terry() -> None:
    got = bradley_terry(torch.tensor(2.0), torch.tensor(0.5))
    assert float(got) == pytest.approx(-math.log(1 / (1 + math.exp(-1.5))))


def test_group_reward_entropy_by_hand() -> None:
    r = [0.2, -1.0, 0.7, 1.5]
    mean = sum(r) / 4
    std = math.sqrt(sum((x - mean) ** 2 for x in r) / 4)  # population std
    z = [(x - mean) / std for x in r]
    p = [math.exp(x) / sum(math.exp(y) for y in z) for x in z]
    expected = -sum(pi * math.log(pi) for pi in p)
    got = group_reward_entropy(torch.tensor(r, dtype=torch.float64))
    assert float(got) == pytest.approx(expected, rel=1e-6)


def test_group_reward_entropy_survives_equal_rewards() -> None:
    r = torch.zeros(4, requires_grad=True)
    loss = group_reward_entropy(r)
    loss.backward()
    assert loss.item() == pytest.approx(math.log(4)) and torch.isfinite(r.grad).all()


def test_grebt_combines_terms_and_uses_labels_for_winner_and_loser() -> None:
    groups = [torch.tensor([0.1, 0.9, -0.3], dtype=torch.float64),
              torch.tensor([1.0, 0.0], dtype=torch.float64)]
    labels = [torch.tensor([5.0, 1.0, 3.0]), torch.tensor([0.0, 1.0])]  # w/l differ from rewards
    alpha = 0.3
    bt = (bradley_terry(groups[0][0], groups[0][1]) + bradley_terry(groups[1][1], groups[1][0])) / 2
    gre = (group_reward_entropy(groups[0]) + group_reward_entropy(groups[1])) / 2
    terms = grebt(groups, labels, alpha)
    assert float(terms.bt_loss) == pytest.approx(float(bt))
    assert float(terms.gre_loss) == pytest.approx(float(gre))
    assert float(terms.loss) == pytest.approx((1 - alpha) * float(bt) + alpha * float(gre))


@pytest.mark.parametrize("alpha", [0.0, 1.0])
def test_grebt_ablations(alpha: float) -> None:
    groups = [torch.tensor([0.1, 0.9, -0.3])]
    terms = grebt(groups, [groups[0]], alpha)
    expected = terms.gre_loss if alpha == 1.0 else terms.bt_loss
    assert float(terms.loss) == pytest.approx(float(expected))


def test_pairwise_bt_is_the_mean() -> None:
    chosen, rejected = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 2.0])
    terms = pairwise_bt(chosen, rejected)
    expected = (bradley_terry(chosen[0], rejected[0]) + bradley_terry(chosen[1], rejected[1])) / 2
    assert float(terms.loss) == pytest.approx(float(expected)) and terms.gre_loss is None
