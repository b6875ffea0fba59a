"""`R2MClient`: the blocking client, for trainers that call the service from their own loop."""

from __future__ import annotations

import time
from collections.abc import Sequence
from os import PathLike
from pathlib import Path
from types import TracebackType
from typing import ClassVar, TypeVar

import httpx

from r2m_client._core import BaseR2MClient, Call, Request, check_response, transport_errors
from r2m_client._tensors import HiddenStates
from r2m_client.errors import R2MError
from r2m_client.types import Group, Pair
from r2m_proto import InfoResponse, RunInfo, ScoreResponse, UpdateResponse

T = TypeVar("T")


class R2MClient(BaseR2MClient):
    """Blocking r2m client; split score batches are sent one after another.

    ```python
    with R2MClient("http://rm:8000") as rm:
        run = rm.create_run(policy_hidden_size=4096, total_steps=1000)
        out = rm.score(run.run_id, prompts, responses, hidden_states, step=t)
    ```
    Constructor: `base_url`, `timeout` (seconds or `httpx.Timeout`), `retries` (count or
    `RetryPolicy`), `binary` (safetensors body instead of JSON+base64), `api_key` (sent as a
    bearer token), `max_request_bytes` / `max_request_items` (score batches are split under
    both), `headers`.
    """

    _http_class: ClassVar[type[httpx.Client]] = httpx.Client
    _http: httpx.Client

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
        omega_floor: float = 0.6,
        alpha: float = 0.3,
        learning_rate: float = 1e-6,
        weight_decay: float = 0.0,
        attention_dim: int | None = None,
        seed: int | None = None,
        run_id: str | None = None,
    ) -> RunInfo:
        """Create a run: a fresh R2M module for one training job (hyper-parameters in R2M.md).

        `run_id` names it (default: a fresh unique id); creating an existing id with the same
        settings returns that run, so retries and restarted trainers are safe."""
        return self._run(self._create_run_call(
            policy_hidden_size=policy_hidden_size, total_steps=total_steps,
            omega_floor=omega_floor, alpha=alpha, learning_rate=learning_rate,
            weight_decay=weight_decay, attention_dim=attention_dim, seed=seed,
            run_id=run_id))

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
    ) -> ScoreResponse:
        """Rewards for prompt/response pairs, one per item, in order.

        `hidden_states[i]` is the policy's last-layer hidden states [S_i, D_p] for item i (numpy
        float32/float16 or torch float32/float16/bfloat16); an item without them gets the
        backbone-only reward. `min_version` waits until the run has at least that version.
        """
        return self._run(self._score_call(run_id, prompts, responses, hidden_states, step,
                                          min_version))

    def update(
        self,
        run_id: str,
        *,
        groups: Sequence[Group] | None = None,
        pairs: Sequence[Pair] | None = None,
        step: int | None = None,
        idempotency_key: str | None = None,
    ) -> UpdateResponse:
        """One optimizer step of the run's R2M module: GREBT on `groups` or BT on `pairs`.

        Every try of this call carries the same Idempotency-Key (a fresh uuid4 unless given),
        so a retry after a lost answer cannot apply the step twice.
        """
        return self._run(self._update_call(run_id, groups, pairs, step, idempotency_key))

    def _run(self, call: Call[T]) -> T:
        return call.parse([self._send(request) for request in call.requests])

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
                with transport_errors():
                    response = self._http.request(
                        request.method, request.path, headers=request.all_headers(),
                        content=request.body.slices() if request.body else None)
                return check_response(response)
            except R2MError as error:
                delay = self._retry_delay(attempt, error) if retry else None
                if delay is None:
                    raise
            time.sleep(delay)
            attempt += 1
