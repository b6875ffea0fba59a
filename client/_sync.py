"""`R2MClient`: the blocking client, for trainers that call the service from their own loop."""

from __future__ import annotations

import threading
import time
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
from r2m_client._tensors import HiddenStates
from r2m_client.errors import R2MError
from r2m_client.types import Group, Pair, RunOptions
from r2m_proto import InfoResponse, RunInfo, ScoreResponse, UpdateResponse

if TYPE_CHECKING:
    from typing_extensions import Unpack

T = TypeVar("T")


class R2MClient(BaseR2MClient):
    """Blocking r2m client; split score batches are sent one after another.

    ```python
    with R2MClient("http://rm:8000") as rm:
        run = rm.create_run(policy_hidden_size=4096, total_steps=1000)
        out = rm.score(run.run_id, prompts, responses, hidden_states, step=t)
    ```
    Constructor: `base_url` (the server's root, without `/v1`), `timeout` (seconds or
    `httpx.Timeout`), `retries` (count or `RetryPolicy`), `binary` (safetensors body instead of
    JSON+base64), `api_key` (sent as a bearer token), `max_request_bytes` / `max_request_items`
    (score batches are split under both; by default the server's limits from `/v1/info`, asked
    once, with requests of at most `DEFAULT_MAX_REQUEST_BYTES`), `headers`.
    """

    _http_class: ClassVar[type[httpx.Client]] = httpx.Client
    _lock_class: ClassVar[type[threading.Lock]] = threading.Lock
    _http: httpx.Client
    _limits_lock: threading.Lock

    def __enter__(self) -> R2MClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def health(self) -> bool:
        """Whether the server process answers `GET /healthz` (one try, no retries)."""
        return self._probe("/healthz")

    def ready(self) -> bool:
        """Whether the server can serve (backbone loaded, store reachable): `GET /readyz`."""
        return self._probe("/readyz")

    def info(self) -> InfoResponse:
        """The backbone, its dims and the server's limits."""
        return self._run(self._info_call())

    def create_run(
        self,
        policy_hidden_size: int,
        total_steps: int,
        *,
        run_id: str | None = None,
        **options: Unpack[RunOptions],
    ) -> RunInfo:
        """Create a run: a fresh R2M module for one training job.

        `options` are the run's other settings (`RunOptions`: omega_floor, alpha, learning_rate,
        ...); each left out gets the schema's default, and the answer's `config` shows every
        value in force. `run_id` names the run (default: a fresh unique id); creating an
        existing id with the same settings returns that run, so retries and restarted trainers
        are safe."""
        return self._run(self._create_run_call(policy_hidden_size, total_steps, run_id, options))

    def get_run(self, run_id: str) -> RunInfo:
        return self._run(self._get_run_call(run_id))

    def delete_run(self, run_id: str) -> None:
        self._run(self._delete_run_call(run_id))

    def checkpoint(self, run_id: str) -> bytes:
        """The run's trainable tensors as safetensors file bytes (step/version in metadata)."""
        return self._run(self._checkpoint_call(run_id))

    def save_checkpoint(self, run_id: str, path: str | PathLike[str]) -> Path:
        """Write `checkpoint(run_id)` to `path` and return it."""
        target = Path(path)
        target.write_bytes(self.checkpoint(run_id))
        return target

    def score(
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
        """Rewards for prompt/response pairs, one per item, in order.

        `hidden_states[i]` is the policy's last-layer hidden states [S_i, D_p] for item i (numpy
        float32/float16 or torch float32/float16/bfloat16); an item without them gets the
        backbone-only reward. `min_version` waits until the run has at least that version.

        `split=True` keeps the hidden states here (torch tensors, on their own device): the
        server sends one vector per item, this process computes the attention's policy side,
        and only `[D_p]` vectors cross the wire (`r2m_proto.split`); the rewards are the same.
        """
        if split:
            return self._drive(self._split_score(run_id, prompts, responses, hidden_states,
                                                 step, min_version))
        batch = score_batch(run_id, prompts, responses, hidden_states, step=step,
                            min_version=min_version)
        return self._run(self._score_call(batch, self._request_limits()))

    def update(
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
        """One optimizer step of the run's R2M module: GREBT on `groups` or BT on `pairs`.

        Every try of this call carries the same Idempotency-Key (a fresh uuid4 unless given),
        so a retry after a lost answer cannot apply the step twice. `learning_rate` sets this
        one step's rate instead of the run's (e.g. a fast head fit before slow online updates).
        `split=True` takes exactly the same step while the hidden states stay here (see
        `score`).
        """
        if split:
            return self._drive(self._split_update(run_id, groups, pairs, step, idempotency_key,
                                                  learning_rate))
        return self._run(self._update_call(run_id, groups, pairs, step, idempotency_key,
                                           learning_rate))

    def _run(self, call: Call[T]) -> T:
        return call.parse([self._send(request) for request in call.requests])

    def _drive(self, protocol: Generator[Call[Any], Any, T]) -> T:
        """Run a multi-phase protocol: each phase's call, its answer (or error) sent back."""
        try:
            call = next(protocol)
            while True:
                try:
                    result = self._run(call)
                except R2MError as error:
                    call = protocol.throw(error)
                else:
                    call = protocol.send(result)
        except StopIteration as done:
            return done.value

    def _request_limits(self) -> RequestLimits:
        """The limits score batches split under; the first call that needs them asks the server,
        and concurrent first calls from several threads wait for that one answer."""
        if self._limits is None:
            with self._limits_lock:
                if self._limits is None:
                    self._limits = self._run(self._limits_call())
        return self._limits

    def _probe(self, path: str) -> bool:
        try:
            self._send(Request("GET", path), retry=False)
        except R2MError:
            return False
        return True

    def _send(self, request: Request, *, retry: bool = True) -> httpx.Response:
        attempt = 0
        while True:
            try:
                outgoing = self._build(request, request.body.slices() if request.body else None)
                with transport_errors(outgoing):
                    response = self._http.send(outgoing)
                return check_response(response)
            except R2MError as error:
                delay = self._retry_delay(attempt, error) if retry else None
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1
