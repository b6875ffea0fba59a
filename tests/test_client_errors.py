"""What a caller sees when a call goes wrong, against a real `r2m serve`.

A mistake in the call's arguments is the client's own `R2MInputError` (a `ValueError`) naming the
argument and the rule, raised before anything is sent, never pydantic's report of the wire
request. A failure after sending names the request's method and full URL.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable
from typing import Any

import httpx
import numpy as np
import pytest
from pydantic import ValidationError

from r2m_client import (
    AsyncR2MClient,
    Group,
    Pair,
    R2MClient,
    R2MClientError,
    R2MInputError,
    R2MTransportError,
    RunNotFoundError,
    RunOptions,
)
from r2m_proto.schemas import InfoResponse, RunInfo, RunSettings, ScoreResponse
from r2m_service.launch import free_port
from tests.conftest import Server
from tests.helpers import D_P


def _states(n: int, width: int = D_P, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((3, width)).astype(np.float32) for _ in range(n)]


def _nobody_listens() -> str:
    """A loopback URL with no server: any request the client tried to send would fail there."""
    return f"http://127.0.0.1:{free_port()}"


@pytest.fixture(scope="module")
def run_id(llama_server: Server) -> str:
    with R2MClient(llama_server.url) as rm:
        return rm.create_run(D_P, 10).run_id


ONE_RESPONSE = [Group("p0", ["a", "b"], _states(2)), Group("p1", ["alone"], _states(1))]


def test_a_group_with_one_response_names_the_group_and_the_rule(llama_server: Server,
                                                                run_id: str) -> None:
    with R2MClient(llama_server.url) as rm:
        before = rm.get_run(run_id).version
        with pytest.raises(R2MInputError) as info:
            rm.update(run_id, groups=ONE_RESPONSE)
        assert rm.get_run(run_id).version == before
    error = info.value
    assert error.field == "groups[1]"
    assert str(error).startswith("groups[1]: a group needs K ≥ 2 responses, got 1")
    assert isinstance(error, ValueError) and not isinstance(error, ValidationError)
    assert error.__cause__ is None and "groups.1" not in str(error)


def test_input_errors_are_raised_before_anything_is_sent() -> None:
    """Not even the server's limits are asked for first: a request would fail to connect."""
    url = _nobody_listens()
    with R2MClient(url, retries=0) as rm:
        with pytest.raises(R2MInputError, match="K ≥ 2"):
            rm.update("r", groups=ONE_RESPONSE)
        with pytest.raises(R2MInputError, match="greater than or equal to 0"):
            rm.score("r", ["a"], ["x"], step=-1)

    async def main() -> None:
        async with AsyncR2MClient(url, retries=0) as rm:
            with pytest.raises(R2MInputError, match="K ≥ 2"):
                await rm.update("r", groups=ONE_RESPONSE)
            with pytest.raises(R2MInputError, match="got 1 prompts but 2 responses"):
                await rm.score("r", ["a"], ["x", "y"])

    asyncio.run(main())


Call = Callable[[R2MClient, str], object]
PAIR = Pair("p", "good", "bad", *_states(2))
MISTAKES: list[tuple[str, Call, str | None, str]] = [
    ("no items", lambda rm, r: rm.score(r, [], []), "prompts", "at least one item"),
    ("fewer responses", lambda rm, r: rm.score(r, ["a", "b"], ["x"]), "responses",
     "got 2 prompts but 1 responses"),
    ("fewer hidden states", lambda rm, r: rm.score(r, ["a", "b"], ["x", "y"], _states(1)),
     "hidden_states", "got 2 prompts but 1 hidden-state tensors"),
    ("3-D hidden states",
     lambda rm, r: rm.score(r, ["a"], ["x"], [np.zeros((1, 3, D_P), np.float32)]),
     "hidden_states[0]", "must be 2-D"),
    ("mixed widths", lambda rm, r: rm.score(r, ["a", "b"], ["x", "y"],
                                            [*_states(1), *_states(1, width=D_P + 1)]),
     "hidden_states[1]", f"hidden size {D_P + 1} differs"),
    ("negative step", lambda rm, r: rm.score(r, ["a"], ["x"], step=-1), "step",
     "greater than or equal to 0"),
    ("groups and pairs", lambda rm, r: rm.update(r, groups=ONE_RESPONSE[:1], pairs=[PAIR]),
     None, "exactly one of groups="),
    ("no groups", lambda rm, r: rm.update(r, groups=[]), "groups", "is empty"),
    ("tensors per response", lambda rm, r: rm.update(r, groups=[Group("p", ["a", "b", "c"],
                                                                      _states(2))]),
     "groups[0]", "3 responses but 2 hidden-state tensors"),
    ("zero total steps", lambda rm, r: rm.create_run(D_P, 0), "total_steps", "greater than 0"),
    ("omega floor above 1", lambda rm, r: rm.create_run(D_P, 10, omega_floor=1.5),
     "omega_floor", "less than or equal to 1"),
    ("misspelt setting", lambda rm, r: rm.create_run(D_P, 10, learning_rte=1e-3),
     "learning_rte", "Extra inputs are not permitted"),
    ("bad run id", lambda rm, r: rm.create_run(D_P, 10, run_id="no spaces"), "run_id",
     "should match pattern"),
]


@pytest.mark.parametrize(("call", "field", "rule"), [m[1:] for m in MISTAKES],
                         ids=[m[0] for m in MISTAKES])
def test_no_argument_mistake_escapes_as_a_pydantic_error(
        llama_server: Server, run_id: str, call: Call, field: str | None, rule: str) -> None:
    with R2MClient(llama_server.url, retries=0) as rm, pytest.raises(R2MInputError) as info:
        call(rm, run_id)
    assert info.value.field == field
    assert rule in info.value.message
    assert not isinstance(info.value, ValidationError) and info.value.__cause__ is None


def test_a_connection_failure_names_the_method_and_url() -> None:
    url = _nobody_listens()
    with R2MClient(url, retries=0) as rm, pytest.raises(R2MTransportError) as info:
        rm.get_run("r1")
    assert str(info.value).startswith(f"GET {url}/v1/runs/r1 failed: ConnectError")
    assert (info.value.method, info.value.url) == ("GET", f"{url}/v1/runs/r1")

    async def main() -> None:
        async with AsyncR2MClient(url, retries=0) as rm:
            with pytest.raises(R2MTransportError, match=f"POST {url}/v1/runs failed"):
                await rm.create_run(D_P, 10)

    asyncio.run(main())


@pytest.mark.parametrize("suffix", ["/v1", "/v1/", "/r2m/v1"])
@pytest.mark.parametrize("client", [R2MClient, AsyncR2MClient])
def test_a_base_url_ending_in_v1_is_refused_at_construction(
        llama_server: Server, suffix: str, client: type[R2MClient | AsyncR2MClient]) -> None:
    root = llama_server.url + suffix.removesuffix("/").removesuffix("/v1")
    with pytest.raises(R2MInputError, match="ends in /v1") as info:
        client(llama_server.url + suffix)
    assert info.value.field == "base_url"
    assert f"pass the server's root: {root!r}" in str(info.value)


def test_a_base_url_that_is_not_http_is_refused_at_construction() -> None:
    with pytest.raises(R2MInputError, match="expected http://host:port") as info:
        R2MClient("localhost:8000")
    assert info.value.field == "base_url"


def test_status_errors_name_the_requested_url(llama_server: Server) -> None:
    url = llama_server.url
    with R2MClient(url + "/r2m", retries=0) as behind_a_prefix, \
            pytest.raises(R2MClientError) as info:
        behind_a_prefix.info()
    assert info.value.status_code == 404
    assert f" on GET {url}/r2m/v1/info: " in str(info.value)
    with R2MClient(url, retries=0) as rm, pytest.raises(RunNotFoundError) as missing:
        rm.get_run("no-such-run")
    assert str(missing.value).startswith(
        f"HTTP 404 run_not_found on GET {url}/v1/runs/no-such-run: ")


def _defaults() -> dict[str, Any]:
    return {name: field.default for name, field in RunSettings.model_fields.items()
            if not field.is_required() and field.default is not None}


def test_create_run_defaults_are_the_schemas(llama_server: Server) -> None:
    with R2MClient(llama_server.url) as rm:
        plain = rm.create_run(D_P, 10).config
        nones = rm.create_run(D_P, 10, **dict.fromkeys(RunOptions.__annotations__)).config
    for config in (plain, nones):
        assert {name: getattr(config, name) for name in _defaults()} == _defaults()


def test_run_options_are_the_schemas_optional_settings_in_both_clients() -> None:
    optional = {name for name, field in RunSettings.model_fields.items()
                if not field.is_required()}
    assert set(RunOptions.__annotations__) == optional
    sync, async_ = (inspect.signature(c.create_run) for c in (R2MClient, AsyncR2MClient))
    assert list(sync.parameters) == list(async_.parameters) == [
        "self", "policy_hidden_size", "total_steps", "run_id", "options"]


def test_an_older_client_reads_a_newer_servers_answers(llama_server: Server) -> None:
    """A newer server may add fields to its answers (`/v1/info` has, twice); what the client
    parses them with ignores what it does not know. Requests stay strict (test_errors.py)."""
    with R2MClient(llama_server.url) as rm:
        run = rm.create_run(policy_hidden_size=D_P, total_steps=10)
        rm.score(run.run_id, ["p"], ["r"])
    info = httpx.get(f"{llama_server.url}/v1/info").json()
    got = httpx.get(f"{llama_server.url}/v1/runs/{run.run_id}").json()
    future = {"field_from_a_later_release": {"nested": [1, 2]}}
    assert InfoResponse.model_validate_json(json.dumps({**info, **future})).max_items \
        == info["max_items"]
    later_run = {**got, **future, "config": {**got["config"], **future},
                 "diagnostics": {**got["diagnostics"], **future}}
    assert RunInfo.model_validate_json(json.dumps(later_run)).config.seed == got["config"]["seed"]
    assert ScoreResponse.model_validate_json(json.dumps(
        {"rewards": [0.5], "version": 0, "step": 0, "omega": 1.0, **future})).rewards == [0.5]
