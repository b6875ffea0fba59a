"""The batched tokenizer path (one `encode_batch` on the Rust tokenizer) gives exactly the ids
transformers' own call gives: text pairs with the prompt cut past max length, rendered chats,
and an over-long chat cut on its own; a response that cannot fit still names its field."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from r2m_service.errors import InvalidInput
from r2m_service.text_format import TextFormatter, TextPair

MAX_LENGTH = 24
CHAT_MAX_LENGTH = 48  # the long prompt of PAIRS renders to 60 tokens
PAIRS = [
    ("2+2?", "4"),
    ("Tell me a joke about cooking rice " * 6, "Why did the rice blush? It saw the stir fry."),
    ("Ünïcödé – 漢字 and emoji 🎉 in the prompt", "and in the response: naïve café"),
    ("an empty response", ""),
    ("", "an empty prompt"),
]


def own_pair_ids(tokenizer: PreTrainedTokenizerBase) -> list[tuple[list[int], list[int]]]:
    """transformers' batched call, as the service made it before."""
    enc = tokenizer([p for p, _ in PAIRS], [r for _, r in PAIRS], truncation="only_first",
                    max_length=MAX_LENGTH)
    return list(zip(enc["input_ids"], enc["token_type_ids"], strict=True))


def test_pairs_match_transformers(bert_rm_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(bert_rm_dir)
    formatter = TextFormatter(tokenizer, MAX_LENGTH)
    encoded = formatter.encode([TextPair(p, r, f"items[{i}]") for i, (p, r) in enumerate(PAIRS)])
    assert [(e.input_ids, e.token_type_ids) for e in encoded] == own_pair_ids(tokenizer)
    assert len(encoded[1].input_ids) == MAX_LENGTH  # the long prompt was cut, not the response


def test_chats_match_transformers(llama_rm_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(llama_rm_dir)
    formatter = TextFormatter(tokenizer, CHAT_MAX_LENGTH)
    assert formatter.uses_chat_template
    encoded = formatter.encode([TextPair(p, r, f"items[{i}]") for i, (p, r) in enumerate(PAIRS)])
    cut = 0
    for (prompt, response), got in zip(PAIRS, encoded, strict=True):
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
            tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= CHAT_MAX_LENGTH:
            assert got.input_ids == ids
        else:  # cut from the prompt's start: the response's tokens end the sequence unchanged
            assert len(got.input_ids) <= CHAT_MAX_LENGTH and got.input_ids[-8:] == ids[-8:]
            cut += 1
    assert cut == 1


def test_a_response_that_cannot_fit_names_its_field(bert_rm_dir: Path) -> None:
    formatter = TextFormatter(AutoTokenizer.from_pretrained(bert_rm_dir), MAX_LENGTH)
    pairs = [TextPair("fine", "short", "items[0].response"),
             TextPair("fine", "far too long a response " * 20, "items[1].response")]
    with pytest.raises(InvalidInput) as caught:
        formatter.encode(pairs)
    assert caught.value.field == "items[1].response"
    assert formatter.encode(pairs[:1])[0].input_ids  # the tokenizer's settings recovered
