"""Every Prometheus metric of the service, in one place (TEI's `prometheus.rs`).

Names follow TEI/vLLM; durations use TEI's 35 geometric buckets from 15 µs (×1.5). Each app owns
its registry, so several apps can live in one process (tests) without clashing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sized
from typing import Any, Protocol

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from r2m_service.allocator_stats import AllocatorCollector

DURATION_BUCKETS = tuple(1.5e-5 * 1.5**i for i in range(35))
LOSS_TERMS = ("loss", "bt_loss", "gre_loss")
SIZE_BUCKETS = tuple(float(2**i) for i in range(13))


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.request_duration = Histogram(
            "r2m_request_duration_seconds", "HTTP request latency.", ["route"],
            buckets=DURATION_BUCKETS, registry=r)
        self.request_failures = Counter(
            "r2m_request_failures_total", "Requests answered with an error, by route and reason "
            "(the HTTP status).", ["route", "reason"], registry=r)
        self.queue_size = Gauge(
            "r2m_queue_size", "Score items waiting in the batch queue.", registry=r)
        self.batch_size = Histogram(
            "r2m_batch_size", "Items per model batch.", buckets=SIZE_BUCKETS, registry=r)
        self.items_ahead = Histogram(
            "r2m_score_items_ahead", "Other requests' items batched ahead of a score request's "
            "last item (from the batch in flight at its arrival on): head-of-line blocking.",
            buckets=(0.0, *SIZE_BUCKETS), registry=r)
        self.score_phase = Histogram(
            "r2m_score_phase_seconds", "Where a /v1/score request's time goes outside the "
            "backbone: decode (read and parse the body into the schema), validate (hidden-state "
            "checks), tokenize (cache keys, cache lookups, tokenizer: summed over the request's "
            "chunks, the later ones overlapping its first batches), queue (from its last chunk's "
            "joining the queue until its rewards are back: waiting plus its model batches) and "
            "response (encoding the answer). /get_reward's scores add to validate, tokenize and "
            "queue.", ["phase"],
            buckets=DURATION_BUCKETS, registry=r)
        self.batch_tokens = Histogram(
            "r2m_batch_tokens", "Padded tokens per backbone batch (the token budget's unit).",
            buckets=tuple(float(2**i) for i in range(4, 18)), registry=r)
        self.backbone_duration = Histogram(
            "r2m_backbone_duration_seconds", "Backbone forward time per batch.",
            buckets=DURATION_BUCKETS, registry=r)
        self.module_duration = Histogram(
            "r2m_module_duration_seconds", "R2M module time per batch (score: forward; "
            "update: forward + backward + optimizer step).", ["phase"],
            buckets=DURATION_BUCKETS, registry=r)
        self.module_overhead = Histogram(
            "r2m_module_overhead_ratio", "R2M module time ÷ backbone time of the same score "
            "batch: what R2M adds on top of a vanilla RM.",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0),
            registry=r)
        self.rte_cache_hits = Counter(
            "r2m_rte_cache_hits_total", "RTE cache hits.", registry=r)
        self.rte_cache_misses = Counter(
            "r2m_rte_cache_misses_total", "RTE cache misses (backbone runs).", registry=r)
        self.rte_write_failures = Counter(
            "r2m_rte_cache_write_failures_total", "RTEs not written to the shared (Redis) cache: "
            "Redis failed, or the write buffer was full.", registry=r)
        self.update_loss = Gauge(
            "r2m_update_loss", "Loss terms of the latest update, at the pre-step weights.",
            ["run", "term"], registry=r)
        self.run_version = Gauge(
            "r2m_run_version", "Current version of each run.", ["run"], registry=r)
        self.runs = Gauge("r2m_runs", "Runs held by this process.", registry=r)
        # Reward diagnostics per run, from the rewards served at its latest scored RL step
        # (service/reward_diagnostics.py; beyond the paper).
        self.run_reward_mean = Gauge(
            "r2m_run_reward_mean", "Mean reward served at the run's latest scored step.",
            ["run"], registry=r)
        self.run_reward_std = Gauge(
            "r2m_run_reward_std", "Std of the rewards served at the run's latest scored step.",
            ["run"], registry=r)
        self.run_feedback_share = Gauge(
            "r2m_run_feedback_share", "Feedback branch's share of the reward variance, "
            "Var(fb) / (Var(fb) + Var(RTE)), at the run's latest scored step.", ["run"],
            registry=r)
        self.run_reward_scale_drift = Gauge(
            "r2m_run_reward_scale_drift", "Reward std at the latest scored step ÷ at the first "
            "one.", ["run"], registry=r)
        self.run_branch_std = Gauge(
            "r2m_run_branch_std", "Std of each branch's reward contribution (feedback: "
            "(1 − ω)·w·Ĥ; rte: ω·w·H_last + b).", ["run", "branch"], registry=r)
        self.run_weight_norm = Gauge(
            "r2m_run_weight_norm", "Norm of W_o (o_proj) and of ϕ's weight (head).",
            ["run", "tensor"], registry=r)
        self.body_bytes = Histogram(
            "r2m_request_body_bytes", "Request body size.", ["route"],
            buckets=tuple(float(4**i) for i in range(4, 16)), registry=r)
        # r2m_allocator_bytes{allocator,kind}: live bytes against what malloc holds, to tell a
        # leak from retention (service/allocator_stats.py).
        r.register(AllocatorCollector())

    def watch_capacity(self, runs: HeldRuns, store: Any, limits: Mapping[str, float]) -> None:
        """Gauges read at scrape time: runs held, their state bytes and the store's bytes in
        this process (`StateStore.usage`), next to the settings that bound each."""
        self.runs.set_function(lambda: len(runs))
        Gauge("r2m_run_state_bytes", "State bytes of the runs held (bounded by "
              "runs_memory_bytes).", registry=self.registry).set_function(
                  lambda: runs.held_bytes)
        self.registry.register(_UsageCollector(store))
        limit = Gauge("r2m_limit", "The settings that bound what grows with traffic, by "
                      "setting.", ["setting"], registry=self.registry)
        for name, value in limits.items():
            limit.labels(name).set(value)

    def watch_batching(self, sizer: BatchBudget) -> None:
        """Gauges read at scrape time: the score batches' token budget in force (learned or
        set) and, when learned, the measured tokens/s it was chosen from."""
        Gauge("r2m_batch_token_budget", "Token budget of a score batch (learned from forward "
              "timings unless score_batch_tokens sets it).",
              registry=self.registry).set_function(sizer.budget)
        Gauge("r2m_batch_overhead_seconds", "What a score batch costs on the model thread "
              "outside its backbone forwards (R2M modules, reward bookkeeping; moving "
              "average): the fixed cost that favours bigger batches.",
              registry=self.registry).set_function(
                  lambda: sizer.batch_overhead_s)
        self.registry.register(_RateCollector(sizer))

    def forget_run(self, run_id: str) -> None:
        """Drop a deleted run's labelled series so /metrics does not grow without bound."""
        series = [(self.run_version, (run_id,))]
        series += [(self.update_loss, (run_id, term)) for term in LOSS_TERMS]
        series += [(gauge, (run_id,)) for gauge in (
            self.run_reward_mean, self.run_reward_std, self.run_feedback_share,
            self.run_reward_scale_drift)]
        series += [(self.run_branch_std, (run_id, b)) for b in ("feedback", "rte")]
        series += [(self.run_weight_norm, (run_id, t)) for t in ("o_proj", "head")]
        for metric, labels in series:
            with contextlib.suppress(KeyError):
                metric.remove(*labels)


class HeldRuns(Sized, Protocol):
    """The run directory as the capacity gauges read it."""

    @property
    def held_bytes(self) -> int: ...


class BatchBudget(Protocol):
    """The batch sizer as the batching gauges read it."""

    rates: Mapping[int, float]
    batch_overhead_s: float

    def budget(self) -> int: ...


class _RateCollector(Collector):
    """`r2m_forward_tokens_per_second{budget}`: the sizer's measured rate per candidate."""

    def __init__(self, sizer: BatchBudget) -> None:
        self._sizer = sizer

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("r2m_forward_tokens_per_second", "Backbone tokens/s measured "
                                   "near each candidate batch budget (padded tokens); the "
                                   "budget is the smallest within the tolerance of the best.",
                                   labels=["budget"])
        for budget, rate in sorted(self._sizer.rates.items()):
            family.add_metric([str(budget)], rate)
        yield family


class _UsageCollector(Collector):
    """`r2m_store_bytes{kind}` from the store's own count at each scrape."""

    def __init__(self, store: Any) -> None:
        self._store = store

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily("r2m_store_bytes", "Bytes this process holds for the state "
                                   "store, by kind (rte_cache, idempotency).", labels=["kind"])
        for kind, value in self._store.usage().items():
            family.add_metric([kind], value)
        yield family
