"""OpenRLHF plugs in with no change: its own remote-RM client, pointed at `POST /get_reward`, gets
the rewards `/v1/score` gives for the same texts.

The client is OpenRLHF's (openrlhf 0.11): `SingleTurnAgentExecutor`, whose `execute()` decodes
each rollout into a query and whose `_fetch_rewards_via_http` posts it to the URL given as
`--reward.remote_url`.
OpenRLHF is installed without its dependencies (`pip install --no-deps openrlhf`, plus aiohttp,
sympy and pylatexenc that `openrlhf.utils` imports): its pins (flash-attn and deepspeed, which
build against CUDA, and transformers==5.15) cannot be installed beside r2m on a CPU machine. The
only stand-in is the vLLM engine, which answers `generate` with a fixed continuation.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
import transformers

from r2m_client import Group, R2MClient
from r2m_service.api_keys import Scope, key_line
from tests.conftest import Server, start_server
from tests.helpers import hidden
from tests.integration_env import why_missing

agent = pytest.importorskip("openrlhf.utils.agent", reason=why_missing(
    "openrlhf", ".ci/run installs it: pip install --no-deps openrlhf aiohttp sympy pylatexenc"))

PROMPTS = ["[user] What is the capital of France?\n[assistant] ",
           "[user] Name a prime number.\n[assistant] ", "[user] Say hello.\n[assistant] "]
RESPONSES = ["Paris is the capital of France.", "Seven.", "Hello there, nice to meet you!"]
SCORE_KEY = "r2m_test-score-key-0123456789abcdef"
UPDATE_KEY = "r2m_test-update-key-0123456789abcdef"
D_P = 8
MAX_ITEMS = 4


def fetch(url: str, queries: list[str], prompts: list[str]) -> list[float]:
    """OpenRLHF's own HTTP call to a remote RM, as its agent executor makes it."""
    executor = agent.SingleTurnAgentExecutor(url)
    answers = asyncio.run(executor._fetch_rewards_via_http(queries, prompts, [None] * len(queries)))
    (answer,) = answers  # one reward server: one shard
    assert answer["scores"] == answer["rewards"] and answer["extra_logs"] == {}
    return answer["rewards"]


def score(url: str, run_id: str, prompts: list[str], responses: list[str],
          api_key: str | None = None) -> list[float]:
    with R2MClient(url, api_key=api_key) as rm:
        return rm.score(run_id, prompts, responses).rewards


@pytest.fixture(scope="module")
def keyed_server(server_logs: Path, llama_rm_dir: Path) -> Iterator[Server]:
    """Auth on, a small item limit, and `get_reward_run_id` naming a run the tests create."""
    keys = ";".join([key_line(SCORE_KEY, frozenset({Scope.SCORE}), "openrlhf"),
                     key_line(UPDATE_KEY, frozenset({Scope.UPDATE}), "trainer")])
    server = start_server(server_logs, "--backbone", str(llama_rm_dir), "--max-length", "64",
                          env={"R2M_API_KEYS": keys, "R2M_MAX_ITEMS": str(MAX_ITEMS),
                               "R2M_GET_REWARD_RUN_ID": "openrlhf-default"})
    yield server
    server.stop()


def _with_key(url: str, key: str) -> str:
    """The form an OpenRLHF user passes to `--reward.remote_url` when keys are on."""
    return url.replace("http://", f"http://openrlhf:{key}@") + "/get_reward"


def test_backbone_only_by_default_equals_v1_score(llama_server: Server) -> None:
    queries = [p + r for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    got = fetch(f"{llama_server.url}/get_reward", queries, PROMPTS)
    # the reserved run now exists; a fresh run at version 0 gives the RM's own head too
    with R2MClient(llama_server.url) as rm:
        fresh = rm.create_run(policy_hidden_size=D_P, total_steps=10).run_id
        assert rm.get_run("backbone-only").version == 0
    assert got == score(llama_server.url, "backbone-only", PROMPTS, RESPONSES)
    assert got == pytest.approx(score(llama_server.url, fresh, PROMPTS, RESPONSES), abs=1e-6)
    assert len(set(got)) == len(got)


def test_a_query_that_does_not_start_with_its_prompt_is_a_response_to_an_empty_prompt(
        llama_server: Server) -> None:
    got = fetch(f"{llama_server.url}/get_reward", [RESPONSES[0]], ["not the prefix"])
    assert got == score(llama_server.url, "backbone-only", [""], [RESPONSES[0]])


def test_agent_executor_rollout_is_scored_as_prompt_plus_decoded_response(
        llama_server: Server, llama_rm_dir: Path) -> None:
    """`execute()`: OpenRLHF tokenizes the prompt, generates, decodes prompt + action into the
    query and posts it; the reward lands in its rollout output."""
    tokenizer = transformers.AutoTokenizer.from_pretrained(llama_rm_dir)
    prompt = "what is the capital of france?"
    action = tokenizer("paris is the capital.", add_special_tokens=False)["input_ids"]
    engine = _ScriptedEngine(action, tokenizer)
    params = SimpleNamespace(max_tokens=16, logprobs=None)
    executor = agent.SingleTurnAgentExecutor(f"{llama_server.url}/get_reward")
    out = asyncio.run(executor.execute(prompt, None, params, 64, tokenizer, engine))
    query = tokenizer.decode(out["observation_tokens"], skip_special_tokens=False)
    assert query.startswith(prompt)
    want = score(llama_server.url, "backbone-only", [prompt], [query[len(prompt):]])
    assert out["reward"] == want and out["scores"] == want


def test_run_in_the_url_or_the_setting_serves_that_runs_reward(keyed_server: Server) -> None:
    """A trained run's ϕ(H_last): what `/v1/score` gives that run for items without hidden
    states, and different from the backbone-only reward once ϕ has moved."""
    queries = [p + r for p, r in zip(PROMPTS, RESPONSES, strict=True)]
    with R2MClient(keyed_server.url, api_key=UPDATE_KEY) as rm:
        for run_id in ("openrlhf-default", "openrlhf-named", "openrlhf-untrained"):
            rm.create_run(policy_hidden_size=D_P, total_steps=10, run_id=run_id,
                          learning_rate=0.05)
        for run_id in ("openrlhf-default", "openrlhf-named"):
            rm.update(run_id, groups=[Group(PROMPTS[0], RESPONSES, hidden([3, 4, 5], D_P))])
    url = _with_key(keyed_server.url, SCORE_KEY)
    named = fetch(f"{url}?run_id=openrlhf-named", queries, PROMPTS)
    default = fetch(url, queries, PROMPTS)
    static = score(keyed_server.url, "openrlhf-untrained", PROMPTS, RESPONSES, SCORE_KEY)
    for run_id, got in (("openrlhf-named", named), ("openrlhf-default", default)):
        assert got == score(keyed_server.url, run_id, PROMPTS, RESPONSES, SCORE_KEY)
        assert got != pytest.approx(static, abs=1e-4)


def test_same_auth_scopes_limits_and_error_shape_as_v1_score(keyed_server: Server) -> None:
    body = {"query": ["a b"], "prompts": ["a"], "labels": [None]}
    with httpx.Client(base_url=keyed_server.url, timeout=60) as http:
        missing = http.post("/get_reward", json=body)
        wrong_scope = http.post("/get_reward", json=body,
                                headers={"Authorization": f"Bearer {UPDATE_KEY}"})
        bearer = http.post("/get_reward", json=body,
                           headers={"Authorization": f"Bearer {SCORE_KEY}"})
        auth = {"Authorization": f"Bearer {SCORE_KEY}"}
        too_many = http.post("/get_reward", headers=auth,
                             json={"query": ["q"] * (MAX_ITEMS + 1)})
        ragged = http.post("/get_reward", headers=auth, json={"query": ["a", "b"],
                                                              "prompts": ["a"]})
        unknown_run = http.post("/get_reward?run_id=no-such-run", headers=auth, json=body)
        metrics = http.get("/metrics").text
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert wrong_scope.status_code == 403
    assert bearer.status_code == 200
    assert too_many.status_code == 413
    assert too_many.json()["error"] == {"code": "payload_too_large", "field": "query",
                                        "message": too_many.json()["error"]["message"]}
    assert ragged.status_code == 422 and ragged.json()["error"]["code"] == "invalid_request"
    assert unknown_run.status_code == 404
    assert unknown_run.json()["error"]["code"] == "run_not_found"
    assert 'r2m_request_duration_seconds_count{route="/get_reward"}' in metrics
    assert 'r2m_request_body_bytes_count{route="/get_reward"}' in metrics


class _ScriptedEngine:
    """Stands in for OpenRLHF's vLLM engine: `generate` answers one fixed continuation."""

    def __init__(self, action: list[int], tokenizer: transformers.PreTrainedTokenizerBase
                 ) -> None:
        self.action = action
        self.text = tokenizer.decode(action)

    async def generate(self, prompt_ids: list[int], params: object,
                       multi_modal_data: object = None) -> SimpleNamespace:
        output = SimpleNamespace(token_ids=self.action, text=self.text, finish_reason="stop",
                                 logprobs=None)
        return SimpleNamespace(outputs=[output])
