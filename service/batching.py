"""Concurrent /v1/score requests in, model batches out (TEI's `queue.rs`).

- Items from many requests (and runs) share one backbone pass under a token budget (padded cost
  = longest × count, like TEI) and a max batch size; cached RTEs cost no tokens. The budget comes
  from `BatchSizer`: the smallest batch past which the backbone's throughput stops growing, so a
  newcomer waits for at most about one small batch (service/batch_sizing.py).
- Fair: each item goes to the queued request that has had the fewest items batched so far (ties:
  the earlier request), so concurrent requests advance in step, round-robin, and a 512-item
  request cannot starve an 8-item one. A newcomer starts one item behind the least-served request
  queued: it rides in the very next batch, then takes its turn like the others. An item that
  would break the budget waits for the next batch (FIFO per request).
- Counted: each request learns how many other requests' items were batched ahead of its last one
  (`ScoreJob.items_ahead`, from the batch in flight at its arrival on): head-of-line blocking as
  a number, independent of how fast the machine is.
- No max wait: the next batch forms the moment the model thread is free, and requests that came
  while it was busy are exactly what fills it (measured: a positive wait only costs; see
  docs/measurements.md).
- Bounded: past `max_queued_items` a request is refused with 429 rather than queued for ever.
- A request whose client left is dropped from the queue (its future is cancelled).
- Streamed: a request is queued before it is tokenized and its items arrive in chunks
  (`ScoreQueue.extend`), so its first batch runs while the rest is still being tokenized
  (`Engine.score`); a batch only takes items that are ready.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import Counter
from dataclasses import dataclass, field

from r2m_service.batch_sizing import BatchSizer
from r2m_service.errors import Overloaded
from r2m_service.runs import Run
from r2m_service.samples import Sample, token_count


@dataclass(eq=False)
class ScoreJob:
    """One /v1/score request waiting for, or spread over, model batches."""

    run: Run
    samples: list[Sample]
    omega: float
    future: asyncio.Future[list[float]]
    step: int = 0  # the RL step it is scored at (reward diagnostics tally by step)
    size: int = 0  # items in the request; 0: all of them are in `samples` already
    rewards: list[float] = field(default_factory=list)
    next_item: int = 0  # first item not yet handed to a batch
    done_items: int = 0
    served: int = 0  # fair-share tag: items batched, counted from its start position
    items_ahead: int = 0  # other requests' items batched before its last item's batch ended

    def __post_init__(self) -> None:
        self.size = self.size or len(self.samples)
        self.rewards = [0.0] * self.size

    @property
    def ready(self) -> int:
        """Prepared items not yet handed to a batch."""
        return max(0, len(self.samples) - self.next_item)

    @property
    def unbatched(self) -> int:
        """Items not yet handed to a batch, prepared or not."""
        return self.size - self.next_item

    def deliver(self, index: int, reward: float) -> None:
        self.rewards[index] = reward
        self.done_items += 1
        if self.done_items == self.size and not self.future.done():
            self.future.set_result(self.rewards)


@dataclass(frozen=True)
class BatchItem:
    job: ScoreJob
    index: int

    @property
    def sample(self) -> Sample:
        return self.job.samples[self.index]


class ScoreQueue:
    def __init__(self, *, max_queued_items: int, sizer: BatchSizer, max_batch_size: int,
                 interleave: bool = True) -> None:
        self.max_queued_items = max_queued_items
        self.sizer = sizer
        self.max_batch_size = max_batch_size
        self.interleave = interleave  # False: one request per batch (the "batcher off" baseline)
        self._jobs: list[ScoreJob] = []  # in arrival order, each with items left to batch
        self._queued_items = 0
        self._in_flight = 0  # items of the batch the model thread is running
        self._wakeup = asyncio.Event()

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def put(self, job: ScoreJob) -> None:
        """Queue a request: all its items count against `max_queued_items` from now on, ready
        or not, so an overloaded server refuses before it spends time tokenizing."""
        if self._queued_items + job.size > self.max_queued_items and self._jobs:
            raise Overloaded(self._queued_items, self.max_queued_items)
        if self._jobs:  # one item ahead of the least-served request, then in step with it
            job.served = max(0, min(j.served for j in self._jobs) - 1)
        job.items_ahead = self._in_flight
        self._jobs.append(job)
        self._queued_items += job.size
        self._wakeup.set()

    def extend(self, job: ScoreJob, samples: list[Sample]) -> None:
        """More prepared items of a queued request, in order."""
        job.samples.extend(samples)
        self._wakeup.set()

    def cancel(self, job: ScoreJob) -> None:
        """Forget a request whose client is gone (or whose preparation failed); items already
        in a batch still finish."""
        if job in self._jobs:
            self._jobs.remove(job)
            self._queued_items -= job.unbatched
            job.next_item = job.size
            self._wakeup.set()  # without interleaving, the next request may be ready to go

    async def next_batch(self) -> list[BatchItem]:
        """The next batch; calling it says the previous one has finished."""
        self._in_flight = 0
        while not (jobs := self._ready_jobs()):
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._form_batch(jobs)

    def _ready_jobs(self) -> list[tuple[int, ScoreJob]]:
        """(arrival order, request) of the requests the next batch may take from now."""
        jobs = self._jobs if self.interleave else self._jobs[:1]
        return [(order, job) for order, job in enumerate(jobs) if job.ready]

    def _form_batch(self, jobs: list[tuple[int, ScoreJob]]) -> list[BatchItem]:
        budget = self.sizer.next_budget()
        turns = [(job.served, order, job) for order, job in jobs]
        heapq.heapify(turns)  # least served first; ties by arrival
        items: list[BatchItem] = []
        longest, backbone_items = 0, 0
        while turns and len(items) < self.max_batch_size:
            job = turns[0][2]
            tokens = token_count(job.samples[job.next_item])
            if tokens:
                cost = max(longest, tokens) * (backbone_items + 1)
                if items and cost > budget:
                    break  # carried to the next batch
                longest, backbone_items = max(longest, tokens), backbone_items + 1
            items.append(BatchItem(job, job.next_item))
            job.next_item += 1
            job.served += 1
            if job.ready:
                heapq.heapreplace(turns, (job.served, turns[0][1], job))
            else:
                heapq.heappop(turns)
        return self._take(items)

    def _take(self, items: list[BatchItem]) -> list[BatchItem]:
        per_job = Counter(item.job for item in items)
        for job in self._jobs:  # every queued request waits for this batch's other items
            job.items_ahead += len(items) - per_job[job]
        self._queued_items -= len(items)
        self._in_flight = len(items)
        self._jobs = [j for j in self._jobs if j.unbatched]
        return items
