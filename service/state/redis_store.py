"""Redis store: N replicas behind a load balancer serve the same runs (docs/design.md, "State
and scale-out").

Keys (hash-tagged per run, so a run's keys share a cluster slot):
  {p}:runs                       set of run ids
  {p}:run:{id}:head              JSON {version, chain, retained}: the current version (atomic
                                 switch), where it lies (a snapshot and the logged steps after
                                 it, `chain`), and the older chains kept
  {p}:run:{id}:state:{v}:{t}:{i} chunk i of version v's snapshot written under lock token t
  {p}:run:{id}:step:{v}:{t}:{i}  chunk i of the logged step that made version v (both without
                                 --checkpoint-dir; with it each blob is a file there)
  {p}:run:{id}:lock              update lock: random token, with a lease (PX)
  {p}:run:{id}:creating          claim on a new run's id while its version 0 is written
  {p}:run:{id}:idem:{key}        response JSON of an applied update (EX ttl)
  {p}:rte:{key}                  reward token embedding (float32 bytes, EX ttl)
  {p}:ctx:{token}                split mode's contexts of one request (safetensors, EX ttl)
  channel {p}:events             {"run", "version"} or {"run", "deleted": true}

An update writes a blob under a name of its own (version + lock token, `blobs.py`): the step it
took (its gradient, a third of the full state) while the chain is shorter than
`snapshot_every`, else a full snapshot that starts a new chain. Then one Lua script checks that
the lock is still ours and that the blob is all there, makes it persistent, and switches `head`
+ records the idempotency key; only then is the version visible. A reader replays the chain's
steps on its snapshot (bit-exact, `run_steps.py`), or only the steps after the version it holds.
The head keeps `retained_versions - 1` superseded chains for replicas still reading them and the
commit removes older ones, so a run holds a bounded number of bytes whatever its update rate. A
crashed holder's lease runs out; what it had written under its token is never named by a head and
expires (`blobs.py`). Pub/sub wakes replicas early; `head` is still checked on every score
because notifications are lost while a replica is disconnected.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Any

import redis
import redis.asyncio as aioredis
from prometheus_client import Counter
from redis.exceptions import RedisError

from r2m_service.context_tokens import RedisContextTokens
from r2m_service.rte_cache import LRUCache
from r2m_service.state.base import (
    EventHandler,
    RunIdTaken,
    StateEncoder,
    StateStore,
    StoredRun,
    StoreUnavailable,
    UpdateTransaction,
)
from r2m_service.state.blobs import (
    SNAPSHOT,
    STEP,
    BlobRef,
    DirectoryBlobs,
    RedisChunks,
    StateBlobs,
)
from r2m_service.state.redis_rte import RedisRTECache

log = logging.getLogger(__name__)

# KEYS: lock, head, idempotency record, then the new blob's chunks (all must still exist).
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
for i = 4, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 0 then return -1 end
end
for i = 4, #KEYS do redis.call('PERSIST', KEYS[i]) end
redis.call('SET', KEYS[2], ARGV[2])
if ARGV[3] ~= '' then redis.call('SET', KEYS[3], ARGV[3], 'EX', ARGV[4]) end
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_CREATE_CLAIM_TTL_S = 60  # a creator that dies mid-create frees the id after this


class LockLost(StoreUnavailable):
    def __init__(self, run_id: str) -> None:
        super().__init__(f"the update lock of {run_id} expired before the commit")


def _named(chain: list[BlobRef], retained: list[list[BlobRef]]) -> list[BlobRef]:
    """Every blob a head names: its chain and the superseded chains it keeps."""
    return [*chain, *(ref for old in retained for ref in old)]


class RedisStore(StateStore):
    def __init__(self, url: str, *, rte_write_failures: Counter, prefix: str = "r2m",
                 lock_lease_s: float = 30.0, lock_wait_s: float = 60.0,
                 idempotency_ttl_s: float = 86400.0, chunk_bytes: int = 8 * 1024 * 1024,
                 rte_cache_bytes: int = 256 << 20, rte_ttl_s: float = 86400.0,
                 retained_versions: int = 2, snapshot_every: int = 1,
                 blob_dir: str | None = None,
                 blob_fsync: bool = True, split_context_bytes: int = 256 << 20,
                 split_context_ttl_s: float = 600.0) -> None:
        options = {"socket_timeout": 5.0, "socket_connect_timeout": 2.0,
                   "health_check_interval": 10}
        self._redis = aioredis.Redis.from_url(url, **options)
        self._prefix = prefix
        self._lease_ms = int(lock_lease_s * 1000)
        self._lock_wait_s = lock_wait_s
        self._idempotency_ttl_s = int(idempotency_ttl_s)
        self._retained = retained_versions - 1
        self._snapshot_every = snapshot_every
        self._blobs: StateBlobs = (
            DirectoryBlobs(blob_dir, fsync=blob_fsync) if blob_dir
            else RedisChunks(self._redis, self._run_key, chunk_bytes))
        self._commit = self._redis.register_script(_COMMIT)
        self._release = self._redis.register_script(_RELEASE)
        self._renew = self._redis.register_script(_RENEW)
        self._listener: asyncio.Task[None] | None = None
        self.rte_cache = RedisRTECache(LRUCache(rte_cache_bytes), redis.Redis.from_url(
            url, **options), f"{prefix}:rte:", int(rte_ttl_s), write_failures=rte_write_failures)
        self.contexts = RedisContextTokens(split_context_bytes, split_context_ttl_s,
                                           redis.Redis.from_url(url, **options), f"{prefix}:ctx:")

    # ---- keys ---------------------------------------------------------------------------------

    def _run_key(self, run_id: str, *parts: object) -> str:
        return ":".join([f"{self._prefix}:run:{{{run_id}}}", *map(str, parts)])

    @property
    def _channel(self) -> str:
        return f"{self._prefix}:events"

    # ---- lifecycle ----------------------------------------------------------------------------

    async def start(self, on_event: EventHandler) -> None:
        self._listener = asyncio.create_task(self._listen(on_event), name="r2m-redis-events")

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._listener
        await self._redis.aclose()
        self.rte_cache.close()
        self.contexts.close()

    @contextlib.asynccontextmanager
    async def _available(self, what: str) -> AsyncIterator[None]:
        """Redis errors as `StoreUnavailable` (503). A broken connection also closes every idle
        one in the pool: after Redis restarts they are all dead, and each would fail one more
        request (an update's commit, say) before the pool dialled afresh."""
        try:
            yield
        except (RedisError, OSError) as exc:
            if isinstance(exc, OSError | redis.ConnectionError | redis.TimeoutError):
                with contextlib.suppress(RedisError, OSError):
                    await self._redis.connection_pool.disconnect(inuse_connections=False)
            raise StoreUnavailable(f"redis {what}: {exc}") from exc

    async def ping(self) -> None:
        async with self._available("ping"):
            await self._redis.ping()

    # ---- runs ---------------------------------------------------------------------------------

    async def create(self, run_id: str, state: StateEncoder) -> None:
        """Claim the id (NX, so two replicas creating the same id cannot both write version 0),
        write the snapshot, then the head."""
        async with self._available("create run"):
            head = self._run_key(run_id, "head")
            if await self._redis.exists(head) or not await self._redis.set(
                    self._run_key(run_id, "creating"), "1", nx=True, ex=_CREATE_CLAIM_TTL_S):
                raise RunIdTaken(run_id)
        data = await state.snapshot()
        async with self._available("create run"):
            blob = await self._blobs.write(run_id, 0, secrets.token_hex(8), SNAPSHOT, data)
            async with self._redis.pipeline(transaction=True) as pipe:
                for key in self._blobs.commit_keys(run_id, blob):
                    pipe.persist(key)
                pipe.set(head, json.dumps({"version": 0, "chain": [blob], "retained": []}))
                pipe.sadd(f"{self._prefix}:runs", run_id)
                await pipe.execute()

    async def load(self, run_id: str, since: int | None = None) -> StoredRun | None:
        async with self._available("load run"):
            for _ in range(3):  # the head may move on between reading it and its blobs
                head = await self._head(run_id)
                if head is None:
                    return None
                stored = await self._read_chain(run_id, head, since)
                if stored is not None:
                    return stored
        raise StoreUnavailable(f"the state of {run_id} kept changing while it was read")

    async def _read_chain(self, run_id: str, head: dict[str, Any], since: int | None
                          ) -> StoredRun | None:
        """The head's version from its chain: only the steps after `since` when the chain
        holds them, else its snapshot and all its steps (None: a blob is gone meanwhile)."""
        snapshot_ref, *steps = head["chain"]
        incremental = since is not None and snapshot_ref["version"] <= since
        snapshot = None if incremental else await self._blobs.read(run_id, snapshot_ref)
        if not incremental and snapshot is None:
            return None
        data = [await self._blobs.read(run_id, ref) for ref in steps
                if not incremental or ref["version"] > since]
        if any(step is None for step in data):
            return None
        return StoredRun(int(head["version"]), snapshot, data)  # type: ignore[arg-type]

    async def head(self, run_id: str) -> int | None:
        async with self._available("version check"):
            head = await self._head(run_id)
        return None if head is None else int(head["version"])

    async def delete(self, run_id: str) -> None:
        async with self._available("delete run"):
            head = await self._head(run_id)
            async with self._redis.pipeline(transaction=True) as pipe:
                pipe.delete(self._run_key(run_id, "head"))
                pipe.srem(f"{self._prefix}:runs", run_id)
                pipe.publish(self._channel, json.dumps({"run": run_id, "deleted": True}))
                await pipe.execute()
            if head is not None:
                await self._blobs.remove_run(run_id, _named(head["chain"], head["retained"]))

    async def stored_run_ids(self) -> list[str]:
        return []  # loaded lazily, on first use, by whichever replica needs them

    # ---- updates ------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def transaction(self, run_id: str) -> AsyncIterator[UpdateTransaction]:
        key = self._run_key(run_id, "lock")
        token = secrets.token_hex(16)
        async with self._available("update lock"):
            await self._acquire(key, token, run_id)
        renewer = asyncio.create_task(self._keep_alive(key, token))
        try:
            yield _RedisTransaction(self, run_id, token)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
            with contextlib.suppress(RedisError, OSError):  # else the lease frees it
                await self._release(keys=[key], args=[token])

    async def _commit_version(self, run_id: str, token: str, version: int,
                              state: StateEncoder, response_json: str,
                              idempotency_key: str | None) -> None:
        """Log the step while the chain is shorter than `snapshot_every` (and the run made this
        version by a step from the chain's last one), else write a snapshot; then the fenced
        switch."""
        async with self._available("commit"):
            previous = await self._head(run_id)
        chain = [] if previous is None else previous["chain"]
        retained = [] if previous is None else previous["retained"]
        step = (await state.step() if 0 < len(chain) < self._snapshot_every
                and chain[-1]["version"] == version - 1 else None)
        data = step if step is not None else await state.snapshot()
        async with self._available("commit"):
            blob = await self._blobs.write(run_id, version, token,
                                           SNAPSHOT if step is None else STEP, data)
            if step is None:  # a new chain; the one it replaces is kept for its readers
                chain, retained = [blob], ([chain] if chain else []) + retained
            else:
                chain = [*chain, blob]
            kept, dropped = retained[:self._retained], retained[self._retained:]
            idem_key = self._run_key(run_id, "idem", idempotency_key or "-")
            committed = await self._commit(
                keys=[self._run_key(run_id, "lock"), self._run_key(run_id, "head"), idem_key,
                      *self._blobs.commit_keys(run_id, blob)],
                args=[token, json.dumps({"version": version, "chain": chain,
                                         "retained": kept}),
                      response_json if idempotency_key else "", self._idempotency_ttl_s])
            if committed != 1:
                await self._blobs.remove(run_id, [blob])  # never named by a head
                if committed == 0:
                    raise LockLost(run_id)
                raise StoreUnavailable(f"the state written for {run_id} v{version} expired "
                                       "before its commit")
            await self._blobs.remove(run_id, _named([], dropped))
            await self._blobs.sweep(run_id, version, _named(chain, kept))
            await self._redis.publish(self._channel, json.dumps({"run": run_id,
                                                                 "version": version}))

    async def _recorded_response(self, run_id: str, key: str) -> str | None:
        async with self._available("idempotency check"):
            value = await self._redis.get(self._run_key(run_id, "idem", key))
        return None if value is None else value.decode()

    # ---- internals ----------------------------------------------------------------------------

    async def _head(self, run_id: str) -> dict[str, Any] | None:
        raw = await self._redis.get(self._run_key(run_id, "head"))
        return None if raw is None else json.loads(raw)

    async def _acquire(self, key: str, token: str, run_id: str) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._lock_wait_s
        delay = 0.005
        while not await self._redis.set(key, token, nx=True, px=self._lease_ms):
            if loop.time() > deadline:
                raise StoreUnavailable(f"run {run_id} stayed locked by another update for "
                                       f"{self._lock_wait_s:.0f}s")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    async def _keep_alive(self, key: str, token: str) -> None:
        while True:
            await asyncio.sleep(self._lease_ms / 3000)
            with contextlib.suppress(RedisError, OSError):
                await self._renew(keys=[key], args=[token, self._lease_ms])

    async def _listen(self, on_event: EventHandler) -> None:
        """Deliver version/delete events; reconnect with backoff when Redis goes away."""
        delay = 0.1
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    delay = 0.1
                    async for message in pubsub.listen():
                        if message.get("type") != "message":
                            continue
                        event = json.loads(message["data"])
                        on_event(event["run"], None if event.get("deleted") else
                                 int(event["version"]))
            except (RedisError, OSError) as exc:
                log.warning("redis notifications interrupted (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)


class _RedisTransaction(UpdateTransaction):
    def __init__(self, store: RedisStore, run_id: str, token: str) -> None:
        self._store = store
        self._run_id = run_id
        self._token = token

    async def recorded_response(self, key: str) -> str | None:
        return await self._store._recorded_response(self._run_id, key)

    async def commit(self, version: int, state: StateEncoder, response_json: str,
                     idempotency_key: str | None) -> None:
        await self._store._commit_version(self._run_id, self._token, version, state,
                                          response_json, idempotency_key)


