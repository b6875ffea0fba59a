"""The send path of both clients: retries, idempotency keys and streamed bodies on the wire.

The server here is a plain `http.server` on loopback that answers from a script and records what
it received; it knows nothing of r2m beyond the bytes a test tells it to answer.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from r2m_client import (
    AsyncR2MClient,
    Group,
    R2MClient,
    R2MClientError,
    R2MOverloadedError,
    R2MTransportError,
    RetryPolicy,
)
from r2m_client._encode import update_body
from r2m_proto import SAFETENSORS_MEDIA_TYPE, SAFETENSORS_REQUEST_KEY, decode_safetensors
from r2m_proto.schemas import RunConfig

FAST = RetryPolicy(retries=3, backoff=0.0)
UPDATE_OK = {"version": 2, "step": 1, "loss": 0.5, "bt_loss": 0.4, "gre_loss": 0.1,
             "omega": 0.9, "grad_norm": 1.0}


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


Answer = tuple[int, dict[str, str], bytes]


class ScriptedServer:
    """Answers each request with `respond(received, index)`; keeps every request it got."""

    def __init__(self, respond: Callable[[Received, int], Answer]) -> None:
        self.received: list[Received] = []
        lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                got = Received(self.command, self.path,
                               {k.lower(): v for k, v in self.headers.items()},
                               self.rfile.read(length))
                with lock:
                    server.received.append(got)
                    index = len(server.received) - 1
                status, headers, content = respond(got, index)
                self.send_response(status)
                for key, value in {**headers, "Content-Length": str(len(content))}.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_DELETE = _handle

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.01,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve() -> Iterator[Callable[[Callable[[Received, int], Answer]], ScriptedServer]]:
    servers: list[ScriptedServer] = []

    def start(respond: Callable[[Received, int], Answer]) -> ScriptedServer:
        servers.append(ScriptedServer(respond))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _json(status: int, payload: object, **headers: str) -> Answer:
    return status, {"Content-Type": "application/json", **headers}, json.dumps(payload).encode()


def _overloaded_twice_then(ok: Answer) -> Callable[[Received, int], Answer]:
    def respond(_: Received, index: int) -> Answer:
        if index < 2:
            return _json(503, {"error": {"code": "overloaded", "message": "busy"}},
                         **{"Retry-After": "0"})
        return ok
    return respond


def _groups() -> list[Group]:
    rng = np.random.default_rng(0)
    # ~3 MiB of hidden states, so the body crosses several 1 MiB slices.
    return [Group("p", ["a", "b"], [rng.standard_normal((512, 768)).astype(np.float32),
                                     rng.standard_normal((512, 768)).astype(np.float32)])]


def _check_update_retries(server: ScriptedServer, groups: list[Group]) -> None:
    assert len(server.received) == 3
    first = server.received[0]
    key = first.headers["idempotency-key"]
    assert uuid.UUID(key).version == 4
    expected = b"".join(update_body("run-1", groups=groups, pairs=None, step=None,
                                    binary=True).buffers)
    for got in server.received:
        assert (got.method, got.path) == ("POST", "/v1/update")
        assert got.headers["idempotency-key"] == key
        assert got.headers["content-type"] == SAFETENSORS_MEDIA_TYPE
        assert got.headers["content-length"] == str(len(expected))
        assert "transfer-encoding" not in got.headers
        assert got.headers["authorization"] == "Bearer secret"
        assert got.body == expected


def test_sync_update_retries_503_with_one_idempotency_key_and_the_same_body(serve) -> None:
    server = serve(_overloaded_twice_then(_json(200, UPDATE_OK)))
    groups = _groups()
    with R2MClient(server.url, retries=FAST, api_key="secret") as client:
        result = client.update("run-1", groups=groups)
    assert result.version == 2
    _check_update_retries(server, groups)


def test_async_update_retries_503_with_one_idempotency_key_and_the_same_body(serve) -> None:
    server = serve(_overloaded_twice_then(_json(200, UPDATE_OK)))
    groups = _groups()

    async def main() -> None:
        async with AsyncR2MClient(server.url, retries=FAST, api_key="secret") as client:
            assert (await client.update("run-1", groups=groups)).version == 2

    asyncio.run(main())
    _check_update_retries(server, groups)


def test_caller_idempotency_key_is_sent_as_given(serve) -> None:
    server = serve(lambda got, i: _json(200, UPDATE_OK))
    with R2MClient(server.url) as client:
        client.update("r", groups=_groups(), idempotency_key="step-17")
        client.update("r", groups=_groups())
        client.update("r", groups=_groups())
    keys = [got.headers["idempotency-key"] for got in server.received]
    assert keys[0] == "step-17"
    assert keys[1] != keys[2], "each call gets its own key"


def test_client_errors_are_not_retried(serve) -> None:
    server = serve(lambda got, i: _json(
        422, {"error": {"code": "invalid_request", "message": "bad", "field": "run_id"}}))
    with R2MClient(server.url, retries=FAST) as client, pytest.raises(R2MClientError) as info:
        client.get_run("r")
    assert (info.value.status_code, info.value.field) == (422, "run_id")
    assert len(server.received) == 1


def test_overload_gives_up_after_the_retry_budget(serve) -> None:
    server = serve(lambda got, i: _json(429, {"error": {"code": "overloaded", "message": "no"}},
                                        **{"Retry-After": "0"}))
    with R2MClient(server.url, retries=RetryPolicy(retries=2)) as client, \
            pytest.raises(R2MOverloadedError):
        client.info()
    assert len(server.received) == 3


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_server_is_a_transport_error_and_unhealthy() -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with R2MClient(url, retries=RetryPolicy(retries=1, backoff=0.0)) as client:
        assert client.health() is False
        with pytest.raises(R2MTransportError) as info:
            client.get_run("r")
        assert info.value.retryable


def _score_by_item_count(got: Received, _: int) -> Answer:
    """Rewards that encode each item's prompt, so the test can check the merge order."""
    metadata, _ = decode_safetensors(bytearray(got.body))
    items = json.loads(metadata[SAFETENSORS_REQUEST_KEY])["items"]
    rewards = [float(item["prompt"]) for item in items]
    return _json(200, {"rewards": rewards, "version": 1, "step": 0, "omega": 1.0})


def test_split_score_batches_merge_in_order_sync_and_async(serve) -> None:
    server = serve(_score_by_item_count)
    n = 12
    prompts = [str(i) for i in range(n)]
    hidden = [np.zeros((64, 64), dtype=np.float32) for _ in range(n)]  # 16 KiB each
    options = {"max_request_bytes": 40 * 1024, "max_request_items": 100, "retries": FAST}
    with R2MClient(server.url, **options) as client:
        rewards = client.score("r", prompts, ["x"] * n, hidden).rewards
    assert rewards == [float(i) for i in range(n)]
    sent = len(server.received)
    assert sent > 3

    async def main() -> list[float]:
        async with AsyncR2MClient(server.url, **options) as client:
            return (await client.score("r", prompts, ["x"] * n, hidden)).rewards

    assert asyncio.run(main()) == [float(i) for i in range(n)]
    assert len(server.received) == 2 * sent


def test_routes_and_status_codes(serve, tmp_path) -> None:
    def respond(got: Received, _: int) -> Answer:
        if got.path in ("/healthz", "/readyz"):
            return _json(200 if got.path == "/healthz" else 503, {})
        if got.method == "DELETE":
            return 204, {}, b""
        return 200, {"Content-Type": "application/octet-stream"}, b"\x08weights"

    server = serve(respond)
    with R2MClient(server.url, retries=0) as client:
        assert client.health() is True
        assert client.ready() is False
        assert client.delete_run("a/b") is None
        assert client.save_checkpoint("a/b", tmp_path / "ck.safetensors").read_bytes() \
            == b"\x08weights"
    assert [(g.method, g.path) for g in server.received] == [
        ("GET", "/healthz"), ("GET", "/readyz"), ("DELETE", "/v1/runs/a%2Fb"),
        ("GET", "/v1/runs/a%2Fb/checkpoint")]


def _limits_then_scores(info: dict[str, object]) -> Callable[[Received, int], Answer]:
    """`/v1/info` answers `info` (a server of another version: other fields, maybe no limits);
    score requests answer one reward per item."""
    def respond(got: Received, index: int) -> Answer:
        if got.path == "/v1/info":
            return _json(200, info)
        return _score_by_item_count(got, index)
    return respond


@pytest.mark.parametrize(("info", "requests_per_batch"), [
    ({"backbone": "x", "some_future_field": [1, 2]}, 1),
    ({"max_items": None, "max_body_bytes": "big"}, 1),
    ({"max_items": 2, "version": {"nested": True}}, 3),
])
def test_limits_the_server_does_not_report_are_no_limits(
        serve, info: dict[str, object], requests_per_batch: int) -> None:
    server = serve(_limits_then_scores(info))
    hidden = [np.zeros((2, 4), dtype=np.float32)] * 5
    with R2MClient(server.url, retries=FAST) as client:
        for _ in range(2):
            rewards = client.score("r", [str(i) for i in range(5)], ["x"] * 5, hidden).rewards
            assert rewards == [float(i) for i in range(5)]
    paths = [got.path for got in server.received]
    assert paths == ["/v1/info"] + ["/v1/score"] * (2 * requests_per_batch)


def test_create_run_sends_only_the_settings_the_caller_gave(serve) -> None:
    """Defaults are the server's schema's to fill, so the client never sends its own copy."""
    config = RunConfig(policy_hidden_size=8, total_steps=10, attention_dim=4, seed=0)
    server = serve(lambda got, i: _json(201, {"run_id": "a", "config": config.model_dump(),
                                              "step": 0, "version": 0}))
    with R2MClient(server.url, retries=FAST) as client:
        client.create_run(8, 10, run_id="a")
        client.create_run(8, 10, run_id="b", alpha=0.1, seed=None, attention_dim=4)
    bodies = [json.loads(got.body) for got in server.received]
    assert bodies == [{"run_id": "a", "policy_hidden_size": 8, "total_steps": 10},
                      {"run_id": "b", "policy_hidden_size": 8, "total_steps": 10, "alpha": 0.1,
                       "attention_dim": 4}]
