"""Score as you go: a rollout worker submits each sample the moment its generation finishes and
gets an awaitable reward back, so scoring overlaps generation instead of waiting for the batch.

Requests go out at once while fewer than `max_in_flight` are on the wire (the server's batcher
coalesces concurrent requests, from this worker and every other); past that, samples wait and
leave together as one request when a slot frees. So a trickle of finished generations costs one
small request each, and a burst becomes a few large ones instead of hundreds of tiny ones.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

from r2m_client._tensors import HiddenStates

if TYPE_CHECKING:
    from r2m_client._async import AsyncR2MClient


@dataclass(frozen=True)
class _Pending:
    prompt: str
    response: str
    hidden_states: HiddenStates | None
    reward: asyncio.Future[float]


class Scorer:
    """Made by `AsyncR2MClient.scorer(run_id, ...)`; `submit` returns an awaitable reward.

    Use it as an async context manager: leaving the block waits until every submitted sample
    is scored (or failed), so nothing is left running. A failed request fails the futures of
    the samples it carried, and only those.
    """

    def __init__(self, client: AsyncR2MClient, run_id: str, *, step: int | None,
                 min_version: int | None, max_in_flight: int) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self._client = client
        self._run_id = run_id
        self._step = step
        self._min_version = min_version
        self._max_in_flight = max_in_flight
        self._waiting: list[_Pending] = []
        self._sending: set[asyncio.Task[None]] = set()
        self._submitted: list[asyncio.Future[float]] = []

    def submit(self, prompt: str, response: str,
               hidden_states: HiddenStates | None = None) -> asyncio.Future[float]:
        """Queue one sample for scoring; its reward arrives on the returned future."""
        reward: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Pending(prompt, response, hidden_states, reward))
        self._submitted.append(reward)
        self._send_waiting()
        return reward

    async def wait(self) -> None:
        """Until every sample submitted so far has its reward or its error."""
        await asyncio.gather(*self._submitted, return_exceptions=True)

    async def __aenter__(self) -> Scorer:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.wait()

    def _send_waiting(self) -> None:
        if self._waiting and len(self._sending) < self._max_in_flight:
            batch, self._waiting = self._waiting, []
            task = asyncio.ensure_future(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sent)

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self._send_waiting()

    async def _send(self, batch: list[_Pending]) -> None:
        hidden = ([p.hidden_states for p in batch]
                  if any(p.hidden_states is not None for p in batch) else None)
        try:
            scored = await self._client.score(
                self._run_id, [p.prompt for p in batch], [p.response for p in batch], hidden,
                step=self._step, min_version=self._min_version)
        except Exception as exc:
            for pending in batch:
                if not pending.reward.done():
                    pending.reward.set_exception(exc)
            return
        for pending, reward in zip(batch, scored.rewards, strict=True):
            if not pending.reward.done():
                pending.reward.set_result(reward)
