"""At t = 0 (ω = 1) the service reproduces the reward model's own logits, batched and padded."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from r2m_client import R2MClient
from tests.conftest import Server
from tests.helpers import PROMPTS, RESPONSES, hidden


def own_logits(model_dir: Path, prompts: list[str], responses: list[str]) -> list[float]:
    """The RM's logit for each pair, one unpadded forward pass at a time."""
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
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
            out.append(model(**inputs).logits[0, 0].item())
    return out


@pytest.mark.parametrize("backbone", ["llama", "bert"])
def test_score_at_step_zero_equals_model_logits(
        backbone: str, request: pytest.FixtureRequest) -> None:
    server: Server = request.getfixturevalue(f"{backbone}_server")
    model_dir: Path = request.getfixturevalue(f"{backbone}_rm_dir")
    expected = own_logits(model_dir, PROMPTS, RESPONSES)
    assert min(abs(a - b) for a in expected for b in expected if a != b) > 1e-3  # items differ
    with R2MClient(server.url) as rm:
        run = rm.create_run(policy_hidden_size=16, total_steps=100)
        batched = rm.score(run.run_id, PROMPTS, RESPONSES).rewards
        with_feedback = rm.score(run.run_id, PROMPTS, RESPONSES,
                                 hidden([3, 9, 1, 5], 16), step=0).rewards
        one_by_one = [rm.score(run.run_id, [p], [r]).rewards[0]
                      for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    assert batched == pytest.approx(expected, abs=1e-5)
    assert with_feedback == pytest.approx(expected, abs=1e-5)
    assert one_by_one == pytest.approx(expected, abs=1e-5)
