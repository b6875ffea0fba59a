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

    @property
    def bytes(self) -> int:
        """What this process holds (bounded by `rte_cache_bytes`)."""

    def get_many(self, keys: Sequence[str]) -> list[torch.Tensor | None]: ...

    def put_many(self, keys: Sequence[str], values: Sequence[torch.Tensor]) -> None: ...


# Bytes an entry costs beyond its tensor's data: the tensor object, its storage, the 40-char key
# and the dict slot (measured with tracemalloc: ~420 bytes).
ENTRY_OVERHEAD_BYTES = 512


def entry_bytes(value: torch.Tensor) -> int:
    return value.numel() * value.element_size() + ENTRY_OVERHEAD_BYTES


class LRUCache:
    """In-process RTE cache bounded by bytes (an entry's size is D_rm × 4 plus overhead, so a
    count would mean 1.5 KB per entry on MiniLM and 16 KB on a 4096-wide RM). Read on the
    preparation thread and written on the model thread (hence the lock; each call holds it for
    microseconds)."""

    def __init__(self, capacity_bytes: int) -> None:
        self.capacity_bytes = capacity_bytes
        self.bytes = 0
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
        with self._lock:
            for key, value in zip(keys, values, strict=True):
                size = entry_bytes(value)
                if size > self.capacity_bytes:
                    continue
                old = self._entries.pop(key, None)
                if old is not None:
                    self.bytes -= entry_bytes(old)
                self._entries[key] = _own_storage(value)
                self.bytes += size
            while self.bytes > self.capacity_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= entry_bytes(evicted)

    def __len__(self) -> int:
        return len(self._entries)


def _own_storage(value: torch.Tensor) -> torch.Tensor:
    """A row of a batch's output is a view that would keep the whole batch alive: the cache
    holds a copy of just the row, so its byte count is what it really pins."""
    if value.untyped_storage().nbytes() > value.numel() * value.element_size():
        return value.clone()
    return value
