"""The caller-side shapes of requests: `/v1/update` samples and `create_run`'s settings.

The proto's `UpdateGroup` / `UpdatePair` hold wire tensors (base64 or a name in the body); these
hold the caller's own arrays, so a trainer never builds wire objects by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, TypedDict

from r2m_client._tensors import HiddenStates


@dataclass(frozen=True)
class Group:
    """K ≥ 2 responses to one prompt for a GREBT update, one hidden-state tensor [S_k, D_p] each.

    `scores` are the rewards the annotation phase gave the responses; they pick the winner and
    loser. Left out, the server recomputes them.
    """

    prompt: str
    responses: Sequence[str]
    hidden_states: Sequence[HiddenStates]
    scores: Sequence[float] | None = None


@dataclass(frozen=True)
class Pair:
    """An externally labelled preference pair for a plain Bradley–Terry update."""

    prompt: str
    chosen: str
    rejected: str
    chosen_hidden: HiddenStates
    rejected_hidden: HiddenStates


class RunOptions(TypedDict, total=False):
    """The optional settings of `create_run`, as keyword arguments.

    Only names and types live here. A setting left out (or None) takes the default of the proto's
    `CreateRunRequest`, which the server applies and `RunInfo.config` reports; a test keeps these
    names in step with that schema.
    """

    omega_floor: float | None
    alpha: float | None
    learning_rate: float | None
    weight_decay: float | None
    attention_dim: int | None
    seed: int | None
    init: Literal["default", "zero_o"] | None
    head_learning_rate: float | None
    max_grad_norm: float | None
