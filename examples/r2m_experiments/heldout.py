"""The fixed held-out set of gold-labelled pairs that every step's RM is measured on (issue 9 §2;
the paper's "RM accuracy on held-out pairs", 72.3 → 77.4).

Two kinds of pairs, drawn once per seed (the same for every arm and step):

- *natural*: two reviews from the SFT distribution (each with the sign-off a quarter of the
  time, independently), the gold reward picks the chosen one; ties are skipped;
- *cue*: one review without and with the sign-off, nothing else differs; gold prefers the one
  without. The proxy's fitted head prefers the sign-off (the planted blind spot), so this is
  where an RM that "follows the policy's shift" would have to improve.

An R2M reward needs the policy's hidden states of the text, so each step scores the pairs with
the *current* policy's states at the step's ω(t): the RM exactly as it rewarded that step.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from .gold import gold_reward
from .metrics import discrepancy
from .task import PRODUCTS, STOCK_PHRASE, PreferencePair, prompt_for, sample_review

SFT_SIGN_OFF_RATE = 0.25  # as in the SFT corpus


@dataclass(frozen=True)
class HeldOut:
    natural: list[PreferencePair]
    cue: list[PreferencePair]

    @property
    def pairs(self) -> list[PreferencePair]:
        return [*self.natural, *self.cue]

    def texts(self) -> tuple[list[str], list[str]]:
        """Prompts and responses to score: chosen, rejected of each pair, in order."""
        prompts = [p.prompt for p in self.pairs for _ in range(2)]
        responses = [r for p in self.pairs for r in (p.chosen, p.rejected)]
        return prompts, responses


def held_out_pairs(seed: int, natural: int, cue: int) -> HeldOut:
    """The seed's held-out pairs (its own random stream, so no other draw shifts them)."""
    rng = random.Random(f"heldout/{seed}")
    natural_pairs: list[PreferencePair] = []
    while len(natural_pairs) < natural:
        product = rng.choice(PRODUCTS)
        prompt = prompt_for(product)
        a, b = (sample_review(rng, product, sign_off_rate=SFT_SIGN_OFF_RATE) for _ in range(2))
        gold_a, gold_b = gold_reward(prompt, a), gold_reward(prompt, b)
        if gold_a != gold_b:
            natural_pairs.append(PreferencePair(prompt, *((a, b) if gold_a > gold_b else (b, a))))
    cue_pairs = []
    for _ in range(cue):
        product = rng.choice(PRODUCTS)
        review = sample_review(rng, product, sign_off_rate=0.0)
        cue_pairs.append(PreferencePair(prompt_for(product), review, f"{review} {STOCK_PHRASE}"))
    return HeldOut(natural_pairs, cue_pairs)


def evaluate(held_out: HeldOut, rewards: Sequence[float]) -> dict[str, float]:
    """Accuracy (chosen scored strictly higher) on the natural and the cue pairs, and the
    proxy–gold discrepancy over every held-out text; `rewards` in `texts()` order."""
    chosen, rejected = rewards[0::2], rewards[1::2]
    wins = [c > r for c, r in zip(chosen, rejected, strict=True)]
    n = len(held_out.natural)
    prompts, responses = held_out.texts()
    gold = [gold_reward(p, r) for p, r in zip(prompts, responses, strict=True)]
    return {"heldout_accuracy": sum(wins[:n]) / n,
            "heldout_cue_accuracy": sum(wins[n:]) / max(1, len(wins) - n),
            "heldout_discrepancy": discrepancy(list(rewards), gold)}
