"""`PUT /v1/runs/{id}/checkpoint`: a checkpoint as `GET` serves it becomes the run's next version
(restore half of backup/restore); a wrong file is a 422 that changes nothing."""

from __future__ import annotations

import httpx
import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from r2m_client import Group, R2MClient
from r2m_proto.media import CHECKPOINT_MEDIA_TYPE
from tests.conftest import Server
from tests.helpers import D_P, PROMPTS, RESPONSES, hidden

STATES = hidden([4, 2, 7, 3], D_P, seed=5)


def put(server: Server, run_id: str, body: bytes,
        content_type: str = CHECKPOINT_MEDIA_TYPE) -> httpx.Response:
    return httpx.put(f"{server.url}/v1/runs/{run_id}/checkpoint", content=body,
                     headers={"Content-Type": content_type}, timeout=60)


def test_a_checkpoint_moves_a_trained_module_into_another_run(llama_server: Server) -> None:
    with R2MClient(llama_server.url) as rm:
        trained = rm.create_run(policy_hidden_size=D_P, total_steps=10, learning_rate=1e-2)
        rm.update(trained.run_id, groups=[Group(PROMPTS[0], RESPONSES, STATES)], step=3)
        backup = rm.checkpoint(trained.run_id)
        fresh = rm.create_run(policy_hidden_size=D_P, total_steps=10)
        answer = put(llama_server, fresh.run_id, backup)
        assert answer.status_code == 200, answer.text
        assert answer.json()["version"] == 1 and answer.json()["step"] == 0
        restored = load_safetensors(rm.checkpoint(fresh.run_id))
        for name, tensor in load_safetensors(backup).items():
            assert torch.equal(restored[name], tensor), name
        same = [rm.score(run, PROMPTS, RESPONSES, STATES, step=3).rewards
                for run in (trained.run_id, fresh.run_id)]
        assert same[0] == same[1]
        rm.update(fresh.run_id, groups=[Group(PROMPTS[0], RESPONSES, STATES)], step=3)


def _changed(tensors: dict[str, torch.Tensor], how: str) -> dict[str, torch.Tensor]:
    changed = dict(tensors)
    if how == "missing":
        del changed["o_proj.weight"]
    elif how == "extra":
        changed["lora.weight"] = torch.zeros(2)
    elif how == "shape":
        changed["k_proj.weight"] = torch.zeros(3, D_P + 1)
    elif how == "dtype":
        changed["score.weight"] = changed["score.weight"].to(torch.float16)
    elif how == "nan":
        changed["score.bias"] = torch.tensor([float("nan")])
    return changed


@pytest.mark.parametrize("how", ["missing", "extra", "shape", "dtype", "nan"])
def test_a_wrong_checkpoint_is_a_422_and_changes_nothing(llama_server: Server, how: str) -> None:
    with R2MClient(llama_server.url) as rm:
        run = rm.create_run(policy_hidden_size=D_P, total_steps=10)
        before = rm.checkpoint(run.run_id)
        wrong = save_safetensors(_changed(load_safetensors(before), how))
        answer = put(llama_server, run.run_id, wrong)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error"]["field"].startswith("checkpoint")
        assert rm.get_run(run.run_id).version == 0
        assert rm.checkpoint(run.run_id) == before


def test_what_is_not_a_checkpoint_is_refused(llama_server: Server) -> None:
    with R2MClient(llama_server.url) as rm:
        run = rm.create_run(policy_hidden_size=D_P, total_steps=10)
        backup = rm.checkpoint(run.run_id)
    assert put(llama_server, run.run_id, backup, "application/json").status_code == 415
    assert put(llama_server, run.run_id, b"not safetensors").status_code == 400
    assert put(llama_server, "no-such-run", backup).status_code == 404
