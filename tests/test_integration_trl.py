"""TRL's own GRPO trainer, two real optimizer steps of a tiny random causal LM on the CPU, with
`R2MGRPOTrainer`: the run advances one version per optimizer step, and the rewards TRL logs are
the ones the server answered."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import torch

from r2m_client import R2MClient, ScoreResponse
from tests.conftest import Server
from tests.integration_env import why_missing

trl = pytest.importorskip("trl", reason=why_missing("trl", "pip install -e '.[trl]'"))
datasets = pytest.importorskip("datasets", reason=why_missing("trl", "datasets comes with trl"))
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from r2m_client.integrations.trl import R2MGRPOTrainer  # noqa: E402

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "table", "good", "bad"]
PROMPTS = ["the cat", "a dog ran", "the mat", "a table"]
K = 2  # completions per prompt


def policy() -> tuple[Any, Any]:
    """A random two-layer Llama over a word-level vocabulary (pad 0, eos 1): built, not loaded."""
    vocab = {token: i for i, token in enumerate(["[PAD]", "[EOS]", "[UNK]", *WORDS])}
    backend = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="[PAD]", eos_token="[EOS]", unk_token="[UNK]")
    config = transformers.LlamaConfig(
        vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
        bos_token_id=1, eos_token_id=1, pad_token_id=0)
    torch.manual_seed(0)
    return transformers.LlamaForCausalLM(config), tokenizer


class Observed(R2MGRPOTrainer):
    """The trainer under test, recording the annotation states it scores with and the fresh
    states its loss forwards kept, just before each update is sent."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.annotated: list[list[torch.Tensor]] = []
        self.fresh: list[dict[int, torch.Tensor]] = []

    def _annotation_states(self) -> list[torch.Tensor]:
        self.annotated.append(super()._annotation_states())
        return self.annotated[-1]

    def _update(self, step: int) -> None:
        assert self.r2m_rollout is not None
        self.fresh.append(dict(self.r2m_rollout.fresh))
        super()._update(step)


class ServerAnswers(transformers.TrainerCallback):
    """What the server answered r2m's reward function at each optimizer step."""

    def __init__(self) -> None:
        self.trainer: Observed | None = None
        self.scored: list[ScoreResponse] = []
        self.texts: list[tuple[list[str], list[str]]] = []

    def on_step_end(self, args: Any, state: Any, control: Any, **_: Any) -> None:
        assert self.trainer is not None and self.trainer.r2m_rollout is not None
        rollout = self.trainer.r2m_rollout
        assert rollout.scored is not None
        self.scored.append(rollout.scored)
        self.texts.append((rollout.prompts, rollout.completions))


def test_two_grpo_steps_update_the_run_once_each_and_log_the_servers_rewards(
        llama_server: Server, tmp_path: Path) -> None:
    model, tokenizer = policy()
    answers = ServerAnswers()
    args = trl.GRPOConfig(
        output_dir=str(tmp_path), per_device_train_batch_size=len(PROMPTS), num_generations=K,
        max_completion_length=6, max_steps=2, logging_steps=1, learning_rate=1e-3, beta=0.0,
        report_to="none", use_cpu=True, save_strategy="no", seed=0)
    run_id = f"trl-{uuid.uuid4().hex[:8]}"
    with R2MClient(llama_server.url) as rm:
        trainer = Observed(
            model=model, args=args, processing_class=tokenizer, callbacks=[answers],
            train_dataset=datasets.Dataset.from_dict({"prompt": PROMPTS}), r2m=rm,
            run_id=run_id, run_options={"seed": 0, "learning_rate": 1e-2})
        answers.trainer = trainer
        trainer.train()
        run = rm.get_run(run_id)
        replay = rm.create_run(policy_hidden_size=32, total_steps=2, seed=0, learning_rate=1e-2)
        step0 = rm.score(replay.run_id, *answers.texts[0], step=0).rewards

    assert (run.version, run.step, run.config.total_steps) == (2, 2, 2)
    assert run.config.policy_hidden_size == 32
    assert [(s.version, s.step) for s in answers.scored] == [(0, 0), (1, 1)]
    logged = [entry for entry in trainer.state.log_history if "rewards/r2m/mean" in entry]
    assert len(logged) == 2
    for entry, scored in zip(logged, answers.scored, strict=True):
        assert len(scored.rewards) == len(PROMPTS)
        assert entry["rewards/r2m/mean"] == pytest.approx(
            sum(scored.rewards) / len(scored.rewards), rel=1e-5, abs=1e-6)
    # at step 0 (ω = 1) the reward is ϕ(H_last): a fresh run with the same seed agrees
    assert step0 == pytest.approx(answers.scored[0].rewards, abs=1e-6)
    # every sample's fresh states came from the loss forward; before the first optimizer step
    # the policy is the one that annotated, so they equal the scored states exactly
    assert all(sorted(fresh) == list(range(len(PROMPTS))) for fresh in trainer.fresh)
    for row, states in trainer.fresh[0].items():
        assert torch.equal(states, trainer.annotated[0][row])
        assert states.shape[1] == 32
