"""Request bodies: the proto request models plus hidden states, as a binary or a JSON body.

A binary body is a safetensors file whose metadata holds the request JSON and whose tensors are
the hidden states, named by their place in the request (`items.3.hidden_states`); a JSON body
inlines them as base64. Requests are built as proto models, so the client checks a request with
the very schema the server uses before sending a byte (`_checks` words the errors in the caller's
terms). Big score batches are split here into bodies under a byte and an item budget.
"""

from __future__ import annotations

import json
import math
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass

from pydantic import BaseModel

from r2m_client._checks import build, check_same_width, check_score_batch, check_update
from r2m_client._tensors import HiddenStates, hidden_states_to_wire
from r2m_client.types import Group, Pair
from r2m_proto import (
    JSON_MEDIA_TYPE,
    SAFETENSORS_MEDIA_TYPE,
    SAFETENSORS_REQUEST_KEY,
    ScoreItem,
    ScoreRequest,
    UpdateGroup,
    UpdatePair,
    UpdateRequest,
    WireTensor,
)
from r2m_proto.tensor_sink import TensorSink
from r2m_proto.tensors import TensorView

# httpx sends one big `bytes` body in quadratic time (after each partial send it re-slices what is
# left, a copy); an iterator of 1 MiB views with an explicit Content-Length keeps it linear.
SLICE_BYTES = 1 << 20
# Upper bounds on the JSON around a score item / a request (keys, tensor name, header entry).
_ITEM_OVERHEAD = 256
_REQUEST_OVERHEAD = 512


@dataclass(frozen=True)
class Body:
    """A request body kept as the buffers it is made of, never joined into one copy.

    Every call to `slices` walks the buffers afresh, so a retry resends the same bytes.
    """

    content_type: str
    buffers: tuple[memoryview, ...]

    @property
    def length(self) -> int:
        return sum(len(buf) for buf in self.buffers)

    def headers(self) -> dict[str, str]:
        """Content-Type and an explicit Content-Length, so httpx does not send it chunked."""
        return {"Content-Type": self.content_type, "Content-Length": str(self.length)}

    def slices(self) -> Iterator[memoryview]:
        for buf in self.buffers:
            for start in range(0, len(buf), SLICE_BYTES):
                yield buf[start:start + SLICE_BYTES]

    async def aslices(self) -> AsyncIterator[memoryview]:
        for piece in self.slices():
            yield piece


class _TensorSink(TensorSink):
    """Turns each hidden-state tensor into its request field while a request is built: a name
    (binary body, tensor kept for the safetensors part) or an inline base64 `WireTensor`."""

    def body(self, request: BaseModel) -> Body:
        """The request as a body; a request without tensors is always plain JSON."""
        payload = request.model_dump_json(exclude_none=True)
        if not self.tensors:
            return json_body(payload)
        buffers = self.safetensors(payload, SAFETENSORS_REQUEST_KEY)
        return Body(SAFETENSORS_MEDIA_TYPE, tuple(memoryview(buf) for buf in buffers))


def json_body(payload: BaseModel | str) -> Body:
    """A JSON body; proto models drop their unset optional (null) fields."""
    if isinstance(payload, BaseModel):
        payload = payload.model_dump_json(exclude_none=True)
    return Body(JSON_MEDIA_TYPE, (memoryview(payload.encode()),))


@dataclass(frozen=True)
class ScoreChunk:
    """One `/v1/score` request of a possibly split batch: its body and how many items it holds."""

    size: int
    body: Body


@dataclass(frozen=True)
class ScoreBatch:
    """A checked score call with its hidden states as wire views: all but how to split it.

    Checking comes first and alone because the split needs the request limits, which the client
    may first have to ask the server for: a mistake in the call must surface before that.
    """

    run_id: str
    prompts: Sequence[str]
    responses: Sequence[str]
    arrays: Sequence[TensorView | None]
    step: int | None
    min_version: int | None

    def chunks(self, *, binary: bool, max_bytes: int,
               max_items: int | None = None) -> list[ScoreChunk]:
        """Consecutive slices of the batch, each body at most `max_bytes` and `max_items` items
        (an item that alone is bigger goes alone; the server's limit then decides), in the
        caller's order."""
        budget = max_bytes - _REQUEST_OVERHEAD - _text_bytes(self.run_id, binary)
        costs = [_item_cost(p, r, h, binary)
                 for p, r, h in zip(self.prompts, self.responses, self.arrays, strict=True)]
        chunks = []
        for part in split_by_budget(costs, budget, max_items):
            sink = _TensorSink(binary)
            items = []
            for j, i in enumerate(part):
                array = self.arrays[i]
                hidden = None if array is None else sink.field(f"items.{j}.hidden_states", array)
                items.append(ScoreItem(prompt=self.prompts[i], response=self.responses[i],
                                       hidden_states=hidden))
            request = ScoreRequest(run_id=self.run_id, step=self.step,
                                   min_version=self.min_version, items=items)
            chunks.append(ScoreChunk(size=len(part), body=sink.body(request)))
        return chunks


def score_batch(
    run_id: str,
    prompts: Sequence[str],
    responses: Sequence[str],
    hidden_states: Sequence[HiddenStates | None] | None,
    *,
    step: int | None,
    min_version: int | None,
) -> ScoreBatch:
    """The call checked against every rule a score request has, before any I/O."""
    n = check_score_batch(prompts, responses, hidden_states)
    arrays = [None if h is None else hidden_states_to_wire(h, f"hidden_states[{i}]")
              for i, h in enumerate([None] * n if hidden_states is None else hidden_states)]
    check_same_width((f"hidden_states[{i}]", a) for i, a in enumerate(arrays) if a is not None)
    # The request's own fields (run id, step, min_version), checked once with the first item.
    build(ScoreRequest, run_id=run_id, step=step, min_version=min_version,
          items=[ScoreItem(prompt=prompts[0], response=responses[0])])
    return ScoreBatch(run_id, prompts, responses, arrays, step, min_version)


def score_chunks(
    run_id: str,
    prompts: Sequence[str],
    responses: Sequence[str],
    hidden_states: Sequence[HiddenStates | None] | None,
    *,
    step: int | None,
    min_version: int | None,
    binary: bool,
    max_bytes: int,
    max_items: int | None = None,
) -> list[ScoreChunk]:
    """`score_batch(...).chunks(...)`: the bodies of a score call whose limits are known."""
    return score_batch(run_id, prompts, responses, hidden_states, step=step,
                       min_version=min_version).chunks(binary=binary, max_bytes=max_bytes,
                                                       max_items=max_items)


def split_by_budget(costs: Sequence[int], budget: int,
                    max_count: int | None = None) -> list[range]:
    """Greedy consecutive ranges whose costs sum to at most `budget` and that hold at most
    `max_count` items; order is kept."""
    ranges: list[range] = []
    start, total = 0, 0
    for i, cost in enumerate(costs):
        if i > start and (total + cost > budget or i - start == max_count):
            ranges.append(range(start, i))
            start, total = i, 0
        total += cost
    if costs:
        ranges.append(range(start, len(costs)))
    return ranges


def update_body(
    run_id: str,
    *,
    groups: Sequence[Group] | None,
    pairs: Sequence[Pair] | None,
    step: int | None,
    binary: bool,
    learning_rate: float | None = None,
) -> Body:
    """One `/v1/update` body; an update is one optimizer step, so it is never split."""
    check_update(groups, pairs)
    sink = _TensorSink(binary)
    arrays: list[tuple[str, TensorView]] = []

    def tensor(field: str, name: str, x: HiddenStates) -> WireTensor | str:
        """`x` under its caller-side `field` (errors) and its wire `name` (the body)."""
        arrays.append((field, hidden_states_to_wire(x, field)))
        return sink.field(name, arrays[-1][1])

    wire_groups = None if groups is None else [
        build(UpdateGroup, f"groups[{n}]", prompt=g.prompt, responses=list(g.responses),
              hidden_states=[tensor(f"groups[{n}].hidden_states[{k}]",
                                    f"groups.{n}.hidden_states.{k}", h)
                             for k, h in enumerate(g.hidden_states)],
              scores=None if g.scores is None else list(g.scores))
        for n, g in enumerate(groups)
    ]
    wire_pairs = None if pairs is None else [
        build(UpdatePair, f"pairs[{n}]", prompt=p.prompt, chosen=p.chosen, rejected=p.rejected,
              chosen_hidden=tensor(f"pairs[{n}].chosen_hidden", f"pairs.{n}.chosen_hidden",
                                   p.chosen_hidden),
              rejected_hidden=tensor(f"pairs[{n}].rejected_hidden", f"pairs.{n}.rejected_hidden",
                                     p.rejected_hidden))
        for n, p in enumerate(pairs)
    ]
    check_same_width(arrays)
    request = build(UpdateRequest, run_id=run_id, step=step, groups=wire_groups, pairs=wire_pairs,
                    learning_rate=learning_rate)
    return sink.body(request)


def _item_cost(prompt: str, response: str, hidden: TensorView | None, binary: bool) -> int:
    tensor = 0 if hidden is None else hidden.nbytes if binary else 4 * math.ceil(hidden.nbytes / 3)
    return _ITEM_OVERHEAD + _text_bytes(prompt, binary) + _text_bytes(response, binary) + tensor


def _text_bytes(text: str, binary: bool) -> int:
    """Exact bytes of a string in the body: in a binary body the request JSON is itself a JSON
    string inside the safetensors header, so its escapes are escaped again."""
    encoded = json.dumps(text, ensure_ascii=False)
    return len(json.dumps(encoded) if binary else encoded.encode())
