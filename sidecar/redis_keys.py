"""API keys shared by every replica through Redis, as hashes only, with an in-process cache.

Layout (prefix `LLM_POD_REDIS_PREFIX`, default `llm-pod`):
- `<prefix>:key:<sha256>`: a Redis hash with the entry's metadata (id, priority, disabled, expires,
  limits, models); the key itself is never stored;
- `<prefix>:ids`: a Redis hash from key id to sha256, for the CLI.

A lookup is served from the cache while it is younger than `redis_cache_seconds` (which is therefore
the bound on how long a revoked key keeps working). When Redis does not answer, a cached entry keeps
working until it is `redis_stale_seconds` old; after that, or for a key never seen, the lookup fails
and the request is refused (503): never open.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import datetime
from typing import Any, TypeVar, cast

import redis
import redis.asyncio as aioredis
from redis.client import Pipeline

from sidecar.keys import LIMIT_NAMES, KeyEntry, KeyFileError, check_key_id, hash_key, new_key
from sidecar.redis_conn import REDIS_FAILURES, RedisGate

logger = logging.getLogger(__name__)

T = TypeVar("T")

CACHE_MAX_ENTRIES = 50_000  # a flood of made-up keys must not grow memory without bound
TRANSACTION_ATTEMPTS = 20  # a CLI command retried this often while other admins write; then it stops


class StoreUnavailable(RuntimeError):
    """Redis did not answer and nothing usable is cached: the caller must refuse the request."""


def entry_to_fields(entry: KeyEntry) -> dict[str, str]:
    return {
        "id": entry.id,
        "priority": str(entry.priority),
        "disabled": "1" if entry.disabled else "0",
        "expires": entry.expires.isoformat() if entry.expires else "",
        "limits": json.dumps(entry.limits, sort_keys=True),
        "models": json.dumps(list(entry.models)),
        "updated": str(int(time.time())),
    }


def entry_from_fields(digest: str, raw: dict[str, str]) -> KeyEntry:
    limits = json.loads(raw.get("limits") or "{}")
    expires = raw.get("expires") or ""
    return KeyEntry(
        id=raw["id"],
        sha256=digest,
        priority=int(raw.get("priority") or 0),
        disabled=raw.get("disabled") == "1",
        expires=datetime.fromisoformat(expires) if expires else None,
        limits={k: int(v) for k, v in limits.items() if k in LIMIT_NAMES},
        models=tuple(json.loads(raw.get("models") or "[]")),
    )


class RedisKeyStore:
    def __init__(
        self,
        client: aioredis.Redis,
        prefix: str,
        cache_seconds: float,
        stale_seconds: float,
        gate: RedisGate | None = None,
    ) -> None:
        self.client = client
        self.gate = gate or RedisGate()
        self.prefix = prefix
        self.cache_seconds = cache_seconds
        self.stale_seconds = stale_seconds
        self._cache: dict[str, tuple[KeyEntry | None, float]] = {}

    async def lookup(self, presented: str) -> KeyEntry | None:
        digest = hash_key(presented)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[1] < self.cache_seconds:
            return cached[0]
        try:
            raw = await self.gate.call(
                lambda: cast("Awaitable[dict[str, str]]", self.client.hgetall(f"{self.prefix}:key:{digest}"))
            )
        except REDIS_FAILURES as err:
            if cached is not None and cached[0] is not None and now - cached[1] < self.stale_seconds:
                return cached[0]
            raise StoreUnavailable(f"redis key lookup failed: {type(err).__name__}") from err
        try:
            entry = entry_from_fields(digest, raw) if raw else None
        except (KeyError, ValueError) as err:
            logger.error("ignoring a malformed key entry in redis: %s", type(err).__name__)  # noqa: TRY400
            entry = None
        if len(self._cache) >= CACHE_MAX_ENTRIES:
            self._cache.clear()
        self._cache[digest] = (entry, now)
        return entry


# --- administration (the `keys` CLI): synchronous, one command at a time ---------------------------


class RedisKeyAdmin:
    """Create, show, revoke and rotate keys. Each command that writes is one optimistic transaction
    (WATCH the ids hash and the entry it read, MULTI, EXEC; again when a watched key changed
    meanwhile), so two admins at once cannot both create one id, and a revoke or rotate
    never writes over a change it did not see (an old entry brought back, a new one left orphaned).
    """

    def __init__(self, client: redis.Redis, prefix: str = "llm-pod") -> None:
        self.client = client
        self.prefix = prefix

    @property
    def _ids(self) -> str:
        return f"{self.prefix}:ids"

    def _transaction(self, attempt: Callable[[Pipeline], T]) -> T:
        """Run `attempt` with the ids hash watched, then EXEC what it queued; again if a watched
        key changed in between (each attempt reads afresh), a bounded number of times."""
        for _ in range(TRANSACTION_ATTEMPTS):
            with self.client.pipeline(transaction=True) as pipe:
                try:
                    pipe.watch(self._ids)  # type: ignore[no-untyped-call]  # untyped in redis-py
                    value = attempt(pipe)
                    pipe.execute()
                except redis.WatchError:
                    continue
                return value
        raise KeyFileError("the key store kept changing during the command: run it again")

    def _read(self, pipe: Pipeline, key_id: str) -> KeyEntry:
        """The entry behind an id, read in watch mode: a change to either before EXEC aborts it."""
        digest = pipe.hget(self._ids, key_id)
        if not digest:
            raise KeyFileError(f"no key with id {key_id!r}")
        digest = str(digest)
        pipe.watch(f"{self.prefix}:key:{digest}")  # type: ignore[no-untyped-call]
        raw = cast("dict[str, str]", pipe.hgetall(f"{self.prefix}:key:{digest}"))
        if not raw:
            raise KeyFileError(f"key {key_id!r} has an id but no entry")
        return entry_from_fields(digest, raw)

    def _queue_put(self, pipe: Pipeline, entry: KeyEntry, old_digest: str | None = None) -> None:
        pipe.multi()
        pipe.hset(f"{self.prefix}:key:{entry.sha256}", mapping=dict(entry_to_fields(entry)))  # type: ignore[arg-type]
        pipe.hset(self._ids, entry.id, entry.sha256)
        if old_digest and old_digest != entry.sha256:
            pipe.delete(f"{self.prefix}:key:{old_digest}")

    def create(
        self,
        key_id: str,
        priority: int = 0,
        expires: datetime | None = None,
        limits: dict[str, int] | None = None,
        models: tuple[str, ...] = (),
    ) -> str:
        """Store a new key's hash and metadata; return the key, which is stored nowhere."""
        check_key_id(key_id)

        def attempt(pipe: Pipeline) -> str:
            if pipe.hexists(self._ids, key_id):
                raise KeyFileError(f"a key with id {key_id!r} exists: rotate or revoke it")
            key = new_key()
            entry = KeyEntry(key_id, hash_key(key), priority, False, expires, dict(limits or {}), models)
            self._queue_put(pipe, entry)
            return key

        return self._transaction(attempt)

    def show(self, key_id: str) -> KeyEntry:
        def attempt(pipe: Pipeline) -> KeyEntry:
            entry = self._read(pipe, key_id)
            pipe.multi()  # nothing to write: EXEC only confirms that nothing changed while reading
            return entry

        return self._transaction(attempt)

    def list(self) -> list[KeyEntry]:
        return [self.show(str(key_id)) for key_id in sorted(self.client.hkeys(self._ids))]

    def revoke(self, key_id: str) -> None:
        def attempt(pipe: Pipeline) -> None:
            self._queue_put(pipe, replace(self._read(pipe, key_id), disabled=True))

        self._transaction(attempt)

    def rotate(self, key_id: str) -> str:
        """A new key for the same id and metadata; the old key stops working at once."""

        def attempt(pipe: Pipeline) -> str:
            entry = self._read(pipe, key_id)
            key = new_key()
            self._queue_put(pipe, replace(entry, sha256=hash_key(key), disabled=False), entry.sha256)
            return key

        return self._transaction(attempt)


def describe(entry: KeyEntry) -> dict[str, Any]:
    """What the CLI shows about a key: metadata, never the key or its hash."""
    state = "disabled" if entry.disabled else ("expired" if entry.expired() else "active")
    out: dict[str, Any] = {"id": entry.id, "priority": entry.priority, "state": state}
    if entry.expires:
        out["expires"] = entry.expires.isoformat()
    if entry.limits:
        out["limits"] = entry.limits
    if entry.models:
        out["models"] = list(entry.models)
    return out
