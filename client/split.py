"""Split mode's trainer-side math (see `r2m_proto.split`): a few vector products over the
policy's hidden states, on the device they already live on (the GPU, in real use).

Needs torch (the client's `[hf]` extra); the base client stays torch-free because nothing
imports this module unless `split=True` is asked for.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from r2m_client.errors import R2MInputError
from r2m_proto.split import ContextRef


@dataclass(frozen=True)
class Attention:
    """One sample's attention over its own hidden states, kept for the backward phase."""

    hidden: torch.Tensor  # [S, D_p] float32, on the caller's device
    weights: torch.Tensor  # a = softmax(h·u) [S]
    context: torch.Tensor  # c = aᵀh [D_p]

    def query_gradient(self, context_grad: torch.Tensor) -> torch.Tensor:
        """∂L/∂u = Σ_s a_s (g·h_s − g·c) h_s: g = ∂L/∂c pulled back through c = softmax(h·u)ᵀh
        (the softmax Jacobian, applied here because only here is h)."""
        g = context_grad.to(self.hidden.device, torch.float32)
        logit_grads = self.weights * (self.hidden @ g - self.context @ g)  # ∂L/∂(h·u) [S]
        return logit_grads @ self.hidden


def attend(hidden: object, query: torch.Tensor, field: str) -> Attention:
    """The attention of one sample: `hidden` `[S, D_p]` (torch, any float dtype), `query` u
    `[D_p]` from the server. The math runs in float32, as the server's does."""
    if not isinstance(hidden, torch.Tensor):
        raise R2MInputError("split mode computes on the caller's device: expected a torch "
                            f"tensor [S, D_p] for every item, got {type(hidden).__name__}",
                            field=field)
    if hidden.dim() != 2 or hidden.shape[0] == 0 or hidden.shape[1] != query.shape[0]:
        raise R2MInputError(f"expected hidden states [S ≥ 1, D_p={query.shape[0]}], got "
                            f"{list(hidden.shape)}", field=field)
    states = hidden.detach().to(torch.float32)
    weights = torch.softmax(states @ query.to(states.device), dim=0)
    return Attention(states, weights, weights @ states)


@dataclass(frozen=True)
class _Entry:
    version: int
    query: torch.Tensor  # u [D_p], CPU
    context: torch.Tensor | None  # the c the score sent [D_p], CPU float32
    ref: ContextRef | None  # where the server keeps that c


@dataclass(frozen=True)
class Recalled:
    """What a score left for the update of the same samples, all at one version."""

    version: int
    queries: list[torch.Tensor]
    _entries: list[_Entry]

    def context_refs(self, attention: Sequence[Attention]) -> list[ContextRef] | None:
        """The server's copies of the contexts, if it holds every one and each equals, bit for
        bit, the context computed now (the same hidden states as at the score); else None: the
        contexts go inline, so a reference can never stand for a different c."""
        refs = []
        for entry, now in zip(self._entries, attention, strict=True):
            if entry.ref is None or entry.context is None \
                    or not torch.equal(entry.context, now.context.cpu()):
                return None
            refs.append(entry.ref)
        return refs


class QueryCache:
    """The u vectors of recent score calls, per run version, so the update of the same samples
    (the next thing an RL step does) can skip its query phase: u depends only on the sample's
    text and the module's version, so while no update lands in between, it is still exact. If
    one did, the server answers 409 and the update asks afresh. With each u, the context the
    score sent and the server's token for it, so the update need not send it again. Bounded by
    bytes, LRU."""

    def __init__(self, max_bytes: int = 64 * 1024 * 1024) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str, str], _Entry] = OrderedDict()
        self._bytes = 0

    def put(self, run_id: str, version: int, prompts: Sequence[str], responses: Sequence[str],
            queries: Sequence[torch.Tensor], contexts: Sequence[torch.Tensor] | None = None,
            token: str | None = None) -> None:
        """`contexts` (in sample order) were sent with the score that answered `token`."""
        for i, (prompt, response, query) in enumerate(zip(prompts, responses, queries,
                                                          strict=True)):
            old = self._entries.pop((run_id, prompt, response), None)
            if old is not None:
                self._bytes -= _nbytes(old)
            entry = _Entry(version, query.cpu(),
                           None if contexts is None else contexts[i].detach().cpu(),
                           None if token is None else ContextRef(token=token, index=i))
            self._entries[(run_id, prompt, response)] = entry
            self._bytes += _nbytes(entry)
        while self._bytes > self.max_bytes and self._entries:
            self._bytes -= _nbytes(self._entries.popitem(last=False)[1])

    def get(self, run_id: str, prompts: Sequence[str], responses: Sequence[str]
            ) -> Recalled | None:
        """Every sample's entry if all are cached at one version, else None."""
        found = [self._entries.get((run_id, p, r)) for p, r in zip(prompts, responses,
                                                                    strict=True)]
        entries = [f for f in found if f is not None]
        if not found or len(entries) < len(found) or len({e.version for e in entries}) != 1:
            return None
        return Recalled(entries[0].version, [e.query for e in entries], entries)


def _nbytes(entry: _Entry) -> int:
    return entry.query.nbytes + (0 if entry.context is None else entry.context.nbytes)


def attend_all(hidden: Sequence[object], queries: Sequence[torch.Tensor],
               fields: Sequence[str]) -> list[Attention]:
    return [attend(h, u, f) for h, u, f in zip(hidden, queries, fields, strict=True)]
