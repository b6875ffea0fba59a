"""The R2M module (docs/method.md, Eq. 3–4): sequence-to-token cross-attention, ω(t), head ϕ.

    q = H_last W_q,  k = h W_k,  v = h W_v,  Ĥ = softmax(q kᵀ/√d) v W_o
    H_fin = (1 − ω(t)) Ĥ + ω(t) H_last,  r = ϕ(H_fin)

Exactly as written: one head, no biases in the projections, padding masked out of the softmax.
**[speed, exact algebra]** Because the query is a single vector per item, the module never forms
k or v for every token: q kᵀ = h (W_kᵀ q) and softmax(·) h W_v = (Σ_s a_s h_s) W_v. That turns the
per-token cost from O(D_p·d) into O(D_p) — mathematically the same function, with the same
gradients for all five tensors, differing from the direct formula only by float rounding
(`tests/test_r2m_math.py` checks both against each other).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

# ϕ and the attention keep float32 master weights and compute in float32, whatever dtype the
# backbone runs in: with a bfloat16 backbone the step-0 reward is this head on the bf16 features,
# not the model's own bf16 logit (docs/method.md#scoring-head). `/v1/info` reports it.
MODULE_DTYPE = "float32"
# A CPU batch of hidden states whose padded float32 copy is at most this takes the padded path.
CPU_PADDED_BYTES = 4 << 20
# Checkpoint tensor names (docs/design.md); the module's state_dict uses exactly these.
TRAINABLE_TENSORS = ("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight",
                     "score.weight", "score.bias")


def omega(step: int, total_steps: int, floor: float) -> float:
    """ω(t) = max(½·cos(π·t/T) + ½, Ω) (Eq. 4). **[choice]** t is clamped to [0, T]: past the
    planned end the weight stays at its final value instead of rising again with the cosine."""
    t = min(max(step, 0), total_steps)
    return max(0.5 * math.cos(math.pi * t / total_steps) + 0.5, floor)


class R2MModule(nn.Module):
    """Trainable part of one run: W_q, W_k, W_v, W_o and ϕ (float32 master weights)."""

    def __init__(self, reward_hidden_size: int, policy_hidden_size: int, attention_dim: int,
                 initial_head: tuple[torch.Tensor, torch.Tensor] | None = None,
                 init: str = "default") -> None:
        """`init="zero_o"` **[choice, beyond the paper]** sets W_o = 0 after the default init
        (so the other tensors are those of the same seed's default): Ĥ = 0 and the reward is
        ϕ(ω·H_last) until W_o is trained, the static RM's ranking at any ω. W_o gets gradients
        at once; W_q, W_k, W_v only once W_o ≠ 0 (as LoRA's zero-initialised B)."""
        super().__init__()
        self.attention_dim = attention_dim
        self.q_proj = nn.Linear(reward_hidden_size, attention_dim, bias=False)
        self.k_proj = nn.Linear(policy_hidden_size, attention_dim, bias=False)
        self.v_proj = nn.Linear(policy_hidden_size, attention_dim, bias=False)
        self.o_proj = nn.Linear(attention_dim, reward_hidden_size, bias=False)
        self.score = nn.Linear(reward_hidden_size, 1)
        if initial_head is not None:
            weight, bias = initial_head
            with torch.no_grad():
                self.score.weight.copy_(weight)
                self.score.bias.copy_(bias)
        if init == "zero_o":
            nn.init.zeros_(self.o_proj.weight)
        elif init != "default":
            raise ValueError(f"unknown init {init!r}")

    def attend(self, rte: torch.Tensor, hidden: Sequence[torch.Tensor]) -> torch.Tensor:
        """Ĥ `[B, D_rm]` from RTEs `[B, D_rm]` and each item's hidden states `[S_i, D_p]`.

        Two evaluations of the same function: on CUDA one padded, masked batch (one kernel
        for all items); on a CPU item by item on the unpadded tensors, which skips a padded
        float32 copy of every byte — for long hidden states that copy costs more than the
        attention itself. **[choice]** A CPU batch whose padded copy is at most
        `CPU_PADDED_BYTES` is padded too: there the copy is cheaper than the five torch calls
        per item of the ragged path (bench/RESULTS.md#overhead-per-item-issue-11).
        """
        if rte.device.type == "cuda" or padded_bytes(hidden) <= CPU_PADDED_BYTES:
            padded, mask = pad_hidden_states(hidden, rte.device, self.q_proj.weight.dtype)
            return self.attend_padded(rte, padded, mask)
        return self.attend_ragged(rte, hidden)

    def attend_padded(self, rte: torch.Tensor, hidden: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
        """Ĥ from zero-padded hidden states `[B, S, D_p]` and a bool mask `[B, S]` (True = real
        token); padding is masked out of the softmax."""
        query_in_policy_space = self.q_proj(rte) @ self.k_proj.weight  # W_kᵀ q, [B, D_p]
        logits = torch.einsum("bsp,bp->bs", hidden, query_in_policy_space)
        logits = logits / math.sqrt(self.attention_dim)
        weights = torch.softmax(logits.masked_fill(~mask, float("-inf")), dim=-1)
        context = torch.einsum("bs,bsp->bp", weights, hidden)  # Σ_s a_s h_s
        return self.o_proj(self.v_proj(context))

    def attend_ragged(self, rte: torch.Tensor, hidden: Sequence[torch.Tensor]) -> torch.Tensor:
        """Ĥ item by item from unpadded `[S_i, D_p]` tensors (any float dtype; the math runs in
        the module's dtype, float32)."""
        query_in_policy_space = self.q_proj(rte) @ self.k_proj.weight
        contexts = []
        for query, states in zip(query_in_policy_space, hidden, strict=True):
            states = states.to(query.device, query.dtype)
            weights = torch.softmax(states @ query / math.sqrt(self.attention_dim), dim=0)
            contexts.append(weights @ states)
        return self.o_proj(self.v_proj(torch.stack(contexts)))

    def policy_query(self, rte: torch.Tensor) -> torch.Tensor:
        """u = W_kᵀ q / √d `[B, D_p]`: the query carried into the policy's space, so that the
        attention logits are h·u. Split mode ships u to where h lives (see `proto/split.py`)."""
        return self.q_proj(rte) @ self.k_proj.weight / math.sqrt(self.attention_dim)

    def forward_from_context(self, rte: torch.Tensor, context: torch.Tensor,
                             omega_t: float) -> torch.Tensor:
        """Rewards `[B]` from the attention contexts c = Σ_s a_s h_s `[B, D_p]` computed where
        the hidden states live: the same function as `forward`, since Ĥ = W_o W_v c."""
        if omega_t >= 1.0:
            return self.score(rte).squeeze(-1)
        fused = (1.0 - omega_t) * self.o_proj(self.v_proj(context)) + omega_t * rte
        return self.score(fused).squeeze(-1)

    def forward(self, rte: torch.Tensor, hidden: Sequence[torch.Tensor] | None,
                omega_t: float) -> torch.Tensor:
        """Rewards `[B]`. Without hidden states this is ϕ(H_last): the backbone-only reward."""
        if hidden is None or omega_t >= 1.0:
            return self.score(rte).squeeze(-1)
        fused = (1.0 - omega_t) * self.attend(rte, hidden) + omega_t * rte
        return self.score(fused).squeeze(-1)


def padded_bytes(states: Sequence[torch.Tensor]) -> int:
    """Bytes of the float32 `[B, S_max, D_p]` copy that `pad_hidden_states` makes."""
    return len(states) * max(s.shape[0] for s in states) * states[0].shape[1] * 4


def pad_hidden_states(states: Sequence[torch.Tensor], device: torch.device,
                      dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged `[S_i, D_p]` tensors → zero-padded `[B, S_max, D_p]` and the bool mask of real
    positions. All rows in one concatenation, one transfer and one masked write (the mask's
    True cells, row-major, are the concatenated rows in order), not a copy per item."""
    lengths = torch.tensor([s.shape[0] for s in states])
    mask = torch.arange(int(lengths.max())).unsqueeze(0) < lengths.unsqueeze(1)
    mask = mask.to(device)
    padded = torch.zeros(*mask.shape, states[0].shape[1], device=device, dtype=dtype)
    padded[mask] = torch.cat(list(states)).to(device, dtype)
    return padded, mask
