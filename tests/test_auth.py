"""API keys with scopes: every route × {no key, wrong key, wrong scope, right scope}.

One real server holds four keys, one per scope, two from a key file and two from R2M_API_KEYS,
with /metrics keyed. A refused request is 401 (no or unknown key) or 403 (key without the scope),
carries `WWW-Authenticate: Bearer`, and changes nothing; keys never reach the log.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from r2m_client import R2MClient
from r2m_client.errors import R2MClientError
from r2m_service.api_keys import KeyRing, Scope, hash_key, key_line, parse_keys
from r2m_service.cli import main as cli_main
from r2m_service.launch import free_port
from tests.conftest import Server, start_server
from tests.helpers import hidden, wire

D_P = 8
KEYS = {scope: f"r2m_test-{scope.value}-key-0123456789abcdef" for scope in Scope}
NOT_ADMIN = "r2m_test-everything-but-admin-0123456789"
WRONG_KEY = "r2m_test-not-a-configured-key-0123456789"
ALL_KEYS = [*KEYS.values(), NOT_ADMIN, WRONG_KEY]


def _state() -> dict[str, Any]:
    return wire(hidden([2], D_P)[0])


Body = Callable[[str], dict[str, Any]] | None


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    scope: Scope
    body: Body
    ok: int

    def call(self, http: httpx.Client, run_id: str, key: str | None) -> httpx.Response:
        headers = {} if key is None else {"Authorization": f"Bearer {key}"}
        body = self.body(run_id) if self.body else None
        return http.request(self.method, self.path.format(run=run_id), json=body,
                            headers=headers)


def _score(run_id: str) -> dict[str, Any]:
    return {"run_id": run_id, "items": [{"prompt": "p", "response": "r",
                                         "hidden_states": _state()}]}


def _update(run_id: str) -> dict[str, Any]:
    return {"run_id": run_id, "groups": [{"prompt": "p", "responses": ["a", "b"],
                                          "hidden_states": [_state(), _state()]}]}


ROUTES = {
    "info": Route("GET", "/v1/info", Scope.SCORE, None, 200),
    "get run": Route("GET", "/v1/runs/{run}", Scope.SCORE, None, 200),
    "score": Route("POST", "/v1/score", Scope.SCORE, _score, 200),
    "score alias": Route("POST", "/score", Scope.SCORE, _score, 200),
    "create run": Route("POST", "/v1/runs", Scope.UPDATE,
                        lambda _: {"policy_hidden_size": D_P, "total_steps": 10}, 201),
    "update": Route("POST", "/v1/update", Scope.UPDATE, _update, 200),
    "update alias": Route("POST", "/update", Scope.UPDATE, _update, 200),
    "checkpoint": Route("GET", "/v1/runs/{run}/checkpoint", Scope.ADMIN, None, 200),
    "delete run": Route("DELETE", "/v1/runs/{run}", Scope.ADMIN, None, 204),
    "metrics": Route("GET", "/metrics", Scope.METRICS, None, 200),
}
# A key that is valid but lacks the route's scope.
WRONG_SCOPE = {Scope.SCORE: KEYS[Scope.UPDATE], Scope.UPDATE: KEYS[Scope.SCORE],
               Scope.ADMIN: NOT_ADMIN, Scope.METRICS: KEYS[Scope.SCORE]}


@pytest.fixture(scope="module")
def keyed_server(server_logs: Path, llama_rm_dir: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Server]:
    key_file = tmp_path_factory.mktemp("keys") / "api_keys"
    key_file.write_text("# trainers\n"
                        f"{key_line(KEYS[Scope.SCORE], frozenset({Scope.SCORE}), 'scorer')}\n"
                        f"{key_line(KEYS[Scope.UPDATE], frozenset({Scope.UPDATE}), 'updater')}"
                        "  # comment\n\n")
    inline = ";".join([
        key_line(KEYS[Scope.ADMIN], frozenset({Scope.ADMIN}), "operator"),
        key_line(KEYS[Scope.METRICS], frozenset({Scope.METRICS}), "prometheus"),
        key_line(NOT_ADMIN, frozenset({Scope.SCORE, Scope.UPDATE, Scope.METRICS}), "almost")])
    server = start_server(server_logs, "--backbone", str(llama_rm_dir), "--max-length", "64",
                          env={"R2M_API_KEYS_FILE": str(key_file), "R2M_API_KEYS": inline,
                               "R2M_METRICS_AUTH": "true"})
    yield server
    server.stop()


@pytest.fixture(scope="module")
def http(keyed_server: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=keyed_server.url, timeout=60) as client:
        yield client


@pytest.fixture
def run_id(http: httpx.Client) -> str:
    """A fresh run per test, so a test that deletes one leaves the others theirs."""
    answer = http.post("/v1/runs", json={"policy_hidden_size": D_P, "total_steps": 10},
                       headers={"Authorization": f"Bearer {KEYS[Scope.ADMIN]}"})
    assert answer.status_code == 201, answer.text
    return answer.json()["run_id"]


def _unchanged(http: httpx.Client, run_id: str) -> None:
    answer = http.get(f"/v1/runs/{run_id}",
                      headers={"Authorization": f"Bearer {KEYS[Scope.ADMIN]}"})
    assert answer.status_code == 200 and answer.json()["version"] == 0, answer.text


def _refused(answer: httpx.Response, status: int, code: str, challenge: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]["code"] == code
    assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    assert challenge in answer.headers["WWW-Authenticate"]


@pytest.mark.parametrize("name", list(ROUTES))
def test_no_key_is_401(http: httpx.Client, run_id: str, name: str) -> None:
    _refused(ROUTES[name].call(http, run_id, None), 401, "unauthorized", 'realm="r2m"')
    _unchanged(http, run_id)


@pytest.mark.parametrize("name", list(ROUTES))
def test_wrong_key_is_401(http: httpx.Client, run_id: str, name: str) -> None:
    _refused(ROUTES[name].call(http, run_id, WRONG_KEY), 401, "unauthorized",
             'error="invalid_token"')
    _unchanged(http, run_id)


@pytest.mark.parametrize("name", list(ROUTES))
def test_wrong_scope_is_403(http: httpx.Client, run_id: str, name: str) -> None:
    route = ROUTES[name]
    _refused(route.call(http, run_id, WRONG_SCOPE[route.scope]), 403, "forbidden",
             f'error="insufficient_scope", scope="{route.scope.value}"')
    _unchanged(http, run_id)


@pytest.mark.parametrize("name", list(ROUTES))
def test_right_scope_is_served(http: httpx.Client, run_id: str, name: str) -> None:
    route = ROUTES[name]
    answer = route.call(http, run_id, KEYS[route.scope])
    assert answer.status_code == route.ok, answer.text
    assert "WWW-Authenticate" not in answer.headers


@pytest.mark.parametrize("name", list(ROUTES))
def test_admin_implies_every_scope(http: httpx.Client, run_id: str, name: str) -> None:
    assert ROUTES[name].call(http, run_id, KEYS[Scope.ADMIN]).status_code == ROUTES[name].ok


@pytest.mark.parametrize("path", ["/healthz", "/readyz"])
@pytest.mark.parametrize("key", [None, WRONG_KEY, KEYS[Scope.SCORE]])
def test_probes_stay_open(http: httpx.Client, path: str, key: str | None) -> None:
    headers = {} if key is None else {"Authorization": f"Bearer {key}"}
    assert http.get(path, headers=headers).status_code == 200


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", KEYS[Scope.SCORE],
                                    f"Token {KEYS[Scope.SCORE]}"])
def test_malformed_authorization_is_401(http: httpx.Client, header: str) -> None:
    _refused(http.get("/v1/info", headers={"Authorization": header}), 401, "unauthorized",
             'realm="r2m"')


def test_the_client_sends_its_key(keyed_server: Server) -> None:
    with R2MClient(keyed_server.url, api_key=KEYS[Scope.UPDATE]) as client:
        run = client.create_run(policy_hidden_size=D_P, total_steps=10)
    with R2MClient(keyed_server.url, api_key=KEYS[Scope.SCORE]) as client:
        assert client.get_run(run.run_id).run_id == run.run_id
        with pytest.raises(R2MClientError) as refused:
            client.create_run(policy_hidden_size=D_P, total_steps=10)
    assert refused.value.status_code == 403


def test_keys_never_reach_the_log(keyed_server: Server, http: httpx.Client,
                                  run_id: str) -> None:
    for key in ALL_KEYS:
        http.get("/v1/info", headers={"Authorization": f"Bearer {key}"})
    log = keyed_server.log()
    for key in ALL_KEYS:
        assert key not in log
        assert hash_key(key) not in log
    records = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [r for r in records if r["logger"] == "r2m.access" and r["path"] == "/v1/info"]
    assert {"scorer", "updater", "operator"} <= {r["key"] for r in access}
    started = [r for r in records if r["logger"] == "r2m_service.http.auth"]
    assert "auth on: 5 API keys" in started[0]["message"]
    assert "metrics scope" in started[0]["message"]


# ---- key files and the CLI, without a server -------------------------------------------------

def test_key_file_lines_parse_with_comments_and_names() -> None:
    key = "r2m_k"
    text = f"# header\n\n{key_line(key, frozenset({Scope.SCORE, Scope.UPDATE}), 'job-1')}  # x\n"
    [parsed] = parse_keys(text, "keys.txt")
    assert parsed.name == "job-1" and parsed.scopes == {Scope.SCORE, Scope.UPDATE}
    ring = KeyRing([parsed])
    assert ring.find(key) is parsed and ring.find("r2m_other") is None


@pytest.mark.parametrize(("line", "error"), [
    ("r2m_plaintext-key score", "not the key itself"),
    (f"{hash_key('x')}", "missing scopes"),
    (f"{hash_key('x')} score,superuser", "superuser"),
])
def test_bad_key_file_lines_are_refused_without_echoing_them(line: str, error: str) -> None:
    with pytest.raises(ValueError, match=error) as refused:
        parse_keys(line, "keys.txt")
    assert "r2m_plaintext-key" not in str(refused.value)
    assert "keys.txt entry 1" in str(refused.value)


def test_a_bad_key_file_stops_start_up(tmp_path: Path) -> None:
    key_file = tmp_path / "keys"
    key_file.write_text("r2m_oops-a-raw-key score\n")
    result = subprocess.run(
        [sys.executable, "-m", "r2m_service.cli", "serve", "--port", str(free_port()),
         "--api-keys-file", str(key_file)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert "entry 1: expected the SHA-256 hex digest" in result.stderr
    assert "r2m_oops-a-raw-key" not in result.stdout + result.stderr


def test_keys_new_prints_the_key_and_stores_only_its_digest(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = tmp_path / "keys"
    assert cli_main(["keys", "new", "--scopes", "score,admin", "--name", "ops",
                     "--file", str(key_file)]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("r2m_") and len(key) > 40
    stored = key_file.read_text()
    assert key not in stored
    assert stored == f"{hash_key(key)} score,admin ops\n"
    assert KeyRing(parse_keys(stored, "keys")).find(key).name == "ops"


def test_keys_hash_reads_the_key_from_stdin(monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("r2m_given\n"))
    assert cli_main(["keys", "hash", "--scopes", "metrics"]) == 0
    assert capsys.readouterr().out == f"{hash_key('r2m_given')} metrics\n"


def test_keys_cli_refuses_unknown_scopes(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["keys", "new", "--scopes", "root"]) == 2
    assert "root" in capsys.readouterr().err
