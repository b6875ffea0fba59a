"""`AsyncR2MClient`: the asyncio twin of `R2MClient`; split score batches go concurrently."""

from __future__ import annotations

import asyncio
from collections.abc import Generator, Sequence
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import httpx

from r2m_client._core import (
    BaseR2MClient,
    Call,
    Request,
    RequestLimits,
    check_response,
    transport_errors,
)
from r2m_client._encode import score_batch
from r2m_client._scorer import Scorer
from r2m_client._tensors import HiddenStates
from r2m_client.errors import R2MError
from r2m_client.types import Group, Pair, RunOptions
from r2m_proto import InfoResponse, RunInfo, ScoreResponse, UpdateResponse

if TYPE_CHECKING:
    from typing_extensions import Unpack

T = TypeVar("T")


class AsyncR2MClient(BaseR2MClient):
    """Asyncio r2m client; same constructor and methods as `R2MClient`, awaited."""

    _http_class: ClassVar[type[httpx.AsyncClient]] = httpx.AsyncClient
    _lock_class: ClassVar[type[asyncio.Lock]] = asyncio.Lock
    _http: httpx.AsyncClient
    _limits_lock: asyncio.Lock

    async def __aenter__(self) -> AsyncR2MClient:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()

    async def close(self) -> None:
        await self._http.aclose()

    async def health(self) -> bool:
        return await self._probe("/healthz")

    async def ready(self) -> bool:
        return await self._probe("/readyz")

    async def info(self) -> InfoResponse:
        return await self._run(self._info_call())

    async def create_run(
        self,
        policy_hidden_size: int,
        total_steps: int,
        *,
        run_id: str | None = None,
        **options: Unpack[RunOptions],
    ) -> RunInfo:
        return await self._run(self._create_run_call(policy_hidden_size, total_steps, run_id,
                                                     options))

    async def get_run(self, run_id: str) -> RunInfo:
        return await self._run(self._get_run_call(run_id))

    async def delete_run(self, run_id: str) -> None:
        await self._run(self._delete_run_call(run_id))

    async def checkpoint(self, run_id: str) -> bytes:
        return await self._run(self._checkpoint_call(run_id))

    async def save_checkpoint(self, run_id: str, path: str | PathLike[str]) -> Path:
        target = Path(path)
        await asyncio.to_thread(target.write_bytes, await self.checkpoint(run_id))
        return target

    async def score(
        self,
        run_id: str,
        prompts: Sequence[str],
        responses: Sequence[str],
        hidden_states: Sequence[HiddenStates | None] | None = None,
        *,
        step: int | None = None,
        min_version: int | None = None,
        split: bool = False,
    ) -> ScoreResponse:
        if split:
            return await self._drive(self._split_score(run_id, prompts, responses,
                                                       hidden_states, step, min_version))
        batch = score_batch(run_id, prompts, responses, hidden_states, step=step,
                            min_version=min_version)
        return await self._run(self._score_call(batch, await self._request_limits()))

    def scorer(self, run_id: str, *, step: int | None = None, min_version: int | None = None,
               max_in_flight: int = 8) -> Scorer:
        """Score as you go: `submit` each sample as its generation finishes, await its reward
        later (`r2m_client._scorer`); at most `max_in_flight` requests on the wire at once."""
        return Scorer(self, run_id, step=step, min_version=min_version,
                      max_in_flight=max_in_flight)

    async def update(
        self,
        run_id: str,
        *,
        groups: Sequence[Group] | None = None,
        pairs: Sequence[Pair] | None = None,
        step: int | None = None,
        idempotency_key: str | None = None,
        learning_rate: float | None = None,
        split: bool = False,
    ) -> UpdateResponse:
        if split:
            return await self._drive(self._split_update(run_id, groups, pairs, step,
                                                        idempotency_key, learning_rate))
        return await self._run(self._update_call(run_id, groups, pairs, step, idempotency_key,
                                                 learning_rate))

    async def _drive(self, protocol: Generator[Call[Any], Any, T]) -> T:
        """Run a multi-phase protocol: each phase's call, its answer (or error) sent back."""
        try:
            call = next(protocol)
            while True:
                try:
                    result = await self._run(call)
                except R2MError as error:
                    call = protocol.throw(error)
                else:
                    call = protocol.send(result)
        except StopIteration as done:
            return done.value

    async def _run(self, call: Call[T]) -> T:
        """Send the call's requests concurrently; on the first failure cancel the rest."""
        tasks = [asyncio.ensure_future(self._send(request)) for request in call.requests]
        try:
            answers = await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        return call.parse(answers)

    async def _request_limits(self) -> RequestLimits:
        """As `R2MClient._request_limits`: concurrent first score calls share one `/v1/info`."""
        if self._limits is None:
            async with self._limits_lock:
                if self._limits is None:
                    self._limits = await self._run(self._limits_call())
        return self._limits

    async def _probe(self, path: str) -> bool:
        try:
            await self._send(Request("GET", path), retry=False)
        except R2MError:
            return False
        return True

    async def _send(self, request: Request, *, retry: bool = True) -> httpx.Response:
        attempt = 0
        while True:
            try:
                outgoing = self._build(request, request.body.aslices() if request.body else None)
                with transport_errors(outgoing):
                    response = await self._http.send(outgoing)
                return check_response(response)
            except R2MError as error:
                delay = self._retry_delay(attempt, error) if retry else None
                if delay is None:
                    raise
            await asyncio.sleep(delay)
            attempt += 1
