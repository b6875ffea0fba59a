"""The one entry point that ties backbone, runs, caches, the batcher and the threads together
(TEI's `infer.rs`). Knows nothing of HTTP.

Threads: the event loop only routes; a preparation thread checks hidden states, looks up the
RTE cache and tokenizes (one thread, because a fast tokenizer must not be used concurrently);
the model thread does all torch work, so runs never race on a module. Scores go through the
micro-batcher; updates go straight to the model thread inside the run's write gate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import torch

from r2m_proto.schemas import (
    CreateRunRequest,
    RunConfig,
    RunInfo,
    ScoreRequest,
    ScoreResponse,
    UpdateRequest,
    UpdateResponse,
)
from r2m_proto.tensors import TensorView
from r2m_service.backbone import Backbone, Embedded
from r2m_service.batch_sizing import BatchSizer
from r2m_service.batching import BatchItem, ScoreJob, ScoreQueue
from r2m_service.checkpoint_import import checkpoint_weights, load_weights
from r2m_service.errors import InvalidInput
from r2m_service.guards import optimizer_step
from r2m_service.losses import LossTerms
from r2m_service.metrics import LOSS_TERMS, Metrics
from r2m_service.reward_diagnostics import observe_scores
from r2m_service.run_directory import RunDirectory
from r2m_service.run_limits import RunLimits
from r2m_service.runs import Run, build_run
from r2m_service.samples import (
    Sample,
    UpdateBatch,
    preparation_chunks,
    prepare,
    score_samples,
    stack_rtes,
    update_samples,
)
from r2m_service.settings import Settings
from r2m_service.state import StateStore

T = TypeVar("T")
log = logging.getLogger(__name__)


class Engine:
    def __init__(self, backbone: Backbone, metrics: Metrics, settings: Settings,
                 store: StateStore) -> None:
        self.backbone = backbone
        self.metrics = metrics
        self.store = store
        self.sizer = BatchSizer(settings.max_batch_tokens, settings.batch_throughput_tolerance,
                                settings.score_batch_tokens)
        self.queue = ScoreQueue(max_queued_items=settings.max_queued_items, sizer=self.sizer,
                                max_batch_size=settings.max_batch_size,
                                interleave=settings.batching)
        metrics.watch_batching(self.sizer)
        self._rte_cache = store.rte_cache
        self._model_thread = ThreadPoolExecutor(1, thread_name_prefix="r2m-model")
        self.runs = RunDirectory(store, self.on_model, reward_hidden_size=backbone.hidden_size,
                                 device=backbone.device,
                                 min_version_wait_s=settings.min_version_wait_s,
                                 limits=RunLimits.from_settings(settings),
                                 on_forget=metrics.forget_run)
        metrics.watch_capacity(self.runs, store, settings.bounds())
        self._prep_thread = ThreadPoolExecutor(1, thread_name_prefix="r2m-prep")
        self._batcher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.on_model(self.sizer.probe, self.backbone, self.queue.max_batch_size)
        log.info("score batches: a %d-token budget (%s)", self.sizer.budget(),
                 "learned from forward timings" if self.sizer.learned else "set")
        self._batcher = asyncio.create_task(self._batch_loop(), name="r2m-batcher")
        restored = await self.runs.start()
        if restored:
            log.info("restored %d runs from the state store", restored)

    async def close(self) -> None:
        if self._batcher is not None:
            self._batcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._batcher
        self._prep_thread.shutdown(wait=True, cancel_futures=True)
        self._model_thread.shutdown(wait=True, cancel_futures=True)
        await self.store.close()

    # ---- runs -------------------------------------------------------------------------------

    async def create_run(self, request: CreateRunRequest) -> tuple[RunInfo, bool]:
        """(the run, whether it was created now); see `RunDirectory.create`."""
        info, created = await self.runs.create(request, self._build_run)
        if created:
            self.metrics.run_version.labels(info.run_id).set(info.version)
        return info, created

    def _build_run(self, run_id: str, config: RunConfig) -> Run:
        return build_run(run_id, config, self.backbone.hidden_size, self.backbone.identity,
                         self.backbone.initial_head(), self.backbone.device)

    async def get_run(self, run_id: str) -> RunInfo:
        return (await self.runs.current(run_id)).info()

    async def delete_run(self, run_id: str) -> None:
        await self.runs.delete(run_id)  # its per-run metrics go with it (`on_forget`)

    async def checkpoint(self, run_id: str) -> bytes:
        run = await self.runs.current(run_id)
        async with run.gate.read():
            return await self.on_model(run.checkpoint)

    async def import_checkpoint(self, run_id: str, tensors: dict[str, TensorView]) -> RunInfo:
        """The run at a new version with these weights (checked before the run is locked)."""
        run = await self.runs.current(run_id)
        weights = await self.on_model(checkpoint_weights, run, tensors)
        info = await self.runs.replace(run, lambda current: load_weights(current, weights))
        self.metrics.run_version.labels(run_id).set(info.version)
        return info

    # ---- score ------------------------------------------------------------------------------

    async def score(self, request: ScoreRequest,
                    body_tensors: dict[str, TensorView] | None) -> ScoreResponse:
        """Checks every item first (a bad one refuses the request before the backbone sees it),
        then tokenizes the request in growing chunks that join the queue one by one: its first
        batch runs while the rest is tokenized, and other requests' preparation interleaves
        with its chunks on the one preparation thread."""
        run = await self.runs.current(request.run_id, request.min_version)
        chunks, tokenizing = await self.on_prep(self._prepare_score, request, run, body_tensors)
        async with run.gate.read():  # version, step and ω of one response belong together
            step, omega_t = run.step_and_omega(request.step)
            job = ScoreJob(run, chunks[0], omega_t, asyncio.get_running_loop().create_future(),
                           step, size=len(request.items))
            self.queue.put(job)
            self.metrics.queue_size.set(self.queue.queued_items)
            try:
                for chunk in chunks[1:]:
                    tokenizing += await self.on_prep(self._prepare_chunk, chunk)
                    self.queue.extend(job, chunk)
                self.metrics.score_phase.labels("tokenize").observe(tokenizing)
                queued = time.perf_counter()
                rewards = await job.future
            except BaseException:  # the client left or an item failed: stop spending work on it
                self.queue.cancel(job)
                job.future.cancel()
                self.metrics.queue_size.set(self.queue.queued_items)
                raise
            self.metrics.score_phase.labels("queue").observe(time.perf_counter() - queued)
            self.metrics.items_ahead.observe(job.items_ahead)
            version = run.version
        return ScoreResponse(rewards=rewards, version=version, step=step, omega=omega_t)

    async def _batch_loop(self) -> None:
        """Form and run batches for ever; a failing batch fails its requests, never the loop."""
        while True:
            batch = await self.queue.next_batch()
            self.metrics.queue_size.set(self.queue.queued_items)
            try:
                await self._run_batch([item for item in batch if not item.job.future.done()])
            except Exception:  # the batch's requests got the error; keep serving the rest
                log.exception("score batch failed")

    async def _run_batch(self, items: list[BatchItem]) -> None:
        if not items:
            return
        try:
            rewards = await self.on_model(self._score_batch, items)
        except Exception as exc:
            for job in {item.job for item in items}:
                if not job.future.done():
                    job.future.set_exception(exc)
            raise
        for item, reward in zip(items, rewards, strict=True):
            item.job.deliver(item.index, reward)

    def _score_batch(self, items: Sequence[BatchItem]) -> list[float]:
        """One model batch: a backbone pass for the uncached items of every request in it, then
        each run's module over its own items (batched per run and ω)."""
        samples = [item.sample for item in items]
        backbone_seconds = self.fill_rtes(samples)
        started = time.perf_counter()
        rewards = torch.empty(len(items))
        groups: dict[tuple[int, float], list[int]] = defaultdict(list)
        for position, item in enumerate(items):
            groups[(id(item.job.run), item.job.omega)].append(position)
        with torch.no_grad():
            for positions in groups.values():
                job = items[positions[0]].job
                chosen = [samples[p] for p in positions]
                rewards[positions] = self._rewards(job.run, chosen, job.omega).float().cpu()
                observe_scores(job.run, [items[p] for p in positions], rewards[positions],
                               self.metrics)
        module_seconds = self.observe_module("score", started)
        self.sizer.observe_overhead(module_seconds)
        self.metrics.batch_size.observe(len(items))
        if backbone_seconds > 0:
            self.metrics.module_overhead.observe(module_seconds / backbone_seconds)
        return rewards.tolist()

    # ---- update -----------------------------------------------------------------------------

    async def update(self, request: UpdateRequest, body_tensors: dict[str, TensorView] | None,
                     idempotency_key: str | None) -> UpdateResponse:
        run = await self.runs.current(request.run_id)
        batch = await self.on_prep(self._prepare_update, request, run,
                               body_tensors)
        response = await self.runs.update(
            run, idempotency_key,
            lambda current: self._update_now(current, request.step, batch, request.learning_rate))
        self.metrics.run_version.labels(run.run_id).set(response.version)
        for term in LOSS_TERMS:
            value = getattr(response, term)
            if value is not None:
                self.metrics.update_loss.labels(run.run_id, term).set(value)
        return response

    def _update_now(self, run: Run, step: int | None, batch: UpdateBatch,
                    learning_rate: float | None = None) -> UpdateResponse:
        """One optimizer step. Nothing about the run changes unless every check passed."""
        step, omega_t = run.step_and_omega(step)
        self.fill_rtes(batch.samples)
        started = time.perf_counter()
        rewards = self._rewards(run, batch.samples, omega_t)
        terms = batch.loss_terms(rewards, run.config.alpha)
        return self.take_step(run, step, omega_t, terms, learning_rate, started)

    def take_step(self, run: Run, step: int, omega_t: float, terms: LossTerms,
                  learning_rate: float | None, started: float,
                  surrogate: torch.Tensor | None = None) -> UpdateResponse:
        """Backward, step, advance: the end of every update (full and split mode). A non-finite
        loss changes nothing. `surrogate` adds gradient paths the loss cannot see (split mode's
        u·∂L/∂u), without entering the reported loss."""
        if not bool(torch.isfinite(terms.loss)):
            raise InvalidInput("the loss is not finite for this batch; the run was not changed",
                               "body")
        run.optimizer.zero_grad(set_to_none=True)
        (terms.loss if surrogate is None else terms.loss + surrogate).backward()
        grad_norm = optimizer_step(run.optimizer, run.module, run.config.max_grad_norm,
                                   learning_rate)
        run.advance(step)
        self.observe_module("update", started)
        return UpdateResponse(
            version=run.version, step=run.step, loss=terms.loss.item(),
            bt_loss=terms.bt_loss.item(),
            gre_loss=None if terms.gre_loss is None else terms.gre_loss.item(), omega=omega_t,
            grad_norm=grad_norm.item())

    # ---- shared helpers ---------------------------------------------------------------------

    def _prepare_score(self, request: ScoreRequest, run: Run,
                       body_tensors: dict[str, TensorView] | None
                       ) -> tuple[list[list[Sample]], float]:
        """Every item checked, then the first chunk prepared (one thread hop for a small
        request): the request's chunks and the seconds spent preparing."""
        with self.metrics.score_phase.labels("validate").time():
            samples = score_samples(request, run.config.policy_hidden_size, body_tensors)
        chunks = preparation_chunks(samples)
        return chunks, self._prepare_chunk(chunks[0])

    def _prepare_chunk(self, samples: list[Sample]) -> float:
        """Cache lookups and tokenizing for some of a request's samples; returns the seconds."""
        started = time.perf_counter()
        prepare(samples, self.backbone, self._rte_cache)
        return time.perf_counter() - started

    def _prepare_update(self, request: UpdateRequest, run: Run,
                        body_tensors: dict[str, TensorView] | None) -> UpdateBatch:
        batch = update_samples(request, run.config.policy_hidden_size, body_tensors)
        prepare(batch.samples, self.backbone, self._rte_cache)
        return batch

    def fill_rtes(self, samples: Sequence[Sample]) -> float:
        """Backbone pass for samples without an RTE (each distinct text once); cache them.
        Returns the backbone's seconds."""
        hits = sum(s.rte is not None for s in samples)
        self.metrics.rte_cache_hits.inc(hits)
        self.metrics.rte_cache_misses.inc(len(samples) - hits)
        unique: dict[str, Sample] = {}
        for sample in samples:
            if sample.rte is None:
                unique.setdefault(sample.key, sample)
        if not unique:
            return 0.0
        embedded = self.backbone.embed([s.encoded for s in unique.values()])  # type: ignore[misc]
        self._observe_forward(embedded)
        rows = list(embedded.rtes.unbind())
        self._rte_cache.put_many(list(unique), rows)
        by_key = dict(zip(unique, rows, strict=True))
        for sample in samples:
            if sample.rte is None:
                sample.rte = by_key[sample.key]
        return embedded.seconds

    def _rewards(self, run: Run, samples: Sequence[Sample], omega_t: float) -> torch.Tensor:
        """Rewards in sample order; samples without hidden states get ϕ(H_last)."""
        rte = stack_rtes(samples, self.backbone.device)
        with_hidden = [i for i, s in enumerate(samples) if s.hidden is not None]
        if len(with_hidden) == len(samples):
            return run.module(rte, [s.hidden for s in samples], omega_t)
        rewards = run.module(rte, None, omega_t)
        if with_hidden:
            index = torch.tensor(with_hidden, device=rte.device)
            fed_back = run.module(rte[index], [samples[i].hidden for i in with_hidden], omega_t)
            rewards = rewards.index_put((index,), fed_back)
        return rewards

    def _observe_forward(self, embedded: Embedded) -> None:
        for forward in embedded.passes:
            self.sizer.observe(forward.padded_tokens, forward.seconds)
            self.metrics.batch_tokens.observe(forward.padded_tokens)
            self.metrics.backbone_duration.observe(forward.seconds)

    def observe_module(self, phase: str, started: float) -> float:
        if self.backbone.device.type == "cuda":
            torch.cuda.synchronize(self.backbone.device)
        seconds = time.perf_counter() - started
        self.metrics.module_duration.labels(phase).observe(seconds)
        return seconds

    async def _on(self, thread: ThreadPoolExecutor, fn: Callable[..., T], *args: object) -> T:
        return await asyncio.get_running_loop().run_in_executor(thread, fn, *args)

    async def on_prep(self, fn: Callable[..., T], *args: object) -> T:
        """Run on the preparation thread: request checks, cache lookups, tokenizing."""
        return await self._on(self._prep_thread, fn, *args)

    async def on_model(self, fn: Callable[..., T], *args: object) -> T:
        """Run on the model thread, where all torch work on runs happens."""
        return await self._on(self._model_thread, fn, *args)
