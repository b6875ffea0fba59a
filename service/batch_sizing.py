"""How many tokens a /v1/score model batch holds, learned from what the backbone's forwards cost.

Why: a request that arrives while the model thread is busy waits for the batch in flight, then
shares the next one. So a batch should be no bigger than throughput needs. On a CPU a forward of
4 sequences already runs at the backbone's full tokens/s, and a 64-item batch only makes every
newcomer wait 16× longer; on a GPU throughput keeps growing with the batch, and batches stay big.

- Cost unit: padded tokens (longest × count), the queue's own token budget (TEI's), so long and
  short texts are sized alike and cached items, which cost no forward, never count.
- Rule: candidate budgets are powers of two from 16 tokens up to `max_batch_tokens`. Each keeps
  the tokens/s of its `RECENT` latest forwards (those nearest its size in log scale) and counts
  the fastest: a neighbour's load or a GIL wait only ever slows a forward down, so the fastest
  recent one is the batch's own cost (a moving average let contended small batches look slow
  and the budget drift to 2048 tokens on a busy host). A batch also costs a fixed amount on the
  model thread outside its forward (the R2M modules, reward bookkeeping), measured on every score
  batch (the least of the recent ones); it weighs most on a fast backbone. The budget is
  the smallest candidate whose rate with that fixed cost added is within `tolerance` of the
  best: the smallest batch past which throughput stops growing.
- Thread hand-offs between batches are not counted: timed as a batch's whole cycle less its
  forwards, on a busy 2-core host they were mostly waits for other requests' work on the event
  loop, and counting them grew the learned budget from 512 to 2048 tokens and a small request's
  wait from 0.24 to 0.7 s (docs/measurements.md).
- Where the timings come from: a short probe at start-up (batches of 1, 2, 4 … copies of one
  synthetic pair, until throughput stops growing) and then every forward served (scores and
  updates). Every `EXPLORE_EVERY`-th batch gets twice, or half, the budget, so the neighbours of
  the choice stay measured as the machine's load changes.
- Or a setting (`score_batch_tokens`) fixes the budget: no probe, no exploration.
"""

from __future__ import annotations

import math
import time
from collections import deque

from r2m_service.backbone import Backbone
from r2m_service.text_format import TextPair

MIN_BUDGET = 16
EXPLORE_EVERY = 16  # batches between two exploring ones (alternately 2× and ½× the budget)
RECENT = 32  # forwards (and batch overheads) remembered per candidate
PROBE_WORDS = 12  # words per side of the probe's pair: about 32 tokens for MiniLM's tokenizer
PROBE_SECONDS = 3.0  # the probe stops growing its batches past this much forward time


class BatchSizer:
    """The token budget of the next score batch (see the module docstring)."""

    def __init__(self, max_tokens: int, tolerance: float, fixed: int | None = None) -> None:
        self.max_tokens = max_tokens
        self.tolerance = tolerance
        self.fixed = None if fixed is None else min(fixed, max_tokens)
        self.candidates = _candidates(max_tokens)
        self._rates: dict[int, deque[float]] = {}  # candidate budget → recent tokens/s
        self._overheads: deque[float] = deque(maxlen=RECENT)  # model-thread s per batch
        self._batches = 0

    @property
    def learned(self) -> bool:
        return self.fixed is None

    def observe(self, padded_tokens: int, seconds: float) -> None:
        """Remember one forward's tokens/s for the nearest candidate."""
        if not self.learned or seconds <= 0 or padded_tokens <= 0:
            return
        candidate = self._nearest(padded_tokens)
        self._rates.setdefault(candidate, deque(maxlen=RECENT)).append(
            padded_tokens / seconds)

    def observe_overhead(self, seconds: float) -> None:
        """Fold in what one score batch cost on the model thread besides its forwards."""
        if self.learned:
            self._overheads.append(seconds)

    @property
    def rates(self) -> dict[int, float]:
        """Tokens/s per measured candidate: its fastest recent forward."""
        return {c: max(recent) for c, recent in self._rates.items()}

    @property
    def batch_overhead_s(self) -> float:
        """Model-thread seconds of a score batch outside its forwards: the least recent one."""
        return min(self._overheads, default=0.0)

    def effective_rates(self) -> dict[int, float]:
        """Tokens/s per candidate with the fixed cost of a batch added."""
        return {c: c / (c / rate + self.batch_overhead_s) for c, rate in self.rates.items()}

    def budget(self) -> int:
        """The smallest candidate within `tolerance` of the best measured tokens/s; with no
        timings yet, `max_tokens` (the queue's plain limit)."""
        if self.fixed is not None:
            return self.fixed
        rates = self.effective_rates()
        if not rates:
            return self.max_tokens
        floor = (1 - self.tolerance) * max(rates.values())
        return min(c for c, rate in rates.items() if rate >= floor)

    def next_budget(self) -> int:
        """The budget of the batch about to form: `budget()`, except that every
        `EXPLORE_EVERY`-th batch (learned budgets only) tries the next candidate up or down."""
        budget = self.budget()
        if self.fixed is not None:
            return budget
        self._batches += 1
        if self._batches % EXPLORE_EVERY:
            return budget
        step = 2 if (self._batches // EXPLORE_EVERY) % 2 else 0.5
        return max(MIN_BUDGET, min(self.max_tokens, int(budget * step)))

    def _nearest(self, tokens: int) -> int:
        return min(self.candidates, key=lambda c: abs(math.log2(c) - math.log2(tokens)))

    def probe(self, backbone: Backbone, max_sequences: int) -> None:
        """Time forwards of 1, 2, 4 … copies of one synthetic pair (the fastest of two per
        size) until a doubling stops paying twice in a row, the budget or the batch size is
        reached, or `PROBE_SECONDS` of forwards have run. Also warms the backbone up."""
        if not self.learned:
            return
        words = " ".join(["probe"] * PROBE_WORDS)
        encoded = backbone.formatter.encode([TextPair(words, words, "probe")])
        backbone.embed(encoded)  # warm-up: the first forward pays for lazy initialisation
        length = len(encoded[0].input_ids)
        spent, best, flat, n = 0.0, 0.0, 0, 1
        while n <= max_sequences and n * length <= self.max_tokens and flat < 2:
            started = time.perf_counter()
            seconds = min(backbone.embed(encoded * n).seconds for _ in range(2))
            spent += time.perf_counter() - started
            self.observe(n * length, seconds)
            rate = n * length / seconds
            flat = flat + 1 if rate < (1 + self.tolerance) * best else 0
            best = max(best, rate)
            if spent > PROBE_SECONDS:
                break
            n *= 2


def _candidates(max_tokens: int) -> list[int]:
    """Powers of two from `MIN_BUDGET`, and `max_tokens` itself."""
    out = [MIN_BUDGET]
    while out[-1] * 2 < max_tokens:
        out.append(out[-1] * 2)
    return sorted({*out, max(MIN_BUDGET, max_tokens)})
