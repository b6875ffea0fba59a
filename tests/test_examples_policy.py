"""The policy side of the experiment: exact tokenisation, hidden-state paths, RLOO advantages,
matched noise, and that the loop only uses the service through the public client."""

from __future__ import annotations

import ast
import random
from pathlib import Path

import pytest
import torch

from examples.r2m_experiments.arms import (
    ARMS,
    SWEEP_LRS,
    lr_name,
    matched_noise,
    select_arms,
    update_feedback,
)
from examples.r2m_experiments.config import PRESETS
from examples.r2m_experiments.gold import gold_reward, sign_offs
from examples.r2m_experiments.gold_labels import gold_pairs
from examples.r2m_experiments.heldout import evaluate, held_out_pairs
from examples.r2m_experiments.policy import (
    PolicyShape,
    build_policy,
    build_tokenizer,
    sample,
    suppressed_ids,
    token_logprobs,
)
from examples.r2m_experiments.rloo import kl_to_reference, rloo_advantages, zscore
from examples.r2m_experiments.runner import Job, jobs_for
from examples.r2m_experiments.task import PRODUCTS, STOCK_PHRASE, prompt_for
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


def test_rewards_are_standardised_before_the_kl_penalty() -> None:
    rewards = torch.tensor([1.0, 3.0, 5.0, 7.0])
    z = zscore(rewards)
    torch.testing.assert_close(z, (rewards - 4.0) / 5 ** 0.5)
    torch.testing.assert_close(zscore(100 * rewards + 3), z), "any scale gives the same z"
    assert torch.equal(zscore(torch.tensor([2.0, 2.0])), torch.zeros(2))


def test_gold_pairs_are_gold_ordered_within_groups() -> None:
    prompts = [prompt_for("lamp")] * 4 + [prompt_for("tent")] * 4
    responses = ["the lamp is great .", "the lamp is awful .", "it is okay .", "",
                 "the tent is great .", "the tent is great .", "the tent is great .",
                 "the tent is great ."]  # the second group is all ties
    pairs = gold_pairs(prompts, responses, k=4, count=3, rng=random.Random(0))
    assert len(pairs) == 3 and len(set(pairs)) == 3
    for chosen, rejected in pairs:
        assert chosen // 4 == rejected // 4 == 0, "one group, never the all-tie one"
        assert gold_reward(prompts[chosen], responses[chosen]) > \
            gold_reward(prompts[rejected], responses[rejected])
    assert gold_pairs(prompts[4:], responses[4:], k=4, count=2, rng=random.Random(0)) == []


def test_held_out_pairs_are_fixed_and_gold_labelled() -> None:
    held_out = held_out_pairs(3, natural=20, cue=10)
    assert held_out == held_out_pairs(3, natural=20, cue=10), "fixed per seed"
    assert held_out != held_out_pairs(4, natural=20, cue=10)
    for p in held_out.natural:
        assert gold_reward(p.prompt, p.chosen) > gold_reward(p.prompt, p.rejected)
    for p in held_out.cue:
        assert p.rejected == f"{p.chosen} {STOCK_PHRASE}" and sign_offs(p.chosen) == 0
    prompts, responses = held_out.texts()
    assert len(prompts) == len(responses) == 60 and responses[1] == held_out.natural[0].rejected
    # a reward that is the gold one: every pair right, no discrepancy
    perfect = evaluate(held_out, [gold_reward(p, r) for p, r in zip(prompts, responses,
                                                                    strict=True)])
    assert perfect == {"heldout_accuracy": 1.0, "heldout_cue_accuracy": 1.0,
                       "heldout_discrepancy": 0.0}
    # a reward that loves the sign-off gets every cue pair wrong
    cue_lover = [float(sign_offs(r)) for r in responses]
    assert evaluate(held_out, cue_lover)["heldout_cue_accuracy"] == 0.0


def test_arms_and_jobs() -> None:
    assert [lr_name(lr) for lr in SWEEP_LRS] == ["1e-6", "3e-6", "1e-5", "3e-5"]
    assert all(f"r2m_gold{k}" in ARMS and f"head_grebt_gold{k}" in ARMS for k in (2, 8))
    assert ARMS["head_gold8"].omega_floor == 1.0 and not ARMS["r2m_gold2"].grebt
    config = PRESETS["full"].replace(arms=("vanilla", "r2m_noise"))
    jobs = jobs_for(config)
    assert [j.seed for j in jobs if j.arm == "vanilla"] == [0, 1, 2, 3, 4]
    assert [j.seed for j in jobs if j.arm == "r2m_noise"] == [0, 1, 2], "secondary arm"
    assert jobs[:2] == [Job("vanilla", 0), Job("r2m_noise", 0)], "seed-major"
