"""The Redis connection that the key store and the limits share, and when not to use it.

Short timeouts, and no retry after a timeout (one after a dead pooled connection): one call waits
for Redis at most `LLM_POD_REDIS_TIMEOUT`. After a call fails, no call tries Redis for
`PAUSE_SECONDS`: while Redis hangs or its packets are dropped (rather than its connections refused),
every decision would otherwise wait out that timeout, twice (the key lookup, the limits). Meanwhile
callers do what they do when Redis fails (cached keys, per-replica limits; never open), and the
first call after the pause finds out whether it is back.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from sidecar.settings import Settings

T = TypeVar("T")

PAUSE_SECONDS = 1.0
# What a failed Redis call raises: redis-py's own errors, and the socket's when it gets that far.
REDIS_FAILURES = (redis.RedisError, OSError, TimeoutError)


class RedisPaused(redis.ConnectionError):
    """Not tried: a Redis call failed less than the pause ago."""


class RedisGate:
    def __init__(self, pause: float = PAUSE_SECONDS) -> None:
        self.pause = pause
        self._closed_until = 0.0

    async def call(self, make_call: Callable[[], Awaitable[T]]) -> T:
        """Run one Redis call, or raise RedisPaused without trying; a failure starts a pause."""
        if time.monotonic() < self._closed_until:
            raise RedisPaused(f"redis failed less than {self.pause:g} s ago")
        try:
            return await make_call()
        except REDIS_FAILURES:
            self._closed_until = time.monotonic() + self.pause
            raise


def redis_client(settings: Settings) -> aioredis.Redis:
    # Short timeouts: an auth decision waits for Redis at most `redis_timeout` per call, then falls
    # back (cache, per-replica limits) or refuses. One immediate retry on a connection error only:
    # after Redis restarts, each pooled connection fails once on its dead socket, and that must not
    # look like an outage; a timeout (a hung Redis) is never retried.
    return aioredis.from_url(
        settings.redis_url,
        decode_responses=True,
        socket_timeout=settings.redis_timeout,
        socket_connect_timeout=settings.redis_timeout,
        retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
        health_check_interval=0,
    )
