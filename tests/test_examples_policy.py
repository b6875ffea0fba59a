"""The policy side of the experiment: exact tokenisation, hidden-state paths, RLOO advantages,
matched noise, and that the loop only uses the service through the public client."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from examples.r2m_experiments.arms import (
    ARMS,
    matched_noise,
    select_arms,
    update_feedback,
)
from examples.r2m_experiments.policy import (
    PolicyShape,
    build_policy,
    build_tokenizer,
    sample,
    suppressed_ids,
    token_logprobs,
)
from examples.r2m_experiments.rloo import kl_to_reference, rloo_advantages
from examples.r2m_experiments.task import PRODUCTS, prompt_for
from r2m_client.hf import policy_hidden_states, unpad_hidden_states

PACKAGE = Path(__file__).resolve().parents[1] / "examples" / "r2m_experiments"


@pytest.fixture(scope="module")
def policy_and_tokenizer():
    tokenizer = build_tokenizer()
    return build_policy(tokenizer, PolicyShape(layers=1, width=16, heads=2), seed=0), tokenizer


def test_sampled_text_tokenises_back_to_the_sampled_ids(policy_and_tokenizer) -> None:
    """What the client helper re-tokenises for /v1/score is exactly what was sampled, and the
    fresh states of the PPO forward (text positions) equal the helper's states."""
    policy, tokenizer = policy_and_tokenizer
    prompts = [prompt_for(p) for p in PRODUCTS[:3]]
    samples = sample(policy, tokenizer, prompts, k=2, max_new_tokens=10, seed=0)
    batch = samples.batch
    assert len(samples.responses) == 6
    for row, (prompt, response) in enumerate(zip(samples.prompts, samples.responses,
                                                 strict=True)):
        text_ids = batch.input_ids[row][batch.text_mask[row]].tolist()
        assert tokenizer(prompt + response)["input_ids"] == text_ids
        assert not set(text_ids) & set(suppressed_ids(tokenizer))
    helper = policy_hidden_states(policy, tokenizer, samples.prompts, samples.responses)
    policy.eval()
    with torch.no_grad():
        _, hidden = token_logprobs(policy, batch, suppressed_ids(tokenizer), hidden=True)
    fresh = unpad_hidden_states(hidden, batch.text_mask)
    for a, b in zip(helper, fresh, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_logprobs_are_zero_off_the_actions(policy_and_tokenizer) -> None:
    policy, tokenizer = policy_and_tokenizer
    samples = sample(policy, tokenizer, [prompt_for("lamp")], k=3, max_new_tokens=6, seed=1)
    with torch.no_grad():
        logprobs, _ = token_logprobs(policy, samples.batch, suppressed_ids(tokenizer))
    assert torch.all(logprobs[~samples.batch.action_mask] == 0)
    assert torch.all(logprobs[samples.batch.action_mask] < 0)
    assert torch.all(kl_to_reference(logprobs, logprobs) == 0)


def test_rloo_advantages_hand_values() -> None:
    # groups [1, 2] and [3, 6]: leave-one-out baselines [2, 1] and [6, 3] → [−1, 1, −3, 3],
    # then divided by their population std √5.
    got = rloo_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]), k=2)
    torch.testing.assert_close(got, torch.tensor([-1.0, 1.0, -3.0, 3.0]) / 5 ** 0.5)
    assert torch.all(rloo_advantages(torch.tensor([2.0, 2.0, 2.0]), k=3) == 0)


def test_matched_noise_keeps_feature_statistics_only() -> None:
    g = torch.Generator().manual_seed(0)
    mean, std = torch.linspace(-3, 3, 8), torch.linspace(0.5, 4, 8)
    states = [mean + std * torch.randn(n, 8, generator=g) for n in (500, 700, 800)]
    noise = matched_noise(states, torch.Generator().manual_seed(1))
    assert [n.shape for n in noise] == [s.shape for s in states]
    tokens = torch.cat(noise)
    torch.testing.assert_close(tokens.mean(0), mean, atol=0.2, rtol=0)
    torch.testing.assert_close(tokens.std(0), std, atol=0.0, rtol=0.1)
    corr = torch.corrcoef(torch.stack([torch.cat(states)[:, 0], tokens[:, 0]]))[0, 1]
    assert abs(corr) < 0.1


def test_head_only_arm_sends_placeholders() -> None:
    states = [torch.ones(5, 4), torch.ones(3, 4)]
    sent = update_feedback(ARMS["iterative_head"], states, torch.Generator())
    assert [s.shape for s in sent] == [(1, 4), (1, 4)]
    assert ARMS["iterative_head"].omega_floor == 1.0, "placeholders are only ignored at ω ≡ 1"
    assert update_feedback(ARMS["r2m"], states, torch.Generator()) == states
    with pytest.raises(ValueError, match="unknown arm"):
        select_arms(["r2m", "nope"])


def test_experiments_use_only_the_public_client() -> None:
    """No import of the service, the proto internals or private client modules."""
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) and
                     node.level == 0 else [])
            for name in names:
                top = name.split(".")
                if top[0] in ("r2m_service", "r2m_proto") or (
                        top[0] == "r2m_client" and any(p.startswith("_") for p in top[1:])):
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []
