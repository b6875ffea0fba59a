"""The caller's mistakes, found before a byte is sent and said in the caller's terms.

Requests are built as proto models, so the schema the server applies is applied here too. But a
pydantic `ValidationError` describes the wire request, not the call: it names internal tensor
keys (`groups.0.hidden_states.1`) and echoes the offending values. So the rules a caller can
break are checked here first, each error naming the argument (`groups[1]`) and the rule, and
whatever the schema still refuses (a negative step, a run setting out of range) is re-raised by
`build` as an `R2MInputError` naming the field, never as pydantic's own exception.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from r2m_client.errors import R2MInputError
from r2m_client.types import Group, Pair
from r2m_proto.errors import field_path
from r2m_proto.tensors import TensorView

M = TypeVar("M", bound=BaseModel)


def build(model: type[M], field: str | None = None, /, **values: Any) -> M:
    """`model(**values)`, with a schema violation raised as `R2MInputError`.

    `field` is where the model sits in the call (`groups[2]`), so an error inside it reads
    `groups[2].scores[1]`. The offending values are left out of the message on purpose: they
    can be long texts or tensor names the caller never wrote; and pydantic's report is not
    chained for the same reason.
    """
    try:
        return model(**values)
    except ValidationError as exc:
        problems = [(field_path([*([field] if field else []), *error["loc"]]) or None,
                     error["msg"].removeprefix("Value error, "))
                    for error in exc.errors(include_url=False, include_input=False)]
        (where, rule), rest = problems[0], problems[1:]
        message = "; ".join([rule, *(f"{path}: {why}" if path else why for path, why in rest)])
        raise R2MInputError(message, field=where) from None


def check_score_batch(prompts: Sequence[str], responses: Sequence[str],
                      hidden_states: Sequence[object] | None) -> int:
    """The batch size, after the mistakes a zip would silently hide."""
    _check_texts("prompts", prompts)
    _check_texts("responses", responses)
    n = len(prompts)
    if n == 0:
        raise R2MInputError("score needs at least one item, got no prompts", field="prompts")
    if len(responses) != n:
        raise R2MInputError(f"got {n} prompts but {len(responses)} responses; give one response "
                            "per prompt", field="responses")
    if hidden_states is not None:
        _check_sized("hidden_states", hidden_states, "tensors")
        if len(hidden_states) != n:
            raise R2MInputError(f"got {n} prompts but {len(hidden_states)} hidden-state "
                                "tensors; give one per item (None for an item without)",
                                field="hidden_states")
    return n


def check_update(groups: Sequence[Group] | None, pairs: Sequence[Pair] | None) -> None:
    """One update is either GREBT on groups or BT on pairs, each sample complete."""
    if (groups is None) == (pairs is None):
        raise R2MInputError("give exactly one of groups= (GREBT on self-labelled groups) or "
                            "pairs= (Bradley–Terry on labelled pairs)")
    if groups is not None:
        _check_samples("groups", groups, Group)
        for n, group in enumerate(groups):
            _check_group(f"groups[{n}]", group)
    if pairs is not None:
        _check_samples("pairs", pairs, Pair)
        for n, pair in enumerate(pairs):
            for name in ("prompt", "chosen", "rejected"):
                _check_text(f"pairs[{n}].{name}", getattr(pair, name))


def _check_group(field: str, group: Group) -> None:
    _check_text(f"{field}.prompt", group.prompt)
    _check_texts(f"{field}.responses", group.responses)
    _check_sized(f"{field}.hidden_states", group.hidden_states, "tensors")
    k = len(group.responses)
    if k < 2:
        raise R2MInputError(f"a group needs K ≥ 2 responses, got {k}: GREBT learns from the best "
                            "and the worst response of each group", field=field)
    if len(group.hidden_states) != k:
        raise R2MInputError(f"{k} responses but {len(group.hidden_states)} hidden-state tensors; "
                            "give one per response", field=field)
    if group.scores is not None:
        _check_sized(f"{field}.scores", group.scores, "floats")
        if len(group.scores) != k:
            raise R2MInputError(f"{k} responses but {len(group.scores)} scores; give one per "
                                "response, or none to let the server score them", field=field)


def check_same_width(tensors: Iterable[tuple[str, TensorView]]) -> None:
    """All hidden states of one request have one width: a run has one policy_hidden_size."""
    first: tuple[str, int] | None = None
    for field, view in tensors:
        width = view.shape[1]
        if first is None:
            first = (field, width)
        elif width != first[1]:
            raise R2MInputError(f"hidden size {width} differs from {first[0]}'s {first[1]}; all "
                                "hidden states of a run have its one policy_hidden_size",
                                field=field)


def _check_texts(field: str, texts: Sequence[str]) -> None:
    _check_sized(field, texts, "strings")
    for i, text in enumerate(texts):
        _check_text(f"{field}[{i}]", text)


def _check_text(field: str, text: object) -> None:
    if not isinstance(text, str):
        raise TypeError(f"{field}: expected a str, got {type(text).__name__}")


def _check_sized(field: str, value: object, of: str) -> None:
    """A list, tuple or array; not one string, which would pass as a sequence of characters."""
    if isinstance(value, str | bytes) or not hasattr(value, "__len__"):
        raise TypeError(f"{field} must be a sequence of {of}, not {type(value).__name__}")


def _check_samples(field: str, samples: Sequence[object], kind: type[Group] | type[Pair]) -> None:
    _check_sized(field, samples, f"r2m_client.{kind.__name__} objects")
    if len(samples) == 0:
        raise R2MInputError(f"is empty; give at least one {kind.__name__.lower()}", field=field)
    for n, sample in enumerate(samples):
        if not isinstance(sample, kind):
            raise TypeError(f"{field}[{n}]: expected an r2m_client.{kind.__name__}, got "
                            f"{type(sample).__name__}")
