"""Where the Redis store puts a version's state bytes: in Redis itself (chunked keys), or as
files in a directory every replica shares, with Redis keeping only the fenced head that points at
them. A paper-scale run (D_rm = D_p = 4096, d = 2048) is ~400 MB a version: in Redis that is
400 MB sent and up to `retained_versions` × 400 MB held per run; in the directory Redis sees
34 KB per update (docs/measurements.md, "Paper-scale state"). Both write straight from views of
the run's tensors: no serialized copy of the state is ever made.

A blob is a snapshot (`state`: the full state) or a logged optimizer step (`step`: the
gradient it applied, a third of the bytes; `run_steps.py`). Every blob is named by its kind, its
version *and the update lock's token*: a writer whose lock lapsed writes under its own name and
can never overwrite the bytes of the version another holder committed under the same number. A
blob becomes visible only when the head names it. A writer that dies between writing and
committing leaves its blob behind: in Redis its chunks carry a TTL until the commit that names
them makes them persistent; in the directory the next successful commit removes every file no
head names.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from r2m_service.state.base import Buffers

# A blob's address as the head records it (JSON): {"version", "token", "kind", and the
# store's own}.
BlobRef = dict[str, Any]
SNAPSHOT, STEP = "state", "step"
# How long an uncommitted chunk lives in Redis: far longer than any write and its commit take
# (the commit checks that every chunk is still there, so one that expired fails the commit
# cleanly), short enough that a crashed writer's bytes do not pile up.
UNCOMMITTED_TTL_S = 600


class StateBlobs(ABC):
    @abstractmethod
    async def write(self, run_id: str, version: int, token: str, kind: str,
                    state: Buffers) -> BlobRef:
        """Write a version's blob durably (not yet visible: the head does not name it)."""

    def commit_keys(self, run_id: str, ref: BlobRef) -> list[str]:
        """Redis keys the commit must find and make persistent (none for files)."""
        return []

    async def sweep(self, run_id: str, version: int,  # noqa: B027 - optional
                    named: list[BlobRef]) -> None:
        """After the commit of `version`: remove this run's blobs of that version or older
        that no head names (left by a writer that died before its commit). Newer ones may be
        the next lock holder's, not yet committed."""

    @abstractmethod
    async def read(self, run_id: str, ref: BlobRef) -> bytes | None:
        """The bytes, or None when they are gone (superseded and removed meanwhile)."""

    @abstractmethod
    async def remove(self, run_id: str, refs: list[BlobRef]) -> None:
        """Remove blobs no head names any more (best effort)."""

    async def remove_run(self, run_id: str, refs: list[BlobRef]) -> None:
        await self.remove(run_id, refs)


class RedisChunks(StateBlobs):
    """`{p}:run:{id}:{kind}:{version}:{token}:{i}`, each ≤ `chunk_bytes` (Redis caps one value
    at 512 MB), sent from views of the run's tensors without a copy, with a TTL until committed."""

    def __init__(self, client: aioredis.Redis, run_key: Any, chunk_bytes: int) -> None:
        self._redis = client
        self._run_key = run_key
        self._chunk_bytes = chunk_bytes

    def _keys(self, run_id: str, ref: BlobRef) -> list[str]:
        return [self._run_key(run_id, ref["kind"], ref["version"], ref["token"], i)
                for i in range(ref["chunks"])]

    async def write(self, run_id: str, version: int, token: str, kind: str,
                    state: Buffers) -> BlobRef:
        pieces = [view[i:i + self._chunk_bytes] for view in map(memoryview, state)
                  for i in range(0, len(view), self._chunk_bytes)]
        ref = {"version": version, "token": token, "kind": kind, "chunks": len(pieces)}
        async with self._redis.pipeline(transaction=False) as pipe:
            for key, piece in zip(self._keys(run_id, ref), pieces, strict=True):
                pipe.set(key, piece, ex=UNCOMMITTED_TTL_S)
            await pipe.execute()
        return ref

    def commit_keys(self, run_id: str, ref: BlobRef) -> list[str]:
        return self._keys(run_id, ref)

    async def read(self, run_id: str, ref: BlobRef) -> bytes | None:
        parts = await self._redis.mget(self._keys(run_id, ref))
        return None if any(p is None for p in parts) else b"".join(parts)

    async def remove(self, run_id: str, refs: list[BlobRef]) -> None:
        keys = [key for ref in refs for key in self._keys(run_id, ref)]
        if keys:
            await self._redis.delete(*keys)


class DirectoryBlobs(StateBlobs):
    """`{dir}/{run_id}/{version}-{token}.r2m-state`, written to a temporary name, fsynced (when
    asked) and renamed, so a reader never sees half a file. The directory must be shared by
    every replica (one host's disk, or a shared volume)."""

    def __init__(self, root: str, *, fsync: bool) -> None:
        self._root = Path(root)
        self._fsync = fsync
        self._root.mkdir(parents=True, exist_ok=True)

    def _path(self, run_id: str, ref: BlobRef) -> Path:
        return self._root / run_id / f"{ref['version']}-{ref['token']}.r2m-{ref['kind']}"

    async def write(self, run_id: str, version: int, token: str, kind: str,
                    state: Buffers) -> BlobRef:
        ref = {"version": version, "token": token, "kind": kind, "file": True}
        await asyncio.to_thread(write_file, self._path(run_id, ref), state, self._fsync)
        return ref

    async def sweep(self, run_id: str, version: int, named: list[BlobRef]) -> None:
        keep = {self._path(run_id, ref).name for ref in named}
        for path in (self._root / run_id).iterdir():
            # `{version}-{token}.r2m-{kind}`, or `.{that}.{pid}.tmp` while being written
            written = path.name.lstrip(".").split("-", 1)[0]
            if path.name not in keep and written.isdigit() and int(written) <= version:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()

    async def read(self, run_id: str, ref: BlobRef) -> bytes | None:
        try:
            return await asyncio.to_thread(self._path(run_id, ref).read_bytes)
        except FileNotFoundError:
            return None

    async def remove(self, run_id: str, refs: list[BlobRef]) -> None:
        for ref in refs:
            with contextlib.suppress(FileNotFoundError):
                self._path(run_id, ref).unlink()

    async def remove_run(self, run_id: str, refs: list[BlobRef]) -> None:
        await asyncio.to_thread(shutil.rmtree, self._root / run_id, True)


def write_file(path: Path, state: Buffers, fsync: bool) -> None:
    """Atomically (temporary name + rename), straight from the buffers."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with tmp.open("wb") as f:
            for buffer in state:
                f.write(buffer)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
