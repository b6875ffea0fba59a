"""Split mode: the hidden states stay with the trainer, and the results are those of full mode —
rewards to float rounding, and after many updates the same weights (including W_q and W_k,
whose gradients reach the server only through ∂L/∂u)."""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from safetensors.torch import load as load_safetensors

from r2m_client import Group, Pair, R2MClient
from r2m_client._split import split_score, split_update
from r2m_client.errors import R2MStatusError
from r2m_client.split import QueryCache
from r2m_proto import SAFETENSORS_MEDIA_TYPE, ScoreResponse, UpdateResponse, decode_safetensors
from r2m_service.r2m_module import TRAINABLE_TENSORS
from tests.conftest import Server, start_server
from tests.helpers import D_P, PROMPTS, RESPONSES, hidden, wire
from tests.redis_server import start_redis

LENGTHS = [5, 1, 17, 3]


def _runs(rm: R2MClient, count: int, **settings: object) -> list[str]:
    """Runs with identical modules (one seed), so full and split mode start from the same."""
    return [rm.create_run(policy_hidden_size=D_P, total_steps=20, attention_dim=8, seed=11,
                          **settings).run_id for _ in range(count)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_split_rewards_equal_full_mode(llama_server: Server, dtype: torch.dtype) -> None:
    states = hidden(LENGTHS, D_P, seed=3, dtype=dtype)
    with R2MClient(llama_server.url) as rm:
        for run_id in _runs(rm, 2):
            rm.update(run_id, groups=[Group(PROMPTS[0], RESPONSES, hidden(LENGTHS, D_P))],
                      step=1)  # move every tensor off its initial value
            full = rm.score(run_id, PROMPTS, RESPONSES, states, step=4)
            split = rm.score(run_id, PROMPTS, RESPONSES, states, step=4, split=True)
            assert (split.version, split.step, split.omega) == (full.version, full.step,
                                                                full.omega)
            assert split.rewards == pytest.approx(full.rewards, rel=1e-5, abs=1e-6)


def test_ten_split_updates_give_the_weights_of_ten_full_updates(llama_server: Server) -> None:
    with R2MClient(llama_server.url) as rm:
        full_run, split_run = _runs(rm, 2, learning_rate=1e-3)
        for step in range(10):
            groups = [Group(PROMPTS[k % 4], RESPONSES, hidden(LENGTHS, D_P, seed=10 * step + k),
                            scores=None if k else [0.1, 0.4, -0.2, 0.3]) for k in range(2)]
            pairs = [Pair(PROMPTS[1], RESPONSES[1], RESPONSES[2], *hidden([4, 6], D_P, seed=step))]
            kind = {"pairs": pairs} if step % 3 == 2 else {"groups": groups}
            full = rm.update(full_run, step=step, **kind)
            split = rm.update(split_run, step=step, split=True, **kind)
            assert split.version == full.version == step + 1
            assert split.loss == pytest.approx(full.loss, rel=1e-5, abs=1e-6)
        full_weights = load_safetensors(rm.checkpoint(full_run))
        split_weights = load_safetensors(rm.checkpoint(split_run))
    for name in TRAINABLE_TENSORS:  # relative to the tensor's scale: Adam divides by √v, so
        # rounding in a near-zero gradient element moves that element by a fraction of the lr
        scale = full_weights[name].abs().max()
        assert (split_weights[name] - full_weights[name]).abs().max() <= 1e-5 * scale, name
    # and the attention's query side really trained (its gradient is the split-only path)
    with R2MClient(llama_server.url) as rm:
        fresh = load_safetensors(rm.checkpoint(_runs(rm, 1, learning_rate=1e-3)[0]))
    for name in ("q_proj.weight", "k_proj.weight"):
        assert not torch.equal(fresh[name], split_weights[name]), name


def test_a_version_conflict_between_phases_restarts_from_the_query(
        llama_server: Server) -> None:
    states = hidden(LENGTHS, D_P, seed=5)
    with R2MClient(llama_server.url) as rm:
        (run_id,) = _runs(rm, 1, learning_rate=1e-2)
        protocol = split_score(run_id, PROMPTS, RESPONSES, states, step=3, min_version=None,
                               binary=True)
        first_query = rm._run(next(protocol))
        score_call = protocol.send(first_query)  # contexts computed at version 0
        rm.update(run_id, groups=[Group(PROMPTS[0], RESPONSES, states)], step=2)  # → version 1
        with pytest.raises(R2MStatusError) as conflict:
            rm._run(score_call)
        assert conflict.value.status_code == 409 and conflict.value.field == "version"
        second_query_call = protocol.throw(conflict.value)  # the protocol starts again
        second_query = rm._run(second_query_call)
        assert (first_query.answer.version, second_query.answer.version) == (0, 1)
        with pytest.raises(StopIteration) as done:
            protocol.send(rm._run(protocol.send(second_query)))
        result = done.value.value
        expected = rm.score(run_id, PROMPTS, RESPONSES, states, step=3)
    assert result.version == 1
    assert result.rewards == pytest.approx(expected.rewards, rel=1e-5, abs=1e-6)


def _vector(values: torch.Tensor) -> dict[str, object]:
    return wire(values.to(torch.float32))


@pytest.mark.parametrize(("route", "mutate", "status", "field"), [
    ("score", lambda body: body["items"][0].update(context=_vector(torch.zeros(D_P + 1))), 422,
     "items[0].context"),
    ("score", lambda body: body["items"][1].update(context=_vector(torch.full((D_P,), math.nan))),
     422, "items[1].context"),
    ("score", lambda body: body.update(version=body["version"] + 5), 409, "version"),
    ("update", lambda body: body["query_grads"].pop(), 422, "query_grads"),
    ("update", lambda body: body["query_grads"][2].update(
        shape=[1, D_P]), 422, "query_grads[2]"),
    ("update", lambda body: body.update(version=body["version"] - 1), 409, "version"),
    ("gradient", lambda body: body["groups"][0]["contexts"][0].update(
        data=base64.b64encode(b"\0" * 3).decode()), 422, "groups[0].contexts[0]"),
    ("update", lambda body: body["groups"][0]["contexts"].__setitem__(
        0, {"token": "A" * 24, "index": 0}), 409, "groups[0].contexts[0].token"),
    ("gradient", lambda body: body["groups"][0]["contexts"].__setitem__(
        1, {"token": body["score_token"], "index": 99}), 422, "groups[0].contexts[1].index"),
    ("update", lambda body: body["groups"][0]["contexts"].__setitem__(  # entry 1: another sample
        0, {"token": body["score_token"], "index": 1}), 422, "groups[0].contexts[0].index"),
    ("update", lambda body: body["groups"][0]["contexts"].__setitem__(
        0, {"token": "bad token!", "index": 0}), 422, "groups[0].contexts[0]"),
    ("gradient", lambda body: body["groups"][0]["contexts"].__setitem__(  # another run's token
        0, {"token": body["foreign_token"], "index": 0}), 409, "groups[0].contexts[0].token"),
    ("update", lambda body: body.update(version=0, groups=[{  # a token of version 1 at version 0
        **body["groups"][0], "contexts": [{"token": body["score_token"], "index": 0},
                                          *body["groups"][0]["contexts"][1:]]}]),
     409, "groups[0].contexts[0].token"),
])
def test_bad_phase_inputs_are_refused_and_change_nothing(
        http: httpx.Client, route: str, mutate: object, status: int, field: str) -> None:
    run_id = http.post("/v1/runs", json={"policy_hidden_size": D_P, "total_steps": 10}).json()[
        "run_id"]
    http.post("/v1/update", json={"run_id": run_id, "groups": [{
        "prompt": "p", "responses": ["a", "b"],
        "hidden_states": [wire(h) for h in hidden([2, 3], D_P)]}]})  # version 1
    items = [{"prompt": p, "response": r} for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    query = http.post("/v1/split/query", json={"run_id": run_id, "items": items}).json()
    contexts = [_vector(torch.randn(D_P)) for _ in items]
    tokens = {}
    for name, run in (("score_token", run_id), ("foreign_token", http.post("/v1/runs", json={
            "policy_hidden_size": D_P, "total_steps": 10}).json()["run_id"])):
        version = http.post("/v1/split/query", json={"run_id": run, "items": items}).json()[
            "version"]
        tokens[name] = http.post("/v1/split/score", json={  # items' contexts, in their order
            "run_id": run, "version": version, "items": [
                {**item, "context": c} for item, c in zip(items, contexts, strict=True)]}
                                 ).json()["context_token"]
    if route == "score":
        body = {"run_id": run_id, "version": query["version"],
                "items": [{**item, "context": c} for item, c in zip(items, contexts, strict=True)]}
    else:
        body = {"run_id": run_id, "version": query["version"], "groups": [{
            "prompt": PROMPTS[0], "responses": RESPONSES, "contexts": contexts}]}
        if route == "update":
            body["query_grads"] = [_vector(torch.randn(D_P)) for _ in items]
    body.update(tokens)
    mutate(body)  # type: ignore[operator]
    for name in tokens:
        del body[name]
    before = http.get(f"/v1/runs/{run_id}").json()
    answer = http.post(f"/v1/split/{route}", json=body)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["field"] == field
    assert http.get(f"/v1/runs/{run_id}").json()["version"] == before["version"] == 1


def _queries_served(url: str) -> float:
    text = httpx.get(f"{url}/metrics").text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("r2m_request_duration_seconds_count")
               and 'route="/v1/split/query"' in line)


def test_an_update_reuses_the_scores_queries_until_the_version_moves(
        llama_server: Server) -> None:
    states = hidden(LENGTHS, D_P, seed=8)
    group = Group(PROMPTS[2], RESPONSES, states)
    with R2MClient(llama_server.url) as rm, R2MClient(llama_server.url) as other:
        (run_id,) = _runs(rm, 1, learning_rate=1e-3)
        start = _queries_served(llama_server.url)
        rm.score(run_id, [PROMPTS[2]] * 4, RESPONSES, states, step=3, split=True)
        first = rm.update(run_id, groups=[group], step=3, split=True)
        assert _queries_served(llama_server.url) - start == 1  # the score's query served both
        rm.score(run_id, [PROMPTS[2]] * 4, RESPONSES, states, step=4, split=True)
        other.update(run_id, groups=[group], step=4)  # another trainer moves the run on
        second = rm.update(run_id, groups=[group], step=4, split=True)
        assert _queries_served(llama_server.url) - start == 3  # stale: asked again once
    assert (first.version, second.version) == (1, 3)


def test_vector_answers_come_as_safetensors_when_asked_and_as_json_by_default(
        http: httpx.Client) -> None:
    run_id = http.post("/v1/runs", json={"policy_hidden_size": D_P, "total_steps": 10}).json()[
        "run_id"]
    query = {"run_id": run_id, "items": [{"prompt": p, "response": r}
                                         for p, r in zip(PROMPTS, RESPONSES, strict=True)]}
    as_json = http.post("/v1/split/query", json=query)
    binary = http.post("/v1/split/query", json=query,
                       headers={"Accept": SAFETENSORS_MEDIA_TYPE})
    assert as_json.headers["content-type"] == "application/json"
    assert binary.headers["content-type"] == SAFETENSORS_MEDIA_TYPE
    metadata, tensors = decode_safetensors(bytearray(binary.content))
    answer = json.loads(metadata["response"])
    assert answer["version"] == as_json.json()["version"] == 0
    for name, inline in zip(answer["queries"], as_json.json()["queries"], strict=True):
        assert bytes(tensors[name].data) == base64.b64decode(inline["data"])


class _Bodies:
    """The request bodies one client sends, by path (an httpx request hook: `read` keeps the
    body replayable for the send that follows)."""

    def __init__(self) -> None:
        self.sent: dict[str, list[tuple[str, bytes]]] = {}

    def __call__(self, request: httpx.Request) -> None:
        self.sent.setdefault(request.url.path, []).append(
            (request.headers.get("content-type", ""), request.read()))

    def tensor_names(self, path: str) -> list[list[str]]:
        """Per request to `path`, the tensors of its safetensors body (none for JSON)."""
        return [sorted(decode_safetensors(bytearray(body))[1])
                if kind == SAFETENSORS_MEDIA_TYPE else [] for kind, body in self.sent[path]]


def test_the_update_names_the_scores_contexts_and_takes_the_full_modes_step(
        llama_server: Server) -> None:
    states = hidden(LENGTHS, D_P, seed=21)
    group = Group(PROMPTS[3], RESPONSES, states)
    bodies = _Bodies()
    with R2MClient(llama_server.url) as rm:
        full_run, split_run = _runs(rm, 2, learning_rate=1e-3)
        rm._http.event_hooks["request"].append(bodies)
        rm.score(split_run, [PROMPTS[3]] * 4, RESPONSES, states, step=2, split=True)
        split = rm.update(split_run, groups=[group], step=2, split=True)
        full = rm.update(full_run, groups=[group], step=2)
        weights = [load_safetensors(rm.checkpoint(r)) for r in (full_run, split_run)]
    assert split.loss == pytest.approx(full.loss, rel=1e-5, abs=1e-6)
    for name in TRAINABLE_TENSORS:
        scale = weights[0][name].abs().max()
        assert (weights[1][name] - weights[0][name]).abs().max() <= 1e-5 * scale, name
    # c crossed the wire once (with the score); the update phases named the score's token
    assert bodies.tensor_names("/v1/split/score") == [[f"items.{i}.context" for i in range(4)]]
    assert bodies.tensor_names("/v1/split/gradient") == [[]]
    assert bodies.tensor_names("/v1/split/update") == [[f"query_grads.{i}" for i in range(4)]]


# ---- context tokens on two replicas behind one Redis --------------------------------------

TOKEN_TTL_S = 8


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory,
             server_logs: Path) -> Iterator[tuple[Server, Server]]:
    redis = start_redis(tmp_path_factory.mktemp("redis"))
    env = {"R2M_REDIS_URL": redis.url, "R2M_REDIS_PREFIX": f"s-{uuid.uuid4().hex[:8]}",
           "R2M_SPLIT_CONTEXT_TTL_S": str(TOKEN_TTL_S)}
    a, b = start_server(server_logs, env=env), start_server(server_logs, env=env)
    yield a, b
    a.stop()
    b.stop()
    redis.stop()


def _score_on(url: str, run_id: str, cache: QueryCache, group: Group,
              step: int) -> ScoreResponse:
    with R2MClient(url) as rm:
        return rm._drive(split_score(run_id, [group.prompt] * len(group.responses),
                                     group.responses, group.hidden_states, step=step,
                                     min_version=None, binary=True, cache=cache))


def _update_on(url: str, run_id: str, cache: QueryCache, group: Group, step: int,
               bodies: _Bodies) -> UpdateResponse:
    with R2MClient(url) as rm:
        rm._http.event_hooks["request"].append(bodies)
        return rm._drive(split_update(run_id, groups=[group], pairs=None, step=step,
                                      idempotency_key=None, learning_rate=None, binary=True,
                                      cache=cache))


def test_a_context_token_survives_a_replica_switch(replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    group = Group(PROMPTS[1], RESPONSES, hidden(LENGTHS, D_P, seed=31))
    cache, bodies = QueryCache(), _Bodies()
    with R2MClient(a.url) as rm:
        (run_id,) = _runs(rm, 1, learning_rate=1e-3)
    _score_on(a.url, run_id, cache, group, step=1)  # the token is made on replica A
    held = _metric(a.url, 'r2m_store_bytes{kind="split_contexts"}')
    assert held >= 4 * D_P * 4
    update = _update_on(b.url, run_id, cache, group, step=1, bodies=bodies)  # used on B
    assert update.version == 1
    assert "/v1/split/query" not in bodies.sent  # no restart: B found A's token in Redis
    assert bodies.tensor_names("/v1/split/gradient") == [[]]
    info = httpx.get(f"{b.url}/v1/info").json()["settings"]
    assert info["split_context_ttl_s"] == TOKEN_TTL_S
    assert _metric(b.url, 'r2m_limit{setting="split_context_bytes"}') == info[
        "split_context_bytes"]


def test_an_expired_token_is_409_and_the_client_restarts_from_the_query(
        replicas: tuple[Server, Server]) -> None:
    a, b = replicas
    group = Group(PROMPTS[2], RESPONSES, hidden(LENGTHS, D_P, seed=41))
    cache, bodies = QueryCache(), _Bodies()
    with R2MClient(a.url) as rm:
        (run_id,) = _runs(rm, 1, learning_rate=1e-3)
        scored = _score_on(a.url, run_id, cache, group, step=1)
        time.sleep(TOKEN_TTL_S + 1.5)  # past the token's life in both A's memory and Redis
        stale = httpx.post(f"{b.url}/v1/split/gradient", json={
            "run_id": run_id, "version": 0, "groups": [{
                "prompt": group.prompt, "responses": group.responses,
                "contexts": [{"token": scored.context_token, "index": k} for k in range(4)]}]})
        assert stale.status_code == 409, stale.text
        assert stale.json()["error"] == {
            "code": "context_token_stale", "field": "groups[0].contexts[0].token",
            "message": stale.json()["error"]["message"]}
        update = _update_on(a.url, run_id, cache, group, step=1, bodies=bodies)
        assert update.version == 1 == rm.get_run(run_id).version
    # the first gradient named the dead token (409), then one query and c inline
    assert len(bodies.sent["/v1/split/query"]) == 1
    assert bodies.tensor_names("/v1/split/gradient") == [
        [], [f"groups.0.contexts.{k}" for k in range(4)]]
    assert "/v1/split/update" in bodies.sent and len(bodies.sent["/v1/split/update"]) == 1


def _metric(url: str, series: str) -> float:
    for line in httpx.get(f"{url}/metrics").text.splitlines():
        if line.startswith(series + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no series {series}")
