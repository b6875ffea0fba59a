"""What a container runtime relies on: structured logs with request ids, a health probe that
needs no curl, a loud warning when running open, and SIGTERM draining in-flight requests."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from r2m_service.launch import free_port
from r2m_service.probe import probe
from tests.conftest import Server, start_server
from tests.deploy_tools import wait_until
from tests.helpers import hidden, wire

D_P = 8


def records(server: Server) -> list[dict[str, object]]:
    return [json.loads(line) for line in server.log().splitlines() if line.startswith("{")]


def test_running_open_is_announced_loudly(llama_server: Server) -> None:
    warnings = [r for r in records(llama_server)
                if r["level"] == "warning" and "AUTH DISABLED" in str(r["message"])]
    assert warnings


def test_request_id_is_returned_and_logged(llama_server: Server) -> None:
    answer = httpx.get(f"{llama_server.url}/v1/info", headers={"X-Request-ID": "trainer-7.step-3"})
    assert answer.status_code == 200
    assert answer.headers["X-Request-ID"] == "trainer-7.step-3"
    logged = wait_until(lambda: [r for r in records(llama_server)
                                 if r.get("request_id") == "trainer-7.step-3"], 5, "the log")
    assert logged[0]["logger"] == "r2m.access" and logged[0]["status"] == 200
    assert logged[0]["path"] == "/v1/info"


@pytest.mark.parametrize("sent", [None, "has spaces in it", "x" * 129, "quote\"d"])
def test_missing_or_unsafe_request_ids_are_replaced(llama_server: Server,
                                                    sent: str | None) -> None:
    headers = {} if sent is None else {"X-Request-ID": sent}
    answer = httpx.get(f"{llama_server.url}/healthz", headers=headers)
    returned = answer.headers.get_list("X-Request-ID")
    assert len(returned) == 1 and returned[0] != sent
    assert len(returned[0]) == 32 and int(returned[0], 16) >= 0


def test_error_answers_carry_the_request_id(llama_server: Server) -> None:
    answer = httpx.get(f"{llama_server.url}/v1/runs/nope", headers={"X-Request-ID": "r-404"})
    assert answer.status_code == 404 and answer.headers["X-Request-ID"] == "r-404"


def test_info_shows_model_dims_limits_and_version(llama_server: Server) -> None:
    info = httpx.get(f"{llama_server.url}/v1/info").json()
    for field in ("backbone", "reward_hidden_size", "max_length", "max_body_bytes", "max_items",
                  "software_version", "settings"):
        assert info[field], field


def test_health_probe_command(llama_server: Server) -> None:
    port = llama_server.url.rsplit(":", 1)[1]
    for path in ("/healthz", "/readyz"):
        result = subprocess.run([sys.executable, "-m", "r2m_service.probe", path],
                                env={"R2M_PORT": port}, timeout=30, check=False)
        assert result.returncode == 0, path
    assert not probe("/healthz", port=free_port(), timeout_s=1)
    bad = subprocess.run([sys.executable, "-m", "r2m_service.probe", "/v1/info"],
                         capture_output=True, timeout=30, check=False)
    assert bad.returncode == 2


@pytest.fixture
def draining_server(server_logs: Path, llama_rm_dir: Path) -> Iterator[Server]:
    server = start_server(server_logs, "--backbone", str(llama_rm_dir), "--max-length", "64")
    yield server
    server.stop(signal.SIGKILL)


def test_sigterm_drains_an_in_flight_request(draining_server: Server) -> None:
    """SIGTERM while a request body is still arriving: that request completes, new connections
    are refused, and the process exits cleanly with every log line JSON."""
    server = draining_server
    run_id = httpx.post(f"{server.url}/v1/runs",
                        json={"policy_hidden_size": D_P, "total_steps": 10}).json()["run_id"]
    body = json.dumps({"run_id": run_id, "items": [
        {"prompt": "p", "response": "r", "hidden_states": wire(hidden([4], D_P)[0])}]}).encode()
    half_sent, finish = threading.Event(), threading.Event()

    def slow_body() -> Iterator[bytes]:
        yield body[: len(body) // 2]
        half_sent.set()
        finish.wait(30)
        yield body[len(body) // 2:]

    answers: list[httpx.Response] = []
    sender = threading.Thread(target=lambda: answers.append(httpx.post(
        f"{server.url}/v1/score", content=slow_body(), timeout=60,
        headers={"Content-Type": "application/json", "Content-Length": str(len(body))})))
    sender.start()
    assert half_sent.wait(30)
    server.process.send_signal(signal.SIGTERM)
    wait_until(lambda: "Shutting down" in server.log(), 30, "uvicorn to begin shutting down")
    with pytest.raises(httpx.TransportError):
        httpx.get(f"{server.url}/healthz", timeout=5)
    finish.set()
    sender.join(60)
    assert answers and answers[0].status_code == 200, answers and answers[0].text
    assert len(answers[0].json()["rewards"]) == 1
    # uvicorn re-raises the signal once it has shut down cleanly (exit 143 in a container).
    assert server.process.wait(timeout=60) in (0, -signal.SIGTERM)
    lines = [line for line in server.log().splitlines() if line.strip()]
    assert all(json.loads(line) for line in lines)
    messages = [json.loads(line)["message"] for line in lines]
    assert any("starting: loading backbone" in m for m in messages)
    assert any(m.startswith("shutting down") for m in messages)
    assert any(m.startswith("Finished server process") for m in messages)
