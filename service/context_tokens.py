"""Split mode's context tokens: the contexts c a score phase received, kept for a short while so
that the update of the same samples names them instead of sending them again (one `[D_p]`
float32 vector per sample less on the wire, `proto/split.py`).

A token holds one request's contexts in sample order, with the run and version they were
computed at and a digest of each sample's text, so a phase can tell a stale or mismatched
reference from a good one. Bounded twice: every token expires after `split_context_ttl_s`, and
this process keeps at most `split_context_bytes` of them (oldest dropped first). Behind Redis a
token is also written there (SET with EX), so an update that lands on another replica finds it.
Used from the preparation thread and worker threads, never the event loop.
"""

from __future__ import annotations

import json
import logging
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import redis
import torch
from redis.exceptions import RedisError

from r2m_proto.safetensors_body import decode_safetensors, encode_safetensors
from r2m_service.hidden_states import to_torch
from r2m_service.rte_cache import rte_key

log = logging.getLogger(__name__)
_KEY_BYTES = 48  # a sample digest (40 hex chars) and its list slot
_ENTRY_OVERHEAD_BYTES = 1024  # the token string, the dict slot, the dataclass and tensor objects


def sample_digest(prompt: str, response: str) -> str:
    """Which sample a context belongs to (the RTE cache's key function, with no backbone)."""
    return rte_key("split-context", prompt, response)


@dataclass(frozen=True)
class ContextEntry:
    """The contexts of one request, in its sample order."""

    run_id: str
    version: int
    samples: tuple[str, ...]  # sample_digest of each sample
    contexts: torch.Tensor  # [B, D_p] float32, CPU

    @property
    def nbytes(self) -> int:
        return (self.contexts.numel() * 4 + len(self.samples) * _KEY_BYTES
                + _ENTRY_OVERHEAD_BYTES)

    def encode(self) -> bytes:
        """As a safetensors file (the wire's own format), for Redis."""
        meta = {"run_id": self.run_id, "version": str(self.version),
                "samples": json.dumps(self.samples)}
        data = memoryview(self.contexts.contiguous().numpy()).cast("B")
        return b"".join(bytes(part) for part in encode_safetensors(
            [("contexts", "float32", tuple(self.contexts.shape), data)], meta))

    @classmethod
    def decode(cls, raw: bytes) -> ContextEntry:
        meta, tensors = decode_safetensors(bytearray(raw))  # the one copy: a writable buffer
        return cls(meta["run_id"], int(meta["version"]), tuple(json.loads(meta["samples"])),
                   to_torch(tensors["contexts"]))


class ContextTokens:
    """Tokens in this process: expire after `ttl_s`, at most `max_bytes` in all (LRU by
    insertion: a token is read twice, by the gradient and the update, then not again).
    `max_bytes = 0` keeps none: answers carry no token and the trainer sends c each time."""

    def __init__(self, max_bytes: int, ttl_s: float) -> None:
        self.max_bytes = max_bytes
        self.ttl_s = ttl_s
        self.bytes = 0
        self._entries: OrderedDict[str, tuple[float, ContextEntry]] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def enabled(self) -> bool:
        return self.max_bytes > 0

    def put(self, entry: ContextEntry) -> str | None:
        """A new token for `entry`; None when it does not fit (the phases then work without)."""
        if not self.enabled or entry.nbytes > self.max_bytes:
            return None
        token = secrets.token_urlsafe(18)
        self._keep(token, entry)
        return token

    def get(self, token: str) -> ContextEntry | None:
        with self._lock:
            self._expire()
            found = self._entries.get(token)
        return None if found is None else found[1]

    def close(self) -> None:
        """Nothing to release in this process."""

    def _keep(self, token: str, entry: ContextEntry) -> None:
        with self._lock:
            self._expire()
            self._entries[token] = (time.monotonic() + self.ttl_s, entry)
            self.bytes += entry.nbytes
            while self.bytes > self.max_bytes:
                self.bytes -= self._entries.popitem(last=False)[1][1].nbytes

    def _expire(self) -> None:
        now = time.monotonic()
        while self._entries:
            expires, entry = next(iter(self._entries.values()))
            if expires > now:
                return
            self._entries.popitem(last=False)
            self.bytes -= entry.nbytes


class RedisContextTokens(ContextTokens):
    """This process's tokens in front of Redis, where every replica finds them (SET … EX ttl).
    The write is synchronous, before the answer that names the token leaves, so the next phase
    can land anywhere. Redis trouble only costs a restart: the token is kept here still, a
    replica that cannot find it answers 409 and the trainer resends the contexts."""

    def __init__(self, max_bytes: int, ttl_s: float, client: redis.Redis, prefix: str) -> None:
        super().__init__(max_bytes, ttl_s)
        self._redis = client
        self._prefix = prefix

    def put(self, entry: ContextEntry) -> str | None:
        token = super().put(entry)
        if token is not None:
            try:
                self._redis.set(self._prefix + token, entry.encode(), ex=max(1, round(self.ttl_s)))
            except (RedisError, OSError) as exc:
                log.warning("context token not written to redis (%s): only this replica has it",
                            exc)
        return token

    def get(self, token: str) -> ContextEntry | None:
        found = super().get(token)
        if found is not None or not self.enabled:
            return found
        try:
            raw = self._redis.get(self._prefix + token)
        except (RedisError, OSError) as exc:
            log.warning("context token not read from redis (%s)", exc)
            return None
        if raw is None:
            return None
        entry = ContextEntry.decode(raw)
        self._keep(token, entry)
        return entry

    def close(self) -> None:
        self._redis.close()


def digests(prompts: Sequence[str], responses: Sequence[str]) -> tuple[str, ...]:
    return tuple(sample_digest(p, r) for p, r in zip(prompts, responses, strict=True))
