"""(prompt, response) → backbone token ids.

The tokenizer's chat template (user = prompt, assistant = response) when it has one, else its
text-pair encoding. **[choice]** Over-long inputs lose tokens from the *start of the prompt*: the
response is what is being rewarded and, for causal RMs, its last token carries the reward, so it is
never cut. A response that alone exceeds the limit is refused rather than silently split.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tokenizers import Tokenizer
from transformers import PreTrainedTokenizerBase

from r2m_service.errors import InvalidInput

_MAX_CHAT_TRUNCATION_ROUNDS = 4


@dataclass(frozen=True)
class TextPair:
    """One (prompt, response) and where it sits in the request, for error messages."""

    prompt: str
    response: str
    field: str  # where the response sits: `items[3].response`, `groups[1].responses[2]`…


@dataclass(frozen=True)
class Encoded:
    input_ids: list[int]
    token_type_ids: list[int] | None


class TextFormatter:
    """Formats and tokenizes text pairs for one backbone."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, max_length: int) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.uses_chat_template = bool(getattr(tokenizer, "chat_template", None))
        self._with_token_types = "token_type_ids" in tokenizer.model_input_names
        # the Rust tokenizer behind a fast tokenizer (None for a slow, pure-Python one)
        self._backend: Tokenizer | None = (getattr(tokenizer, "backend_tokenizer", None)
                                           if tokenizer.is_fast else None)

    def encode(self, pairs: Sequence[TextPair]) -> list[Encoded]:
        """Tokenize a batch in one tokenizer call; errors name the offending pair's field."""
        if self.uses_chat_template:
            return self._encode_chats(pairs)
        return self._encode_pairs(pairs)

    def _encode_pairs(self, pairs: Sequence[TextPair]) -> list[Encoded]:
        try:
            if self._backend is not None:
                encodings = self._backend_batch(self._backend, [(p.prompt, p.response)
                                                                for p in pairs], pairs=True)
                return [self._encoded(e.ids, e.type_ids) for e in encodings]
            enc = self.tokenizer([p.prompt for p in pairs], [p.response for p in pairs],
                                 truncation="only_first", max_length=self.max_length)
        except Exception:  # the fast tokenizer fails the whole batch; find the culprit
            for p in pairs:
                self._check_response_fits(p.response, p.field, pair=True)
            raise
        types = enc.get("token_type_ids") if self._with_token_types else None
        return [Encoded(ids, types[i] if types is not None else None)
                for i, ids in enumerate(enc["input_ids"])]

    def _backend_batch(self, backend: Tokenizer, inputs: list[Any], *,
                       pairs: bool) -> list[Any]:
        """What transformers' `__call__` runs inside (the same ids), without building a dict
        of lists per item (attention masks, never read): ~15% less tokenizing time
        (bench/RESULTS.md#overhead-per-item-issue-11). Pairs get special tokens and lose
        prompt tokens past max length (`only_first`); rendered chats (the template wrote the
        special tokens) get neither. Set per batch, as transformers does, because its own calls
        (`_check_response_fits`, `decode`) leave their settings behind."""
        backend.encode_special_tokens = bool(getattr(self.tokenizer, "split_special_tokens",
                                                     False))
        if pairs:
            backend.enable_truncation(self.max_length, strategy="only_first",
                                      direction=self.tokenizer.truncation_side)
        elif backend.truncation is not None:
            backend.no_truncation()
        if backend.padding is not None:
            backend.no_padding()
        return backend.encode_batch(inputs, add_special_tokens=pairs)

    def _encoded(self, ids: list[int], types: list[int] | None) -> Encoded:
        if not self._with_token_types:
            return Encoded(ids, None)
        return Encoded(ids, [0] * len(ids) if types is None else types)

    def _encode_chats(self, pairs: Sequence[TextPair]) -> list[Encoded]:
        """Render every chat, tokenize them in one call; only an over-long one is then cut on
        its own (rare, and several tokenizer calls each)."""
        rendered = self._chat_ids([self._chat_text(p.prompt, p.response) for p in pairs])
        return [self._encoded(ids, None) if len(ids) <= self.max_length
                else self._encode_chat(p.prompt, p.response, p.field)
                for p, ids in zip(pairs, rendered, strict=True)]

    def _encode_chat(self, prompt: str, response: str, field: str) -> Encoded:
        for _ in range(_MAX_CHAT_TRUNCATION_ROUNDS):
            ids = self._chat_ids([self._chat_text(prompt, response)])[0]
            overflow = len(ids) - self.max_length
            if overflow <= 0:
                return self._encoded(ids, None)
            prompt_ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
            keep = len(prompt_ids) - overflow
            if keep <= 0:
                break
            prompt = self.tokenizer.decode(prompt_ids[-keep:])
        self._check_response_fits(response, field, pair=False)
        raise InvalidInput(f"cannot fit the chat-formatted input into max_length="
                           f"{self.max_length} tokens by truncating the prompt", field)

    def _chat_text(self, prompt: str, response: str) -> str:
        return self.tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
            tokenize=False)

    def _chat_ids(self, texts: list[str]) -> list[list[int]]:
        """Token ids of rendered chats (the template wrote the special tokens): one call."""
        if self._backend is not None:
            return [e.ids for e in self._backend_batch(self._backend, texts, pairs=False)]
        return self.tokenizer(texts, add_special_tokens=False)["input_ids"]

    def _check_response_fits(self, response: str, field: str, *, pair: bool) -> None:
        n = len(self.tokenizer(response, add_special_tokens=False)["input_ids"])
        budget = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=pair)
        if n > budget:
            raise InvalidInput(f"response is {n} tokens; the backbone takes at most {budget} "
                               f"response tokens (max_length={self.max_length}); the response "
                               "is never truncated", field)
