"""The policy: a two-layer GPT-2 built from a config over the task's word-level vocabulary,
supervised on the task first so that it writes varied, sensible reviews before RL starts.

A word-level tokenizer keeps the model tiny (≈ 0.1M parameters, so CPU RL steps take a fraction
of a second) and makes decoding exact: `tokenizer(prompt + response)` gives back the very ids
that were sampled, so the hidden states `r2m_client.hf.policy_hidden_states` extracts for
`/v1/score` are those of the sampled sequence.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from torch.nn import functional as F
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

from .task import sft_corpus, vocabulary


@dataclass(frozen=True)
class PolicyShape:
    """Size of the policy network."""

    layers: int = 2
    width: int = 64
    heads: int = 4
    max_positions: int = 64


def build_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer over `task.vocabulary()` (pad = 0, eos = 1, unk = 2)."""
    vocab = {word: i for i, word in enumerate(vocabulary())}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>",
                                   eos_token="<eos>", unk_token="<unk>")


def build_policy(tokenizer: PreTrainedTokenizerFast, shape: PolicyShape,
                 seed: int) -> GPT2LMHeadModel:
    """A freshly initialised causal LM (seeded). Padding is always masked explicitly, so the
    config names no pad id (that also keeps transformers' padding heuristics quiet)."""
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=shape.max_positions,
                        n_embd=shape.width, n_layer=shape.layers, n_head=shape.heads,
                        bos_token_id=tokenizer.eos_token_id, eos_token_id=tokenizer.eos_token_id)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return GPT2LMHeadModel(config)


def suppressed_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    """Ids the policy may never emit (pad, unk): masked in sampling and in every log-prob."""
    return [tokenizer.pad_token_id, tokenizer.unk_token_id]


@dataclass(frozen=True)
class Batch:
    """Prompt + response (+ eos when the policy stopped) sequences, right-padded.

    `action_mask` marks the tokens the policy chose (response and eos), aligned with the
    log-probs `token_logprobs` returns; `text_mask` marks the prompt + response tokens whose
    last-layer states R2M reads (eos excluded, as at scoring time)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    action_mask: torch.Tensor
    text_mask: torch.Tensor


def make_batch(prompt_ids: list[list[int]], response_ids: list[list[int]],
               finished: list[bool], eos_id: int, pad_id: int) -> Batch:
    """Right-pad the sequences; build the action and text masks."""
    rows = [p + r + ([eos_id] if done else [])
            for p, r, done in zip(prompt_ids, response_ids, finished, strict=True)]
    width = max(len(row) for row in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    actions = torch.zeros_like(ids, dtype=torch.bool)
    text = torch.zeros_like(ids, dtype=torch.bool)
    for i, (row, prompt, response) in enumerate(zip(rows, prompt_ids, response_ids, strict=True)):
        ids[i, :len(row)] = torch.tensor(row)
        attention[i, :len(row)] = 1
        actions[i, len(prompt):len(row)] = True
        text[i, :len(prompt) + len(response)] = True
    return Batch(ids, attention, actions, text)


def token_logprobs(model: GPT2LMHeadModel, batch: Batch, suppressed: list[int], *,
                   hidden: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-prob of each action token given its prefix, `[B, S]` (0 outside `action_mask`), and
    optionally the last-layer hidden states `[B, S, D_p]` of the same forward pass."""
    out = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                output_hidden_states=hidden, use_cache=False)
    logits = out.logits[:, :-1].float()
    logits[..., suppressed] = float("-inf")
    picked = torch.gather(F.log_softmax(logits, dim=-1), 2,
                          batch.input_ids[:, 1:].unsqueeze(-1)).squeeze(-1)
    logprobs = F.pad(picked, (1, 0)).masked_fill(~batch.action_mask, 0.0)
    return logprobs, (out.hidden_states[-1] if hidden else None)


@dataclass(frozen=True)
class Samples:
    """K responses per prompt, flattened prompt-major (group g = rows g·K … g·K + K − 1)."""

    prompts: list[str]
    responses: list[str]
    batch: Batch


def sample(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, prompts: list[str],
           k: int, max_new_tokens: int, seed: int) -> Samples:
    """Sample `k` responses per prompt at temperature 1 (no top-k/top-p), seeded."""
    flat_prompts = [p for p in prompts for _ in range(k)]
    prompt_ids = [tokenizer(p)["input_ids"] for p in flat_prompts]
    width = max(len(p) for p in prompt_ids)
    pad, eos = tokenizer.pad_token_id, tokenizer.eos_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompt_ids])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids])
    model.eval()
    with torch.no_grad(), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, top_k=0,
                             top_p=1.0, temperature=1.0, max_new_tokens=max_new_tokens,
                             eos_token_id=eos, pad_token_id=pad,
                             suppress_tokens=suppressed_ids(tokenizer))
    response_ids, finished = [], []
    for row in out[:, width:].tolist():
        done = eos in row
        response_ids.append(row[:row.index(eos)] if done else row)
        finished.append(done)
    responses = [tokenizer.decode(r) if r else "" for r in response_ids]
    batch = make_batch(prompt_ids, response_ids, finished, eos, pad)
    return Samples(flat_prompts, responses, batch)


def supervised_finetune(model: GPT2LMHeadModel, tokenizer: PreTrainedTokenizerFast, *,
                        steps: int, batch_size: int, lr: float, seed: int) -> list[float]:
    """Teach the policy the task distribution (loss on response + eos tokens only)."""
    rng = random.Random(f"sft/{seed}")
    corpus = sft_corpus(rng, steps * batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    suppressed = suppressed_ids(tokenizer)
    model.train()
    losses = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(corpus), batch_size):
            chunk = corpus[start:start + batch_size]
            batch = make_batch([tokenizer(p)["input_ids"] for p, _ in chunk],
                               [tokenizer(r)["input_ids"] for _, r in chunk],
                               [True] * len(chunk), tokenizer.eos_token_id,
                               tokenizer.pad_token_id)
            logprobs, _ = token_logprobs(model, batch, suppressed)
            loss = -(logprobs * batch.action_mask).sum() / batch.action_mask.sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
    return losses
