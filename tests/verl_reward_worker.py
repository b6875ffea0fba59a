"""Runs inside veRL's own virtual environment (veRL pins transformers < 5.11): scores rollouts
through veRL's reward loop exactly as a training run does, and prints what it got as JSON.

`RewardLoopWorker` (a Ray actor in training, a plain object here) reads veRL's generated default
trainer config, loads the reward manager (`load_reward_manager`: the `naive` manager with
r2m's `compute_score` as the custom reward function) and runs `run_single` on each rollout
concurrently; `assemble_rm_scores` places each reward on its response's last token.

argv[1]: JSON `{"tokenizer", "reward_kwargs", "rows": [{"prompt", "response"}]}`.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path

import numpy as np
import torch
import verl
from omegaconf import OmegaConf
from transformers import AutoTokenizer
from verl import DataProto
from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
from verl.experimental.reward_loop.reward_manager.naive import NaiveRewardManager


def config(tokenizer: str, reward_kwargs: dict[str, object]) -> object:
    defaults = Path(verl.__file__).parent / "trainer" / "config" / "_generated_ppo_trainer.yaml"
    cfg = OmegaConf.load(defaults)
    cfg.actor_rollout_ref.model.path = tokenizer
    cfg.reward.custom_reward_function.path = "pkg://r2m_client.integrations.verl"
    cfg.reward.custom_reward_function.name = "compute_score"
    cfg.reward.custom_reward_function.reward_kwargs = reward_kwargs
    return cfg


def batch(tokenizer: AutoTokenizer, rows: list[dict[str, str]]) -> DataProto:
    """Rollouts as veRL's trainer holds them: prompts left-padded, responses right-padded."""
    prompts = [tokenizer(r["prompt"], add_special_tokens=False)["input_ids"] for r in rows]
    responses = [tokenizer(r["response"], add_special_tokens=False)["input_ids"] for r in rows]
    width_p, width_r = max(map(len, prompts)), max(map(len, responses))
    pad = tokenizer.pad_token_id
    p_ids = torch.tensor([[pad] * (width_p - len(p)) + p for p in prompts])
    r_ids = torch.tensor([r + [pad] * (width_r - len(r)) for r in responses])
    mask = torch.tensor([[0] * (width_p - len(p)) + [1] * (len(p) + len(r))
                         + [0] * (width_r - len(r))
                         for p, r in zip(prompts, responses, strict=True)])
    return DataProto.from_dict(
        tensors={"prompts": p_ids, "responses": r_ids, "attention_mask": mask,
                 "input_ids": torch.cat([p_ids, r_ids], dim=1)},
        non_tensors={"data_source": np.array(["r2m-test"] * len(rows), dtype=object),
                     "reward_model": np.array([{"ground_truth": None} for _ in rows]),
                     "extra_info": np.array([{"question": r["prompt"]} for r in rows])})


def main() -> None:
    spec = json.loads(sys.argv[1])
    tokenizer = AutoTokenizer.from_pretrained(spec["tokenizer"])
    worker = RewardLoopWorker(config(spec["tokenizer"], spec["reward_kwargs"]))
    data = batch(tokenizer, spec["rows"])
    outputs = worker.loop.run_until_complete(worker.compute_score_batch(data))
    scores = [out["reward_score"] for out in outputs]
    rm_scores = NaiveRewardManager.assemble_rm_scores(data, scores)
    decoded = [tokenizer.decode(r, skip_special_tokens=True)
               for r in tokenizer([row["response"] for row in spec["rows"]],
                                  add_special_tokens=False)["input_ids"]]
    print(json.dumps({"verl": verl.__version__, "manager": type(worker.reward_manager).__name__,
                      "rewards": scores, "row_sums": rm_scores.sum(dim=1).tolist(),
                      "responses": decoded}))


if __name__ == "__main__":
    asyncio.set_event_loop(asyncio.new_event_loop())
    main()
