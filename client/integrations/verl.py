"""veRL (0.9) custom reward function: r2m's reward for each rollout, from the config alone.

    reward:
      custom_reward_function:
        path: pkg://r2m_client.integrations.verl
        name: compute_score
        reward_kwargs: {r2m_url: "http://r2m:8000", prompt_key: question}

veRL's reward-loop managers that take an async function (`naive`, the default, and `dapo`) call
`compute_score` once per rollout, many at a time; each call is one small request to the
service's `/get_reward`, and the service's batcher coalesces the concurrent ones into shared
model batches. The reward is the backbone-only one (a static RM), or with `run_id` that run's
ϕ(H_last) (see `service/http/openrlhf.py` for what exactly each means).

veRL hands a reward function only the decoded response and the row's `extra_info`, so the
prompt comes from `extra_info[prompt_key]` (veRL's data recipes keep the question there; a row
without it is scored as a response to an empty prompt).

**No hidden states reach a reward function in veRL**, so this is not R2M's reward. Where a veRL
user would hook them in: the actor's `compute_log_prob` forward runs the policy over every
prompt + response right after rollout; returning the backbone's last hidden state from it
(beside `old_log_probs`) and computing the reward after it, in a reward manager that reads
them from the batch and sends them with `/v1/score`, gives the annotation states; the last
`update_actor` forward gives the fresh states for one `/v1/update` per step, as
`r2m_client.integrations.trl` does for TRL.
"""

from __future__ import annotations

import asyncio
import weakref
from typing import Any
from urllib.parse import urlencode

from r2m_client import DEFAULT_BASE_URL, AsyncR2MClient
from r2m_client._core import Call, Request, _model
from r2m_client._encode import json_body
from r2m_proto.openrlhf import GetRewardRequest, GetRewardResponse

# One client per event loop (an httpx client belongs to the loop it first ran in) and server.
_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                    dict[tuple[str, str | None], AsyncR2MClient]] = (
    weakref.WeakKeyDictionary())


async def compute_score(data_source: Any, solution_str: str, ground_truth: Any,
                        extra_info: dict[str, Any] | None = None, *,
                        r2m_url: str = DEFAULT_BASE_URL, run_id: str | None = None,
                        api_key: str | None = None, prompt_key: str = "question",
                        **_: Any) -> float:
    """The reward of one rollout. `data_source` and `ground_truth` (a rule-based reward's
    inputs) are not used; the `reward_kwargs` of veRL's config fill the keyword arguments."""
    prompt = str((extra_info or {}).get(prompt_key) or "")
    client = _client(r2m_url, api_key)
    return await client._run(_get_reward_call(prompt, solution_str, run_id))


def _get_reward_call(prompt: str, response: str, run_id: str | None) -> Call[float]:
    body = json_body(GetRewardRequest(query=[prompt + response], prompts=[prompt]))
    path = "/get_reward" + ("" if run_id is None else "?" + urlencode({"run_id": run_id}))
    return Call([Request("POST", path, body)],
                lambda answers: _model(GetRewardResponse, answers[0]).rewards[0])


def _client(url: str, api_key: str | None) -> AsyncR2MClient:
    per_loop = _clients.setdefault(asyncio.get_running_loop(), {})
    if (url, api_key) not in per_loop:
        per_loop[url, api_key] = AsyncR2MClient(url, api_key=api_key)
    return per_loop[url, api_key]
