"""Request bodies: names and fields as the contract says, big score batches split in order."""

from __future__ import annotations

import json

import numpy as np
import pytest
from pydantic import ValidationError

from r2m_client import Group, Pair, ScoreResponse
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
    ([], [], None, ValueError, "at least one item"),
    (["a", "b"], ["x"], None, ValueError, "2 prompts but 1 responses"),
    (["a"], ["x"], [None, None], ValueError, "1 prompts but 2 hidden-state"),
    ("ab", ["x", "y"], None, TypeError, "prompts must be a sequence of strings"),
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


def test_update_is_checked_against_the_proto_schema() -> None:
    with pytest.raises(ValidationError, match="exactly one of"):
        update_body("r", groups=None, pairs=None, step=None, binary=True)
    with pytest.raises(ValidationError, match="one per response"):
        update_body("r", groups=[Group("p", ["a", "b", "c"], [_hidden(1, 0), _hidden(1, 1)])],
                    pairs=None,
                    step=None, binary=True)


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

