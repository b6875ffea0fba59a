"""Policy hidden states from a Hugging Face causal LM, in the form `score` / `update` take.

R2M reads the policy's last-layer hidden states of each prompt+response, one [S_i, D_p] tensor
per sample with no padding. Batched forward passes are padded, so padding is stripped by the
attention mask, and positions are counted from each sample's first real token so that a
left-padded batch gives the same states as running each sample alone. torch is imported inside
the functions: `r2m_client` itself must install and import without it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


def policy_hidden_states(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    responses: Sequence[str],
    *,
    batch_size: int = 8,
) -> list[torch.Tensor]:
    """Last-layer hidden states [S_i, D_p] of `prompt + response` for each sample, unpadded.

    Runs `model` in eval mode under `torch.no_grad()` (its training mode is restored after) in
    batches of `batch_size`, padded on the tokenizer's `padding_side`. Pad ids are masked, so a
    tokenizer without a pad token pads with its eos id and is never modified. The tensors stay on
    the model's device and dtype; the client moves them to the CPU when it sends them.
    """
    import torch

    if len(prompts) != len(responses):
        raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    texts = [prompt + response for prompt, response in zip(prompts, responses, strict=True)]
    pad_id = _pad_id(tokenizer)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        states: list[torch.Tensor] = []
        with torch.no_grad():
            for start in range(0, len(texts), batch_size):
                ids, mask = _pad(tokenizer(texts[start:start + batch_size])["input_ids"],
                                 pad_id, left=tokenizer.padding_side == "left")
                ids, mask = ids.to(device), mask.to(device)
                positions = (mask.cumsum(-1) - 1).clamp(min=0)
                out = model(input_ids=ids, attention_mask=mask, position_ids=positions,
                            output_hidden_states=True, use_cache=False)
                states.extend(unpad_hidden_states(out.hidden_states[-1], mask))
        return states
    finally:
        model.train(was_training)


def unpad_hidden_states(last_hidden: torch.Tensor,
                        attention_mask: torch.Tensor) -> list[torch.Tensor]:
    """Split a padded batch [B, S, D] into each sample's real tokens [S_i, D] (left or right
    padding alike), for trainers that already ran the forward pass."""
    if last_hidden.dim() != 3 or tuple(attention_mask.shape) != tuple(last_hidden.shape[:2]):
        raise ValueError(f"expected last_hidden [B, S, D] and attention_mask [B, S], got "
                         f"{list(last_hidden.shape)} and {list(attention_mask.shape)}")
    keep = attention_mask.to(device=last_hidden.device).bool()
    return [hidden[row] for hidden, row in zip(last_hidden, keep, strict=True)]


def _pad_id(tokenizer: Any) -> int:
    for token_id in (tokenizer.pad_token_id, tokenizer.eos_token_id):
        if token_id is not None:
            return int(token_id)
    raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")


def _pad(sequences: Sequence[Sequence[int]], pad_id: int,
         *, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask [B, S_max], padded on the left or the right."""
    import torch

    width = max(len(seq) for seq in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        span = slice(width - len(seq), width) if left else slice(0, len(seq))
        ids[row, span] = torch.tensor(seq, dtype=torch.long)
        mask[row, span] = 1
    return ids, mask
