"""OpenRLHF's remote reward-model protocol (openrlhf 0.11 `--reward.remote_url`, formerly
`--remote_rm_url`), which `POST /get_reward` speaks so that an OpenRLHF run needs no change.

OpenRLHF posts `{"query": [...], "prompts": [...], "labels": [...]}`: each query is the whole
decoded rollout (prompt + response, special tokens kept), each prompt the formatted prompt it was
generated from, and labels the dataset's label column (a rule-based reward's answer key; a reward
model has no use for it). It reads back `rewards` (the training reward), `scores` (used for
dynamic filtering, falling back to `rewards`) and `extra_logs`, one value per query. This is
another project's contract, not part of r2m's v1 API: unknown fields are ignored rather than
refused, so a newer OpenRLHF that adds one keeps working.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class GetRewardRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    query: list[str] = Field(min_length=1, description="Full texts (prompt + response).")
    prompts: list[str] | None = Field(
        None, description="The prompt of each query; a query that starts with its prompt is "
                          "split there into (prompt, response).")
    labels: list[Any] | None = Field(None, description="Ignored (answer keys for rule-based "
                                                       "rewards).")

    @model_validator(mode="after")
    def _one_prompt_per_query(self) -> GetRewardRequest:
        if self.prompts is not None and len(self.prompts) != len(self.query):
            raise ValueError(f"prompts has {len(self.prompts)} entries for {len(self.query)} "
                             "queries; expected one per query")
        return self


class GetRewardResponse(BaseModel):
    rewards: list[float]
    scores: list[float] = Field(description="The same values as `rewards`.")
    extra_logs: dict[str, list[float]] = Field(default_factory=dict)


def split_query(query: str, prompt: str | None) -> tuple[str, str]:
    """(prompt, response) of one query: split after its prompt when the query starts with it,
    else the whole query is the response to an empty prompt (a prompt that the policy's
    tokenizer did not decode back verbatim, or none sent)."""
    if prompt is not None and query.startswith(prompt):
        return prompt, query[len(prompt):]
    return "", query
