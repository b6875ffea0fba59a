"""At t = 0 (ω = 1) the service reproduces the reward model's own logits, batched and padded;
at t > 0 its reward is Eq. 3–4 evaluated on the model's own features and the run's tensors."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as load_safetensors
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from r2m_client import Group, R2MClient
from tests.conftest import Server, start_server
from tests.helpers import PROMPTS, RESPONSES, hidden


def own_logits(model_dir: Path, prompts: list[str], responses: list[str]) -> list[float]:
    """The RM's logit for each pair, one unpadded forward pass at a time."""
    return [logit for logit, _ in own_forward(model_dir, prompts, responses)]


def own_forward(model_dir: Path, prompts: list[str], responses: list[str],
                dtype: torch.dtype = torch.float32) -> list[tuple[float, torch.Tensor]]:
    """(logit, H_last) per pair from the RM's own forward in `dtype`, one pair at a time.
    H_last is what the model's scoring layer reads (the input of `score` / `classifier`)."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=dtype).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    head = getattr(model, "score", None) or model.classifier
    features: list[torch.Tensor] = []
    head.register_forward_hook(lambda _m, args, _out: features.append(args[0]))
    out = []
    for prompt, response in zip(prompts, responses, strict=True):
        if tokenizer.chat_template:
            text = tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
                tokenize=False)
            inputs = tokenizer(text, add_special_tokens=False, return_tensors="pt")
        else:
            inputs = tokenizer(prompt, response, return_tensors="pt")
        with torch.no_grad():
            logit = model(**inputs).logits[0, 0].item()
        h_last = features[-1][0]
        out.append((logit, h_last[-1] if h_last.dim() == 2 else h_last))  # causal: last token
    return out


@pytest.mark.parametrize("backbone", ["llama", "bert"])
def test_score_at_step_zero_equals_model_logits(
        backbone: str, request: pytest.FixtureRequest) -> None:
    server: Server = request.getfixturevalue(f"{backbone}_server")
    model_dir: Path = request.getfixturevalue(f"{backbone}_rm_dir")
    expected = own_logits(model_dir, PROMPTS, RESPONSES)
    assert min(abs(a - b) for a in expected for b in expected if a != b) > 1e-3  # items differ
    with R2MClient(server.url) as rm:
        info = rm.info()
        run = rm.create_run(policy_hidden_size=16, total_steps=100)
        batched = rm.score(run.run_id, PROMPTS, RESPONSES).rewards
        with_feedback = rm.score(run.run_id, PROMPTS, RESPONSES,
                                 hidden([3, 9, 1, 5], 16), step=0).rewards
        one_by_one = [rm.score(run.run_id, [p], [r]).rewards[0]
                      for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    assert (info.dtype, info.head_dtype) == ("float32", "float32")
    assert batched == pytest.approx(expected, abs=1e-5)
    assert with_feedback == pytest.approx(expected, abs=1e-5)
    assert one_by_one == pytest.approx(expected, abs=1e-5)


# docs/method.md#scoring-head: with a bfloat16 backbone the step-0 reward is the float32 head on
# the bf16 features; the model's own logit is that product rounded to bf16 (twice: the dot
# product, then the bias add), so they differ by at most 2⁻⁷·|logit|, and not by nothing.
BF16_GAP = 2**-7


@pytest.fixture(scope="module")
def bf16_bert_server(server_logs: Path, bert_rm_dir: Path) -> Iterator[Server]:
    server = start_server(server_logs, "--backbone", str(bert_rm_dir), "--dtype", "bfloat16")
    yield server
    server.stop()


def test_bf16_backbone_step_zero_is_the_float32_head_on_bf16_features(
        bf16_bert_server: Server, bert_rm_dir: Path) -> None:
    own = own_forward(bert_rm_dir, PROMPTS, RESPONSES, dtype=torch.bfloat16)
    with R2MClient(bf16_bert_server.url) as rm:
        info = rm.info()
        run = rm.create_run(policy_hidden_size=16, total_steps=100)
        head = load_safetensors(rm.checkpoint(run.run_id))
        batched = rm.score(run.run_id, PROMPTS, RESPONSES).rewards
        one_by_one = [rm.score(run.run_id, [p], [r]).rewards[0]
                      for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    assert (info.dtype, info.head_dtype) == ("bfloat16", "float32")
    assert head["score.weight"].dtype == torch.float32
    fp32_head = [float(h.float() @ head["score.weight"][0] + head["score.bias"][0])
                 for _, h in own]
    assert one_by_one == pytest.approx(fp32_head, abs=1e-4)  # the same features, unpadded
    logits = [logit for logit, _ in own]
    gaps = [abs(r - logit) for r, logit in zip(batched, logits, strict=True)]
    bounds = [BF16_GAP * abs(logit) + 1e-3 for logit in logits]  # + padding's bf16 jitter
    assert all(g <= b for g, b in zip(gaps, bounds, strict=True)), (gaps, logits)
    assert max(abs(r - logit) for r, logit in zip(one_by_one, logits, strict=True)) > 0


@pytest.mark.parametrize("backbone", ["llama", "bert"])
def test_score_after_training_is_the_formula_on_the_models_own_features(
        backbone: str, request: pytest.FixtureRequest) -> None:
    """t > 0, after updates moved every tensor: no short cut through ω = 1 is left."""
    server: Server = request.getfixturevalue(f"{backbone}_server")
    model_dir: Path = request.getfixturevalue(f"{backbone}_rm_dir")
    states = hidden([3, 9, 1, 5], 16, seed=4)
    with R2MClient(server.url) as rm:
        run = rm.create_run(policy_hidden_size=16, total_steps=10, attention_dim=8,
                            learning_rate=1e-2, seed=9)
        for step in (1, 2):
            rm.update(run.run_id, groups=[Group(PROMPTS[0], RESPONSES, states)], step=step)
        served = rm.score(run.run_id, PROMPTS, RESPONSES, states, step=3)
        w = load_safetensors(rm.checkpoint(run.run_id))
    om = 0.5 * math.cos(math.pi * 3 / 10) + 0.5
    assert served.omega == pytest.approx(om) and om > 0.6  # the floor is not what set it
    expected = []
    for (_, h_last), h in zip(own_forward(model_dir, PROMPTS, RESPONSES), states, strict=True):
        q, k, v = w["q_proj.weight"] @ h_last, h @ w["k_proj.weight"].T, h @ w["v_proj.weight"].T
        h_hat = torch.softmax(k @ q / math.sqrt(8), dim=0) @ v @ w["o_proj.weight"].T
        h_fin = (1 - om) * h_hat + om * h_last
        expected.append(float(h_fin @ w["score.weight"][0] + w["score.bias"][0]))
    assert served.rewards == pytest.approx(expected, abs=1e-4)
