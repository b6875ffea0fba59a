"""Reward token embeddings kept after `/score`, so `/update` on the same samples skips the
backbone (docs/method.md: "the update then costs only the small module")."""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Protocol

import torch


def rte_key(backbone_identity: str, prompt: str, response: str) -> str:
    """Formatting is a pure function of the pair for a given backbone identity (which includes
    tokenizer and max length), so the raw pair keys the cache; length prefixes keep
    ("ab", "c") and ("a", "bc") apart."""
    digest = hashlib.blake2b(digest_size=20)
    for part in (backbone_identity, prompt, response):
        raw = part.encode()
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


class RTECache(Protocol):
    """Sync interface: used from the preparation and model threads, never the event loop."""

    def get_many(self, keys: Sequence[str]) -> list[torch.Tensor | None]: ...

    def put_many(self, keys: Sequence[str], values: Sequence[torch.Tensor]) -> None: ...


class LRUCache:
    """Bounded in-process RTE cache, read on the preparation thread and written on the model
    thread (hence the lock; each call holds it for microseconds)."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._lock = threading.Lock()

    def get_many(self, keys: Sequence[str]) -> list[torch.Tensor | None]:
        found: list[torch.Tensor | None] = []
        with self._lock:
            for key in keys:
                value = self._entries.get(key)
                if value is not None:
                    self._entries.move_to_end(key)
                found.append(value)
        return found

    def put_many(self, keys: Sequence[str], values: Sequence[torch.Tensor]) -> None:
        if self.capacity == 0:
            return
        with self._lock:
            for key, value in zip(keys, values, strict=True):
                self._entries[key] = value
                self._entries.move_to_end(key)
            while len(self._entries) > self.capacity:
                self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
