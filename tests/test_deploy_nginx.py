"""The scale-out load balancer config, run by the real nginx in front of a live r2m: requests and
streamed bodies pass through, and one request id follows a call from the caller into the
service's log and back."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from r2m_service.launch import free_port
from tests.conftest import Server
from tests.deploy_tools import DEPLOY, daemon, tool, wait_until
from tests.helpers import D_P, hidden, wire


@pytest.fixture(scope="module")
def balancer(llama_server: Server, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """nginx with the shipped config; only the replica address and listen port are local."""
    work = tmp_path_factory.mktemp("nginx")
    port = free_port()
    replica = llama_server.url.removeprefix("http://")
    conf = (DEPLOY / "nginx" / "nginx.conf").read_text()
    assert "server r2m-replica:8000" in conf and "listen 8080;" in conf
    conf = conf.replace("r2m-replica:8000", replica).replace("listen 8080;",
                                                             f"listen 127.0.0.1:{port};")
    (work / "nginx.conf").write_text(conf)
    url = f"http://127.0.0.1:{port}"
    with daemon([tool("nginx"), "-p", str(work), "-c", str(work / "nginx.conf"),
                 "-g", f"daemon off; pid {work}/nginx.pid; error_log stderr;"],
                work / "nginx.log", f"{url}/lb/healthz", "nginx to start", timeout=15):
        yield url


def _logged_ids(server: Server) -> set[str]:
    return {str(r.get("request_id")) for r in
            (json.loads(line) for line in server.log().splitlines() if line.startswith("{"))}


def test_requests_pass_through_the_balancer(balancer: str) -> None:
    assert httpx.get(f"{balancer}/readyz").status_code == 200
    run = httpx.post(f"{balancer}/v1/runs", json={"policy_hidden_size": D_P, "total_steps": 5})
    assert run.status_code == 201, run.text
    states = [wire(h) for h in hidden([64, 32], D_P)]
    body = {"run_id": run.json()["run_id"],
            "items": [{"prompt": "p", "response": f"r{i}", "hidden_states": s}
                      for i, s in enumerate(states)]}
    score = httpx.post(f"{balancer}/v1/score", json=body, timeout=60)
    assert score.status_code == 200, score.text
    assert len(score.json()["rewards"]) == 2


def test_the_callers_request_id_reaches_the_replica_and_returns_once(
        balancer: str, llama_server: Server) -> None:
    answer = httpx.get(f"{balancer}/v1/info", headers={"X-Request-ID": "via-lb-1"})
    assert answer.headers.get_list("X-Request-ID") == ["via-lb-1"]
    wait_until(lambda: "via-lb-1" in _logged_ids(llama_server), 5, "the replica's log")


def test_the_balancer_makes_an_id_when_the_caller_sends_none(
        balancer: str, llama_server: Server) -> None:
    made = httpx.get(f"{balancer}/v1/info").headers.get_list("X-Request-ID")
    assert len(made) == 1 and len(made[0]) == 32
    wait_until(lambda: made[0] in _logged_ids(llama_server), 5, "the replica's log")
