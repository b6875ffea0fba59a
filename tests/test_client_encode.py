"""Request bodies: names and fields as the contract says, big score batches split in order."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from pydantic import ValidationError

from r2m_client import Group, Pair, R2MInputError, ScoreResponse
from r2m_client._core import merge_scores
from r2m_client._encode import (
    SLICE_BYTES,
    Body,
    score_chunks,
    split_by_budget,
    update_body,
)
from r2m_client.errors import R2MProtocolError
from r2m_proto import (
    JSON_MEDIA_TYPE,
    SAFETENSORS_MEDIA_TYPE,
    SAFETENSORS_REQUEST_KEY,
    ScoreRequest,
    UpdateRequest,
    decode_safetensors,
)


def _decode(body: Body) -> tuple[dict, dict]:
    """The request JSON and its tensors' bytes by name, as the service would see them."""
    raw = bytearray(b"".join(body.buffers))
    assert len(raw) == body.length == int(body.headers()["Content-Length"])
    if body.content_type == JSON_MEDIA_TYPE:
        return json.loads(raw), {}
    assert body.content_type == SAFETENSORS_MEDIA_TYPE
    metadata, tensors = decode_safetensors(raw)
    return json.loads(metadata[SAFETENSORS_REQUEST_KEY]), {
        name: bytes(view.data) for name, view in tensors.items()}


def _hidden(rows: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 64)).astype(np.float32)


def test_split_by_budget_is_greedy_ordered_and_isolates_oversized_items() -> None:
    assert split_by_budget([], 10) == []
    assert split_by_budget([4, 4, 4, 4], 8) == [range(0, 2), range(2, 4)]
    assert split_by_budget([3, 20, 3, 3], 8) == [range(0, 1), range(1, 2), range(2, 4)]
    assert split_by_budget([1] * 5, 100) == [range(0, 5)]
    assert split_by_budget([1] * 5, 100, max_count=2) == [range(0, 2), range(2, 4), range(4, 5)]


@pytest.mark.parametrize("binary", [True, False], ids=["safetensors", "json"])
def test_score_batch_splits_under_budget_in_order(binary: bool) -> None:
    n = 40
    hidden = [_hidden(1 + i % 7, i) for i in range(n)]
    prompts = [f'prompt "{i}" \\ ünïcödé\n' * (i % 3 + 1) for i in range(n)]
    responses = [f"response {i}" for i in range(n)]
    budget = 8 * 1024
    chunks = score_chunks("run-x", prompts, responses, hidden, step=5, min_version=1,
                          binary=binary, max_bytes=budget)
    assert len(chunks) > 3
    seen = []
    for chunk in chunks:
        assert chunk.body.length <= budget
        request, tensors = _decode(chunk.body)
        ScoreRequest.model_validate(request)
        assert (request["run_id"], request["step"], request["min_version"]) == ("run-x", 5, 1)
        assert len(request["items"]) == chunk.size
        for j, item in enumerate(request["items"]):
            i = len(seen)
            assert (item["prompt"], item["response"]) == (prompts[i], responses[i])
            if binary:
                assert item["hidden_states"] == f"items.{j}.hidden_states"
                assert tensors[item["hidden_states"]] == hidden[i].tobytes()
            else:
                assert item["hidden_states"]["shape"] == list(hidden[i].shape)
            seen.append(i)
    assert seen == list(range(n))


def test_item_over_budget_is_sent_alone() -> None:
    big, small = _hidden(64, 0), _hidden(1, 1)
    chunks = score_chunks("r", ["a", "b", "c"], ["x", "y", "z"], [small, big, small], step=None,
                          min_version=None, binary=True, max_bytes=4096)
    assert [c.size for c in chunks] == [1, 1, 1]
    assert chunks[1].body.length > 4096


def test_items_without_hidden_states_and_null_fields_are_omitted() -> None:
    (chunk,) = score_chunks("r", ["a", "b"], ["x", "y"], [None, _hidden(2, 0)], step=None,
                            min_version=None, binary=True, max_bytes=1 << 20)
    request, tensors = _decode(chunk.body)
    assert request == {"run_id": "r", "items": [
        {"prompt": "a", "response": "x"},
        {"prompt": "b", "response": "y", "hidden_states": "items.1.hidden_states"}]}
    assert list(tensors) == ["items.1.hidden_states"]


def test_score_without_any_tensor_is_plain_json() -> None:
    (chunk,) = score_chunks("r", ["a"], ["x"], None, step=0, min_version=None, binary=True,
                            max_bytes=1 << 20)
    assert chunk.body.content_type == JSON_MEDIA_TYPE
    assert _decode(chunk.body)[0] == {"run_id": "r", "step": 0,
                                      "items": [{"prompt": "a", "response": "x"}]}


@pytest.mark.parametrize(("prompts", "responses", "hidden", "error", "match"), [
    ([], [], None, R2MInputError, "at least one item"),
    (["a", "b"], ["x"], None, R2MInputError, "2 prompts but 1 responses"),
    (["a"], ["x"], [None, None], R2MInputError, "1 prompts but 2 hidden-state"),
    ("ab", ["x", "y"], None, TypeError, "prompts must be a sequence of strings"),
    (["a", None], ["x", "y"], None, TypeError, r"prompts\[1\]: expected a str, got NoneType"),
    (["a", "b"], ["x", "y"], [_hidden(2, 0), np.zeros((2, 8), np.float32)], R2MInputError,
     r"hidden_states\[1\]: hidden size 8 differs from hidden_states\[0\]'s 64"),
    (["a"], ["x"], [np.zeros((2, 3, 4), np.float32)], R2MInputError,
     r"hidden_states\[0\]: hidden states must be 2-D"),
])
def test_score_batch_mistakes_are_caught_before_sending(
        prompts: list[str], responses: list[str], hidden: list[None] | None,
        error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        score_chunks("r", prompts, responses, hidden, step=None, min_version=None, binary=True,
                     max_bytes=1 << 20)


def test_update_groups_name_each_response_tensor() -> None:
    groups = [Group("p0", ["a", "b"], [_hidden(2, 0), _hidden(3, 1)], scores=[0.5, -1.0]),
              Group("p1", ["c", "d", "e"], [_hidden(1, 2), _hidden(1, 3), _hidden(2, 4)])]
    request, tensors = _decode(update_body("r", groups=groups, pairs=None, step=7, binary=True))
    UpdateRequest.model_validate(request)
    assert request["step"] == 7 and "pairs" not in request
    assert request["groups"][0]["scores"] == [0.5, -1.0]
    assert "scores" not in request["groups"][1]
    for g, group in enumerate(groups):
        names = request["groups"][g]["hidden_states"]
        assert names == [f"groups.{g}.hidden_states.{k}" for k in range(len(group.responses))]
        assert [tensors[name] for name in names] == [h.tobytes() for h in group.hidden_states]


def test_update_pairs_in_json_inline_base64_tensors() -> None:
    pair = Pair("p", "good", "bad", _hidden(2, 0), _hidden(4, 1).astype(np.float16))
    body = update_body("r", groups=None, pairs=[pair], step=None, binary=False)
    assert body.content_type == JSON_MEDIA_TYPE
    request = UpdateRequest.model_validate(_decode(body)[0])
    wire = request.pairs[0]
    assert wire.chosen_hidden.view("c").data.tobytes() == pair.chosen_hidden.tobytes()
    assert wire.rejected_hidden.dtype == "float16"
    assert request.step is None and request.groups is None


def test_update_pairs_in_binary_use_pair_field_names() -> None:
    pair = Pair("p", "good", "bad", _hidden(2, 0), _hidden(4, 1))
    request, tensors = _decode(update_body("r", groups=None, pairs=[pair], step=None,
                                           binary=True))
    assert request["pairs"][0]["chosen_hidden"] == "pairs.0.chosen_hidden"
    assert request["pairs"][0]["rejected_hidden"] == "pairs.0.rejected_hidden"
    assert sorted(tensors) == ["pairs.0.chosen_hidden", "pairs.0.rejected_hidden"]


def _group(k: int, tensors: int | None = None, scores: list[float] | None = None) -> Group:
    return Group("p", [f"r{i}" for i in range(k)],
                 [_hidden(1, i) for i in range(k if tensors is None else tensors)], scores)


_PAIR = Pair("p", "good", "bad", _hidden(1, 0), _hidden(1, 1))


@pytest.mark.parametrize(("groups", "pairs", "field", "match"), [
    (None, None, None, "exactly one of groups="),
    ([_group(2)], [_PAIR], None, "exactly one of"),
    ([], None, "groups", "is empty; give at least one group"),
    (None, [], "pairs", "is empty; give at least one pair"),
    ([_group(2), _group(1)], None, "groups[1]", "a group needs K ≥ 2 responses, got 1"),
    ([_group(3, tensors=2)], None, "groups[0]", "3 responses but 2 hidden-state tensors"),
    ([_group(2, scores=[1.0])], None, "groups[0]", "2 responses but 1 scores"),
    ([_group(2, scores=[1.0, float("nan")])], None, "groups[0].scores[1]", "finite number"),
    ([_group(2), Group("p", ["a", "b"], [_hidden(1, 0), np.zeros((1, 8), np.float32)])],
     None, "groups[1].hidden_states[1]", "hidden size 8 differs from groups[0].hidden_states[0]"),
    (None, [Pair("p", "a", "b", _hidden(1, 0), np.zeros((1, 2, 3), np.float32))],
     "pairs[0].rejected_hidden", "must be 2-D"),
])
@pytest.mark.parametrize("binary", [True, False], ids=["safetensors", "json"])
def test_update_mistakes_name_the_argument_and_the_rule(
        groups: list[Group] | None, pairs: list[Pair] | None, field: str | None, match: str,
        binary: bool) -> None:
    """The client's own error, in the caller's terms: never pydantic's, never a wire key."""
    with pytest.raises(R2MInputError, match=re.escape(match)) as info:
        update_body("r", groups=groups, pairs=pairs, step=None, binary=binary)
    assert info.value.field == field
    assert isinstance(info.value, ValueError)
    assert not isinstance(info.value, ValidationError) and info.value.__cause__ is None
    assert "groups.0" not in str(info.value) and "pairs.0" not in str(info.value)


@pytest.mark.parametrize(("groups", "pairs", "match"), [
    ("not groups", None, "groups must be a sequence of r2m_client.Group"),
    ([{"prompt": "p"}], None, r"groups\[0\]: expected an r2m_client.Group, got dict"),
    ([Group("p", "ab", [_hidden(1, 0), _hidden(1, 1)])], None,
     r"groups\[0\].responses must be a sequence of strings"),
    (None, [Pair("p", "a", 3, _hidden(1, 0), _hidden(1, 1))],  # type: ignore[arg-type]
     r"pairs\[0\].rejected: expected a str, got int"),
])
def test_update_type_mistakes_are_type_errors(groups: object, pairs: object, match: str) -> None:
    with pytest.raises(TypeError, match=match):
        update_body("r", groups=groups, pairs=pairs, step=None, binary=True)  # type: ignore[arg-type]


def test_schema_rules_without_a_check_of_their_own_still_raise_the_clients_error() -> None:
    with pytest.raises(R2MInputError, match="greater than or equal to 0") as info:
        update_body("r", groups=[_group(2)], pairs=None, step=-1, binary=True)
    assert info.value.field == "step"
    with pytest.raises(R2MInputError, match="greater than or equal to 0") as info:
        score_chunks("r", ["a"], ["x"], None, step=None, min_version=-2, binary=True,
                     max_bytes=1 << 20)
    assert info.value.field == "min_version"


def test_body_slices_are_bounded_and_repeatable() -> None:
    big = memoryview(bytes(range(256)) * (3 * SLICE_BYTES // 256 + 5))
    body = Body(SAFETENSORS_MEDIA_TYPE, (memoryview(b"head"), big))
    for _ in range(2):
        pieces = list(body.slices())
        assert max(len(p) for p in pieces) <= SLICE_BYTES
        assert b"".join(pieces) == b"head" + big.tobytes()


def test_merged_scores_keep_order_and_report_the_oldest_version() -> None:
    parts = [ScoreResponse(rewards=[1.0, 2.0], version=4, step=9, omega=0.7),
             ScoreResponse(rewards=[3.0], version=3, step=8, omega=0.8)]
    merged = merge_scores(parts, [2, 1])
    assert merged == ScoreResponse(rewards=[1.0, 2.0, 3.0], version=3, step=8, omega=0.8)
    with pytest.raises(R2MProtocolError, match="1 rewards for 2 items"):
        merge_scores(parts[1:], [2])

