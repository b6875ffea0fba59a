"""The one entry point that ties backbone, runs, caches and the model thread together (TEI's
`infer.rs`). Knows nothing of HTTP.

All torch work runs on one model thread, so the event loop never blocks on it and runs never race
on a module; per-run asyncio locks order updates and make idempotency checks atomic. Hidden-state
checks (finiteness over every element) run in the default thread pool, beside the model thread.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import torch

from r2m_proto.errors import WireError
from r2m_proto.schemas import (
    CreateRunRequest,
    RunInfo,
    ScoreRequest,
    ScoreResponse,
    UpdateRequest,
    UpdateResponse,
)
from r2m_proto.tensors import TensorView
from r2m_service.backbone import Backbone
from r2m_service.hidden_states import HiddenStateResolver
from r2m_service.idempotency import IdempotencyStore
from r2m_service.losses import LossTerms, grebt, pairwise_bt
from r2m_service.metrics import Metrics
from r2m_service.r2m_module import omega, pad_hidden_states
from r2m_service.rte_cache import LRUCache, rte_key
from r2m_service.runs import Run, RunRegistry, build_run, new_run_id, resolve_config
from r2m_service.text_format import TextPair

T = TypeVar("T")


@dataclass(frozen=True)
class Sample:
    """One (prompt, response) with its policy hidden states, ready for the model thread."""

    text: TextPair
    hidden: torch.Tensor | None


class Engine:
    def __init__(self, backbone: Backbone, metrics: Metrics, *, rte_cache_size: int,
                 idempotency_ttl_s: float) -> None:
        self.backbone = backbone
        self.metrics = metrics
        self.runs = RunRegistry()
        self._rte_cache = LRUCache(rte_cache_size)
        self._idempotency = IdempotencyStore(idempotency_ttl_s)
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="r2m-model")

    def close(self) -> None:
        self._model_thread.shutdown(wait=True, cancel_futures=True)

    # ---- runs -------------------------------------------------------------------------------

    async def create_run(self, request: CreateRunRequest) -> RunInfo:
        config = resolve_config(request, self.backbone.hidden_size)
        run = await self._on_model_thread(
            build_run, new_run_id(), config, self.backbone.hidden_size, self.backbone.identity,
            self.backbone.initial_head(), self.backbone.device)
        self.runs.add(run)
        self.metrics.runs.set(len(self.runs))
        self.metrics.run_version.labels(run.run_id).set(run.version)
        return run.info()

    def get_run(self, run_id: str) -> RunInfo:
        return self.runs.get(run_id).info()

    def delete_run(self, run_id: str) -> None:
        self.runs.delete(run_id)
        self.metrics.runs.set(len(self.runs))
        self.metrics.forget_run(run_id)

    async def checkpoint(self, run_id: str) -> bytes:
        run = self.runs.get(run_id)
        async with run.lock:
            return await self._on_model_thread(run.checkpoint)

    # ---- score ------------------------------------------------------------------------------

    async def score(self, request: ScoreRequest,
                    body_tensors: dict[str, TensorView] | None) -> ScoreResponse:
        run = self.runs.get(request.run_id)
        samples = await asyncio.to_thread(_score_samples, request, run, body_tensors)
        step = run.step if request.step is None else request.step
        omega_t = omega(step, run.config.total_steps, run.config.omega_floor)
        rewards, version = await self._on_model_thread(self._score_now, run, samples, omega_t)
        return ScoreResponse(rewards=rewards, version=version, step=step, omega=omega_t)

    def _score_now(self, run: Run, samples: list[Sample],
                   omega_t: float) -> tuple[list[float], int]:
        rte = self._rtes(samples)
        started = time.perf_counter()
        with torch.no_grad():
            rewards = self._rewards(run, rte, samples, omega_t)
        self._observe_module("score", started)
        self.metrics.batch_size.observe(len(samples))
        return rewards.float().cpu().tolist(), run.version

    # ---- update -----------------------------------------------------------------------------

    async def update(self, request: UpdateRequest, body_tensors: dict[str, TensorView] | None,
                     idempotency_key: str | None) -> UpdateResponse:
        run = self.runs.get(request.run_id)
        samples, labels, group_sizes = await asyncio.to_thread(
            _update_samples, request, run, body_tensors)
        async with run.lock:
            if idempotency_key is not None:
                previous = self._idempotency.get(run.run_id, idempotency_key)
                if previous is not None:
                    return previous
            response = await self._on_model_thread(
                self._update_now, run, request.step, samples, labels, group_sizes)
            if idempotency_key is not None:
                self._idempotency.put(run.run_id, idempotency_key, response)
        self.metrics.run_version.labels(run.run_id).set(response.version)
        for term in ("loss", "bt_loss", "gre_loss"):
            value = getattr(response, term)
            if value is not None:
                self.metrics.update_loss.labels(run.run_id, term).set(value)
        return response

    def _update_now(self, run: Run, step: int | None, samples: list[Sample],
                    labels: list[torch.Tensor | None] | None,
                    group_sizes: list[int] | None) -> UpdateResponse:
        """One optimizer step. Nothing about the run changes unless every check passed."""
        step = run.step if step is None else step
        omega_t = omega(step, run.config.total_steps, run.config.omega_floor)
        rte = self._rtes(samples)
        started = time.perf_counter()
        rewards = self._rewards(run, rte, samples, omega_t)
        terms = _objective(rewards, labels, group_sizes, run.config.alpha)
        if not bool(torch.isfinite(terms.loss)):
            raise WireError("the loss is not finite for this batch; the run was not changed",
                            "body")
        run.optimizer.zero_grad(set_to_none=True)
        terms.loss.backward()
        grad_norm = torch.nn.utils.get_total_norm(
            [p.grad for p in run.module.parameters() if p.grad is not None])
        run.optimizer.step()
        run.step = step + 1
        run.version += 1
        self._observe_module("update", started)
        return UpdateResponse(
            version=run.version, step=run.step, loss=terms.loss.item(),
            bt_loss=terms.bt_loss.item(),
            gre_loss=None if terms.gre_loss is None else terms.gre_loss.item(), omega=omega_t,
            grad_norm=grad_norm.item())

    # ---- shared model-thread helpers --------------------------------------------------------

    def _rtes(self, samples: Sequence[Sample]) -> torch.Tensor:
        """RTEs for every sample: cached ones reused, the rest from one backbone pass."""
        keys = [rte_key(self.backbone.identity, s.text.prompt, s.text.response) for s in samples]
        cached = self._rte_cache.get_many(keys)
        missing = [i for i, value in enumerate(cached) if value is None]
        self.metrics.rte_cache_hits.inc(len(samples) - len(missing))
        self.metrics.rte_cache_misses.inc(len(missing))
        rte = torch.empty(len(samples), self.backbone.hidden_size, device=self.backbone.device)
        if missing:
            started = time.perf_counter()
            encoded = self.backbone.formatter.encode([samples[i].text for i in missing])
            fresh = self.backbone.embed(encoded)
            self._synchronize()
            self.metrics.backbone_duration.observe(time.perf_counter() - started)
            self._rte_cache.put_many([keys[i] for i in missing], fresh)
            rte[missing] = fresh
        hits = [i for i, value in enumerate(cached) if value is not None]
        if hits:
            rte[hits] = torch.stack([cached[i] for i in hits])
        return rte

    def _rewards(self, run: Run, rte: torch.Tensor, samples: Sequence[Sample],
                 omega_t: float) -> torch.Tensor:
        """Rewards in sample order; samples without hidden states get ϕ(H_last)."""
        with_hidden = [i for i, s in enumerate(samples) if s.hidden is not None]
        if len(with_hidden) == len(samples):
            padded, mask = pad_hidden_states([s.hidden for s in samples], rte.device)
            return run.module(rte, padded, mask, omega_t)
        rewards = run.module(rte, None, None, omega_t)
        if with_hidden:
            padded, mask = pad_hidden_states([samples[i].hidden for i in with_hidden], rte.device)
            rewards = rewards.index_put((torch.tensor(with_hidden, device=rte.device),),
                                        run.module(rte[with_hidden], padded, mask, omega_t))
        return rewards

    def _observe_module(self, phase: str, started: float) -> None:
        self._synchronize()
        self.metrics.module_duration.labels(phase).observe(time.perf_counter() - started)

    def _synchronize(self) -> None:
        if self.backbone.device.type == "cuda":
            torch.cuda.synchronize(self.backbone.device)

    async def _on_model_thread(self, fn: Callable[..., T], *args: object) -> T:
        self.metrics.queue_size.inc()
        loop = asyncio.get_running_loop()

        def run() -> T:
            self.metrics.queue_size.dec()
            return fn(*args)

        return await loop.run_in_executor(self._model_thread, run)


def _score_samples(request: ScoreRequest, run: Run,
                   body_tensors: dict[str, TensorView] | None) -> list[Sample]:
    resolver = HiddenStateResolver(run.config.policy_hidden_size, body_tensors)
    samples = []
    for i, item in enumerate(request.items):
        field = f"items[{i}]"
        hidden = (None if item.hidden_states is None
                  else resolver.resolve(item.hidden_states, f"{field}.hidden_states"))
        samples.append(Sample(TextPair(item.prompt, item.response, f"{field}.response"), hidden))
    resolver.check_all_used()
    return samples


def _update_samples(request: UpdateRequest, run: Run, body_tensors: dict[str, TensorView] | None
                    ) -> tuple[list[Sample], list[torch.Tensor | None] | None, list[int] | None]:
    """Flatten groups (or pairs: chosen, rejected, …) into samples, with each group's labels."""
    resolver = HiddenStateResolver(run.config.policy_hidden_size, body_tensors)
    samples: list[Sample] = []
    if request.pairs is not None:
        for i, pair in enumerate(request.pairs):
            for side in ("chosen", "rejected"):
                hidden = resolver.resolve(getattr(pair, f"{side}_hidden"),
                                          f"pairs[{i}].{side}_hidden")
                text = TextPair(pair.prompt, getattr(pair, side), f"pairs[{i}].{side}")
                samples.append(Sample(text, hidden))
        resolver.check_all_used()
        return samples, None, None
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
    return samples, labels, sizes


def _objective(rewards: torch.Tensor, labels: list[torch.Tensor | None] | None,
               group_sizes: list[int] | None, alpha: float) -> LossTerms:
    if group_sizes is None:  # pairs: chosen, rejected interleaved
        return pairwise_bt(rewards[0::2], rewards[1::2])
    groups = list(torch.split(rewards, group_sizes))
    chosen_by = [g.detach() if lab is None else lab
                 for g, lab in zip(groups, labels or [], strict=True)]
    return grebt(groups, chosen_by, alpha)
