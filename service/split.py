"""Split mode on the server (the protocol is in `proto/split.py`): the phases of a score and of
an update when the trainer keeps the policy's hidden states and ships `[D_p]` vectors instead.

Between phases the server keeps only the contexts c, under a short-lived token
(`context_tokens.py`), so the update need not resend what the score sent. Everything else is
recomputed or cached: each phase finds its samples' RTEs in the RTE cache (or recomputes them),
recomputes the module's forward from the contexts, and checks that the run is still at the
version the query phase answered, so one score or update never mixes two versions.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from r2m_proto.schemas import UpdateResponse
from r2m_proto.split import (
    ContextRef,
    SplitGradientRequest,
    SplitGradientResponse,
    SplitQueryRequest,
    SplitQueryResponse,
    SplitScoreRequest,
    SplitScoreResponse,
    SplitUpdateRequest,
)
from r2m_proto.tensors import TensorView, WireTensor
from r2m_service.context_tokens import ContextEntry, sample_digest
from r2m_service.engine import Engine
from r2m_service.errors import InvalidInput, StaleContextToken, VersionConflict
from r2m_service.hidden_states import HiddenStateResolver
from r2m_service.runs import Run
from r2m_service.samples import Sample, UpdateBatch, prepare, stack_rtes
from r2m_service.text_format import TextPair

Tensors = dict[str, TensorView] | None
# How an answer carries a vector: (field name, vector) → inline or named (http's `AnswerTensors`)
VectorSink = Callable[[str, TensorView], WireTensor | str]


@dataclass(frozen=True)
class ContextBatch:
    """An update's samples with their contexts (and, for the step, ∂L/∂u), in sample order."""

    batch: UpdateBatch
    contexts: torch.Tensor  # [B, D_p] float32
    query_grads: torch.Tensor | None  # [B, D_p] float32; None in the gradient phase
    inline: bool  # whether any context came in the request (rather than from a token)


class SplitPhases:
    """The four split-mode phases, over the engine's threads, caches and runs."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def query(self, request: SplitQueryRequest, sink: VectorSink) -> SplitQueryResponse:
        engine = self._engine
        run = await engine.runs.current(request.run_id, request.min_version)
        samples = await engine.on_prep(self._prepare_texts, request)
        async with run.gate.read():
            step, omega_t = run.step_and_omega(request.step)
            queries = await engine.on_model(self._queries, run, samples)
            version = run.version
        return SplitQueryResponse(
            version=version, step=step, omega=omega_t,
            queries=[sink(f"queries.{i}", _view(u)) for i, u in enumerate(queries)])

    async def score(self, request: SplitScoreRequest, tensors: Tensors) -> SplitScoreResponse:
        engine = self._engine
        run = await engine.runs.current(request.run_id)
        samples, contexts = await engine.on_prep(self._prepare_contexts, request, run, tensors)
        async with run.gate.read():
            _check_version(run, request.version)
            step, omega_t = run.step_and_omega(request.step)
            rewards = await engine.on_model(self._rewards, run, samples, contexts, omega_t)
        token = await self._keep(request.run_id, request.version, samples, contexts)
        return SplitScoreResponse(rewards=rewards, version=request.version, step=step,
                                  omega=omega_t, context_token=token)

    async def gradient(self, request: SplitGradientRequest, tensors: Tensors,
                       sink: VectorSink) -> SplitGradientResponse:
        engine = self._engine
        run = await engine.runs.current(request.run_id)
        work = await engine.on_prep(self._prepare_update, request, run, tensors)
        async with run.gate.read():
            _check_version(run, request.version)
            _, omega_t = run.step_and_omega(request.step)
            loss, grads = await engine.on_model(self._context_grads, run, work, omega_t)
        token = (await self._keep(request.run_id, request.version, work.batch.samples,
                                  work.contexts) if work.inline else None)
        return SplitGradientResponse(
            version=request.version, loss=loss, context_token=token,
            context_grads=[sink(f"context_grads.{i}", _view(g)) for i, g in enumerate(grads)])

    async def update(self, request: SplitUpdateRequest, tensors: Tensors,
                     idempotency_key: str | None) -> UpdateResponse:
        engine = self._engine
        run = await engine.runs.current(request.run_id)
        work = await engine.on_prep(self._prepare_update, request, run, tensors)

        def train(current: Run) -> UpdateResponse:
            _check_version(current, request.version)
            return self._step(current, request, work)

        return await engine.runs.update(run, idempotency_key, train)

    async def _keep(self, run_id: str, version: int, samples: Sequence[Sample],
                    contexts: torch.Tensor) -> str | None:
        """A token for the contexts just used, for the phases that follow (written to Redis,
        where there is one, before the answer naming it leaves)."""
        entry = ContextEntry(run_id, version, tuple(sample_digest(s.text.prompt, s.text.response)
                                                    for s in samples), contexts.detach().cpu())
        return await asyncio.to_thread(self._engine.store.contexts.put, entry)

    # ---- preparation thread -------------------------------------------------------------------

    def _prepare_texts(self, request: SplitQueryRequest) -> list[Sample]:
        samples = [Sample(TextPair(item.prompt, item.response, f"items[{i}].response"), None)
                   for i, item in enumerate(request.items)]
        return self._prepared(samples)

    def _prepare_contexts(self, request: SplitScoreRequest, run: Run,
                          tensors: Tensors) -> tuple[list[Sample], torch.Tensor]:
        resolver = HiddenStateResolver(run.config.policy_hidden_size, tensors)
        samples, contexts = [], []
        for i, item in enumerate(request.items):
            samples.append(Sample(TextPair(item.prompt, item.response, f"items[{i}].response"),
                                  None))
            contexts.append(resolver.resolve_vector(item.context, f"items[{i}].context"))
        resolver.check_all_used()
        return self._prepared(samples), torch.stack(contexts).float()

    def _prepare_update(self, request: SplitGradientRequest, run: Run,
                        tensors: Tensors) -> ContextBatch:
        resolver = HiddenStateResolver(run.config.policy_hidden_size, tensors)
        held = _HeldContexts(self._engine.store.contexts.get, request.run_id, request.version)
        samples, contexts, labels, sizes = [], [], [], []

        def add(text: TextPair, context: WireTensor | str | ContextRef, field: str) -> None:
            samples.append(Sample(text, None))
            contexts.append(held.resolve(context, text, field) if isinstance(context, ContextRef)
                            else resolver.resolve_vector(context, field))

        for i, pair in enumerate(request.pairs or []):
            for side in ("chosen", "rejected"):
                add(TextPair(pair.prompt, getattr(pair, side), f"pairs[{i}].{side}"),
                    getattr(pair, f"{side}_context"), f"pairs[{i}].{side}_context")
        for g, group in enumerate(request.groups or []):
            for k, (response, context) in enumerate(zip(group.responses, group.contexts,
                                                        strict=True)):
                add(TextPair(group.prompt, response, f"groups[{g}].responses[{k}]"), context,
                    f"groups[{g}].contexts[{k}]")
            labels.append(None if group.scores is None else torch.tensor(group.scores))
            sizes.append(len(group.responses))
        query_grads = None
        if isinstance(request, SplitUpdateRequest):
            if len(request.query_grads) != len(samples):
                raise _count_mismatch(len(request.query_grads), len(samples))
            query_grads = torch.stack([resolver.resolve_vector(v, f"query_grads[{i}]")
                                       for i, v in enumerate(request.query_grads)]).float()
        resolver.check_all_used()
        batch = UpdateBatch(self._prepared(samples), labels if sizes else None,
                            sizes if sizes else None)
        return ContextBatch(batch, torch.stack(contexts).float(), query_grads,
                            inline=len(held) < len(samples))

    def _prepared(self, samples: list[Sample]) -> list[Sample]:
        return prepare(samples, self._engine.backbone, self._engine.store.rte_cache)

    # ---- model thread ------------------------------------------------------------------------

    def _rte(self, samples: list[Sample]) -> torch.Tensor:
        self._engine.fill_rtes(samples)
        return stack_rtes(samples, self._engine.backbone.device)

    def _queries(self, run: Run, samples: list[Sample]) -> torch.Tensor:
        rte = self._rte(samples)
        started = time.perf_counter()
        with torch.no_grad():
            queries = run.module.policy_query(rte).float().cpu()
        self._engine.observe_module("score", started)
        return queries

    def _rewards(self, run: Run, samples: list[Sample], contexts: torch.Tensor,
                 omega_t: float) -> list[float]:
        rte = self._rte(samples)
        started = time.perf_counter()
        with torch.no_grad():
            rewards = run.module.forward_from_context(rte, contexts.to(rte.device), omega_t)
        self._engine.observe_module("score", started)
        return rewards.float().cpu().tolist()

    def _context_grads(self, run: Run, work: ContextBatch,
                       omega_t: float) -> tuple[float, torch.Tensor]:
        """The loss at the current weights and ∂L/∂c; the module's gradients are not kept."""
        rte = self._rte(work.batch.samples)
        contexts = work.contexts.to(rte.device).detach().requires_grad_(True)  # not in place
        rewards = run.module.forward_from_context(rte, contexts, omega_t)
        terms = work.batch.loss_terms(rewards, run.config.alpha)
        (grads,) = torch.autograd.grad(terms.loss, contexts, allow_unused=True)
        if grads is None:  # ω = 1: the reward does not read the contexts at all
            grads = torch.zeros_like(contexts)
        return terms.loss.item(), grads.float().cpu()

    def _step(self, run: Run, request: SplitUpdateRequest, work: ContextBatch) -> UpdateResponse:
        """The full mode's step: the loss with the contexts held fixed gives W_v, W_o and ϕ
        their gradients; u·∂L/∂u (∂L/∂u fixed) gives W_q and W_k theirs, through u alone."""
        step, omega_t = run.step_and_omega(request.step)
        rte = self._rte(work.batch.samples)
        started = time.perf_counter()
        rewards = run.module.forward_from_context(rte, work.contexts.to(rte.device), omega_t)
        terms = work.batch.loss_terms(rewards, run.config.alpha)
        assert work.query_grads is not None
        surrogate = None  # at ω = 1 the attention is unused: W_q, W_k get no gradient at all,
        if omega_t < 1.0:  # exactly as in full mode (a zero one would still tick AdamW's step)
            surrogate = (run.module.policy_query(rte) * work.query_grads.to(rte.device)).sum()
        return self._engine.take_step(run, step, omega_t, terms, request.learning_rate, started,
                                      surrogate)


def _check_version(run: Run, version: int) -> None:
    if run.version != version:
        raise VersionConflict(run.run_id, run.version, version)


def _count_mismatch(given: int, samples: int) -> InvalidInput:
    return InvalidInput(f"query_grads has {given} vectors for {samples} samples; expected one "
                        "per sample, in sample order", "query_grads")


class _HeldContexts:
    """The contexts a request names by token, each token fetched once; a reference must name a
    token of this run at this version, and an entry made for the same sample."""

    def __init__(self, fetch: Callable[[str], ContextEntry | None], run_id: str,
                 version: int) -> None:
        self._fetch = fetch
        self._run_id = run_id
        self._version = version
        self._entries: dict[str, ContextEntry] = {}
        self._resolved = 0

    def __len__(self) -> int:
        return self._resolved

    def resolve(self, ref: ContextRef, text: TextPair, field: str) -> torch.Tensor:
        entry = self._entries.get(ref.token) or self._fetch(ref.token)
        if entry is None:
            raise StaleContextToken(f"context token {ref.token!r} is unknown or expired; send "
                                    "the contexts again (restart from /v1/split/query)",
                                    f"{field}.token")
        if (entry.run_id, entry.version) != (self._run_id, self._version):
            raise StaleContextToken(f"context token {ref.token!r} holds contexts of run "
                                    f"{entry.run_id} at version {entry.version}, not of run "
                                    f"{self._run_id} at version {self._version}",
                                    f"{field}.token")
        self._entries[ref.token] = entry
        if ref.index >= len(entry.samples):
            raise InvalidInput(f"context token {ref.token!r} holds {len(entry.samples)} "
                               f"contexts; index {ref.index} is past its end", f"{field}.index")
        if entry.samples[ref.index] != sample_digest(text.prompt, text.response):
            raise InvalidInput(f"entry {ref.index} of context token {ref.token!r} is the context "
                               "of another sample (prompt, response)", f"{field}.index")
        self._resolved += 1
        return entry.contexts[ref.index]


def _view(vector: torch.Tensor) -> TensorView:
    """A CPU float32 vector (as the model thread returns them) as the wire's view over its own
    memory: no copy before the answer is encoded."""
    array = vector.contiguous().numpy()
    return TensorView("float32", array.shape, memoryview(array).cast("B"))
