"""Batched, padded extraction gives each sample exactly the states of its own unpadded pass."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

from r2m_client.hf import policy_hidden_states, unpad_hidden_states  # noqa: E402

WORDS = ["the", "a", "cat", "dog", "sat", "ran", "on", "under", "mat", "table", "quickly",
         "slowly", "and", "then", "it", "was", "good", "bad"]
PROMPTS = ["the cat", "a dog ran under the table and then", "it", "the mat was",
           "quickly the dog", "a"]
RESPONSES = [" sat on the mat", " sat", " was good", " bad and then the cat ran quickly",
             " ran", " cat sat on a mat slowly and then it was bad"]


def _tokenizer(padding_side: str) -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer built in memory, with eos but no pad token (like many policies)."""
    vocab = {token: i for i, token in enumerate(["[UNK]", "[EOS]", *WORDS])}
    model = tokenizers.models.WordLevel(vocab=vocab, unk_token="[UNK]")
    backend = tokenizers.Tokenizer(model)
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]",
                                               eos_token="[EOS]")
    tok.padding_side = padding_side
    return tok


def _model(kind: str, vocab_size: int) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "gpt2":
        config = transformers.GPT2Config(vocab_size=vocab_size, n_embd=32, n_layer=2, n_head=4,
                                         n_positions=64, bos_token_id=1, eos_token_id=1)
        return transformers.GPT2LMHeadModel(config)
    config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=32,
                                      intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=64, bos_token_id=1,
                                      eos_token_id=1, pad_token_id=None)
    return transformers.LlamaForCausalLM(config)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_batched_extraction_matches_per_sample_forward(kind: str, padding_side: str) -> None:
    tokenizer = _tokenizer(padding_side)
    model = _model(kind, len(tokenizer))
    model.train()
    states = policy_hidden_states(model, tokenizer, PROMPTS, RESPONSES, batch_size=4)
    assert model.training, "the caller's training mode is restored"
    assert tokenizer.pad_token is None, "the tokenizer is not modified"
    assert len(states) == len(PROMPTS)
    model.eval()
    for prompt, response, got in zip(PROMPTS, RESPONSES, states, strict=True):
        ids = tokenizer(prompt + response, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            want = model(input_ids=ids, output_hidden_states=True).hidden_states[-1][0]
        assert got.shape == (ids.shape[1], 32)
        assert not got.requires_grad
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_unpad_keeps_only_masked_tokens_for_either_side() -> None:
    hidden = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0]])
    left, right = unpad_hidden_states(hidden, mask)
    assert torch.equal(left, hidden[0, 2:])
    assert torch.equal(right, hidden[1, :3])


def test_unpad_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[B, S, D\]"):
        unpad_hidden_states(torch.zeros(2, 4, 3), torch.ones(2, 5))
