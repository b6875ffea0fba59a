"""Requests → samples: one (prompt, response) with its checked hidden states, its RTE cache key,
and either its cached RTE or its token ids for the backbone.

Runs on the preparation thread (never the event loop, never the model thread), so a batch that
reaches the model thread is pure tensor work, and a bad item fails only its own request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from r2m_proto.schemas import ScoreRequest, UpdateRequest
from r2m_proto.tensors import TensorView
from r2m_service.backbone import Backbone
from r2m_service.hidden_states import HiddenStateResolver
from r2m_service.losses import LossTerms, grebt, pairwise_bt
from r2m_service.rte_cache import LRUCache, rte_key
from r2m_service.text_format import Encoded, TextPair


@dataclass
class Sample:
    text: TextPair
    hidden: torch.Tensor | None
    key: str = ""
    rte: torch.Tensor | None = None  # from the cache, or filled in by the backbone
    encoded: Encoded | None = None  # token ids, when the backbone must run


@dataclass(frozen=True)
class UpdateBatch:
    """An update's samples (groups flattened in order; pairs as chosen, rejected, …)."""

    samples: list[Sample]
    labels: list[torch.Tensor | None] | None  # per group: scores that pick winner and loser
    group_sizes: list[int] | None  # None for pairs

    def loss_terms(self, rewards: torch.Tensor, alpha: float) -> LossTerms:
        """The update's objective over `rewards` in sample order: BT over labelled pairs, or
        GREBT over groups (winner and loser picked by the annotation scores, else by the
        rewards themselves)."""
        if self.group_sizes is None:  # pairs: chosen, rejected interleaved
            return pairwise_bt(rewards[0::2], rewards[1::2])
        groups = list(torch.split(rewards, self.group_sizes))
        chosen_by = [g.detach() if labels is None else labels
                     for g, labels in zip(groups, self.labels or [], strict=True)]
        return grebt(groups, chosen_by, alpha)


def prepare(samples: list[Sample], backbone: Backbone, cache: LRUCache) -> list[Sample]:
    """Attach cache keys and cached RTEs, and tokenize the rest (errors name the item)."""
    for sample in samples:
        sample.key = rte_key(backbone.identity, sample.text.prompt, sample.text.response)
    for sample, rte in zip(samples, cache.get_many([s.key for s in samples]), strict=True):
        sample.rte = rte
    missing = [s for s in samples if s.rte is None]
    if missing:
        for sample, encoded in zip(missing, backbone.formatter.encode([s.text for s in missing]),
                                   strict=True):
            sample.encoded = encoded
    return samples


# A score request is tokenized in chunks that join the batch queue one by one (`Engine.score`):
# the first is small, so the first batch starts soon; none is over 256 items, so another request's
# preparation waits behind at most one chunk on the preparation thread (a few ms), while each
# tokenizer call stays big enough that its fixed cost and the thread hand-off (~0.1 ms) are noise.
FIRST_CHUNK, MAX_CHUNK = 64, 256


def preparation_chunks(samples: list[Sample]) -> list[list[Sample]]:
    """`samples` in order, in chunks of 64, 128, then 256."""
    chunks, start, size = [], 0, FIRST_CHUNK
    while start < len(samples):
        chunks.append(samples[start:start + size])
        start, size = start + size, min(2 * size, MAX_CHUNK)
    return chunks


def score_samples(request: ScoreRequest, policy_hidden_size: int,
                  body_tensors: dict[str, TensorView] | None) -> list[Sample]:
    resolver = HiddenStateResolver(policy_hidden_size, body_tensors)
    samples = []
    for i, item in enumerate(request.items):
        hidden = (None if item.hidden_states is None
                  else resolver.resolve(item.hidden_states, f"items[{i}].hidden_states"))
        samples.append(Sample(TextPair(item.prompt, item.response, f"items[{i}].response"),
                              hidden))
    resolver.check_all_used()
    return samples


def update_samples(request: UpdateRequest, policy_hidden_size: int,
                   body_tensors: dict[str, TensorView] | None) -> UpdateBatch:
    resolver = HiddenStateResolver(policy_hidden_size, body_tensors)
    samples: list[Sample] = []
    if request.pairs is not None:
        for i, pair in enumerate(request.pairs):
            for side in ("chosen", "rejected"):
                hidden = resolver.resolve(getattr(pair, f"{side}_hidden"),
                                          f"pairs[{i}].{side}_hidden")
                samples.append(Sample(TextPair(pair.prompt, getattr(pair, side),
                                               f"pairs[{i}].{side}"), hidden))
        resolver.check_all_used()
        return UpdateBatch(samples, None, None)
    labels: list[torch.Tensor | None] = []
    sizes = []
    for g, group in enumerate(request.groups or []):
        for k, (response, value) in enumerate(zip(group.responses, group.hidden_states,
                                                  strict=True)):
            hidden = resolver.resolve(value, f"groups[{g}].hidden_states[{k}]")
            samples.append(Sample(TextPair(group.prompt, response, f"groups[{g}].responses[{k}]"),
                                  hidden))
        labels.append(None if group.scores is None else torch.tensor(group.scores))
        sizes.append(len(group.responses))
    resolver.check_all_used()
    return UpdateBatch(samples, labels, sizes)


def token_count(sample: Sample) -> int:
    """Backbone tokens a sample costs (0 when its RTE is cached)."""
    return 0 if sample.encoded is None else len(sample.encoded.input_ids)


def stack_rtes(samples: Sequence[Sample], device: torch.device) -> torch.Tensor:
    """One `[B, D_rm]` tensor on `device` (shared-cache RTEs arrive on the CPU). One copy to
    the device for the whole batch when the RTEs share a device (the usual case), not a
    `.to` per item."""
    rtes: list[torch.Tensor] = [s.rte for s in samples]  # type: ignore[misc]
    first = rtes[0].device
    if all(r.device == first for r in rtes):
        return torch.stack(rtes).to(device)
    return torch.stack([r.to(device) for r in rtes])
