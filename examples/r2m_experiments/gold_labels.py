"""Sparse trusted labels (issue 9 §4, beyond the paper): k gold-labelled pairs per RL step.

Real RL runs often have a trickle of trusted labels — a stronger judge or a human on a few
samples per step. Here the trusted labeller is the exact gold reward, applied to k pairs of the
step's own on-policy responses (two responses to the same prompt), so the labels land exactly
where the policy is drifting.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

from .gold import gold_reward


def gold_pairs(prompts: Sequence[str], responses: Sequence[str], k: int, count: int,
               rng: random.Random) -> list[tuple[int, int]]:
    """Up to `count` (chosen, rejected) index pairs from groups of `k` responses laid out
    prompt-major: distinct groups in random order (cycling when `count` exceeds them), in each
    a random pair of responses whose gold rewards differ; a group of all-equal gold is skipped."""
    groups = list(range(0, len(responses), k))
    rng.shuffle(groups)
    pairs: list[tuple[int, int]] = []
    used: set[tuple[int, int]] = set()
    for start in groups * count:
        if len(pairs) == count:
            break
        gold = {i: gold_reward(prompts[i], responses[i]) for i in range(start, start + k)}
        candidates = [(a, b) for a in gold for b in gold
                      if a < b and gold[a] != gold[b] and (a, b) not in used]
        if not candidates:
            continue
        a, b = rng.choice(candidates)
        used.add((a, b))
        pairs.append((a, b) if gold[a] > gold[b] else (b, a))
    return pairs
