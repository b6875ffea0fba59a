"""veRL's reward loop, unmodified, scores rollouts through `r2m_client.integrations.verl`: the
rewards it assigns equal `/v1/score`'s for the same prompt and decoded response.

veRL pins transformers < 5.11, so it lives in its own virtual environment (`.ci/run` makes it
at `build/venv-verl`, or set R2M_VERL_PYTHON) and runs `tests/verl_reward_worker.py` there; the
server and this test run in the project's environment.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import transformers

from r2m_client import Group, R2MClient
from tests.conftest import Server
from tests.helpers import hidden
from tests.integration_env import ROOT, why_missing

PYTHON = Path(os.environ.get("R2M_VERL_PYTHON", ROOT / "build" / "venv-verl" / "bin" / "python"))
ROWS = [{"prompt": "what is the capital of france?", "response": "paris is the capital."},
        {"prompt": "name a prime number.", "response": "seven."},
        {"prompt": "say hello.", "response": "hello there, nice to meet you!"}]
D_P = 8


pytestmark = pytest.mark.skipif(not PYTHON.exists(), reason=why_missing(
    "verl", f"no environment at {PYTHON}: .ci/run creates it, or set R2M_VERL_PYTHON"))


def run_verl(tokenizer: Path, reward_kwargs: dict[str, Any]) -> dict[str, Any]:
    spec = {"tokenizer": str(tokenizer), "reward_kwargs": reward_kwargs, "rows": ROWS}
    done = subprocess.run([str(PYTHON), str(ROOT / "tests" / "verl_reward_worker.py"),
                           json.dumps(spec)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_verl_reward_loop_gets_the_backbone_only_reward_of_v1_score(
        llama_server: Server, llama_rm_dir: Path) -> None:
    out = run_verl(llama_rm_dir, {"r2m_url": llama_server.url})
    assert out["verl"].startswith("0.9") and out["manager"] == "NaiveRewardManager"
    prompts = [row["prompt"] for row in ROWS]
    with R2MClient(llama_server.url) as rm:
        want = rm.score("backbone-only", prompts, out["responses"]).rewards
    assert out["rewards"] == want
    assert out["row_sums"] == pytest.approx(want, abs=1e-6)  # one reward per row, last token


def test_a_run_named_in_the_config_serves_that_runs_reward(
        llama_server: Server, llama_rm_dir: Path) -> None:
    with R2MClient(llama_server.url) as rm:
        run = rm.create_run(policy_hidden_size=D_P, total_steps=10, learning_rate=0.05)
        rm.update(run.run_id, groups=[Group("p", ["a", "b", "c"], hidden([2, 3, 4], D_P))])
        out = run_verl(llama_rm_dir, {"r2m_url": llama_server.url, "run_id": run.run_id})
        want = rm.score(run.run_id, [r["prompt"] for r in ROWS], out["responses"]).rewards
    assert out["rewards"] == want
    tokenizer = transformers.AutoTokenizer.from_pretrained(llama_rm_dir)
    assert out["responses"] == [tokenizer.decode(tokenizer(r["response"],
                                add_special_tokens=False)["input_ids"],
                                skip_special_tokens=True) for r in ROWS]
