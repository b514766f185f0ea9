"""Per-key limits: requests per minute and requests in flight, shared through Redis when it is there.

With Redis, one request costs one round trip: a Lua script that counts the minute (a fixed window,
`INCR` + `EXPIRE`) and takes a concurrency lease (a sorted set of request ids scored by lease
expiry) atomically. Why not the `limits` library: its Redis strategies answer allowed/refused and
need a second round trip for the remaining count and reset time that the `x-ratelimit-*` headers
carry, and it has no leases for concurrency.

A lease ends when nginx reports the end of the request (see `sidecar.request_end`); the lease
expiry (`LLM_POD_LEASE_SECONDS`) is the backstop when that report is lost.

When Redis fails, the same limits are enforced per replica in memory (so N replicas admit up to N
times the limit), `llm_pod_rate_limit_fallback` is 1 and one warning is logged; when Redis answers
again, it is used again.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import redis.asyncio as aioredis

from sidecar.keys import KeyEntry
from sidecar.metrics import Metrics
from sidecar.redis_conn import REDIS_FAILURES, RedisGate

logger = logging.getLogger(__name__)

WINDOW = 60  # seconds: the limit is per minute

# KEYS: the minute's counter, the key's lease set. ARGV: rpm limit, the counter's ttl, concurrency
# limit, now, lease expiry, request id, lease-set ttl. Returns {allowed, count, active}: allowed is 1,
# or 0 (over rpm), or 2 (over concurrency). The counter's key names its window, so its TTL is only
# cleanup: the reset the headers carry is the window's end, computed by the caller from the same `now`.
ADMIT_SCRIPT = """
local count, active = 0, 0
local rpm, conc = tonumber(ARGV[1]), tonumber(ARGV[3])
if rpm > 0 then
  count = redis.call('INCR', KEYS[1])
  if count == 1 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
  if count > rpm then return {0, count, 0} end
end
if conc > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[4])
  active = redis.call('ZCARD', KEYS[2])
  if active >= conc then
    if rpm > 0 then redis.call('DECR', KEYS[1]) end
    return {2, count, active}
  end
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[6])
  redis.call('EXPIRE', KEYS[2], ARGV[7])
end
return {1, count, active}
"""


def window_reset(now: float) -> int:
    """Whole seconds from `now` until its fixed one-minute window ends (1-60)."""
    return max(1, math.ceil((int(now // WINDOW) + 1) * WINDOW - now))


@dataclass(frozen=True, slots=True)
class Verdict:
    allowed: bool
    limit: str = ""  # "rpm" or "concurrency" when refused
    headers: dict[str, str] | None = None

    @property
    def retry_after(self) -> str:
        return (self.headers or {}).get("Retry-After", "1")


class MemoryLimits:
    """The per-replica fallback (and the only store when no Redis is configured)."""

    def __init__(self) -> None:
        self._minutes: dict[tuple[str, int], int] = defaultdict(int)
        self._leases: dict[str, dict[str, float]] = defaultdict(dict)

    def admit(self, key_id: str, rpm: int, conc: int, request_id: str, now: float, lease: float) -> list[int]:
        window = int(now // WINDOW)
        count, active = 0, 0
        if rpm > 0:
            self._minutes = defaultdict(int, {k: v for k, v in self._minutes.items() if k[1] >= window})
            self._minutes[(key_id, window)] += 1
            count = self._minutes[(key_id, window)]
            if count > rpm:
                return [0, count, 0]
        if conc > 0:
            leases = self._leases[key_id]
            for rid in [r for r, expiry in leases.items() if expiry <= now]:
                del leases[rid]
            active = len(leases)
            if active >= conc:
                if rpm > 0:
                    self._minutes[(key_id, window)] -= 1
                return [2, count, active]
            leases[request_id] = now + lease
        return [1, count, active]

    def release(self, key_id: str, request_id: str) -> None:
        self._leases.get(key_id, {}).pop(request_id, None)


class Limiter:
    def __init__(
        self,
        metrics: Metrics,
        client: aioredis.Redis | None,
        prefix: str,
        lease_seconds: float,
        default_rpm: int = 0,
        default_concurrency: int = 0,
        gate: RedisGate | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.metrics = metrics
        self.clock = clock  # wall-clock time: replicas must agree on which minute it is
        self.client = client
        self.gate = gate or RedisGate()
        self.prefix = prefix
        self.lease_seconds = lease_seconds
        self.default_rpm = default_rpm
        self.default_concurrency = default_concurrency
        self.memory = MemoryLimits()
        self._script = client.register_script(ADMIT_SCRIPT) if client is not None else None
        self._fallback = False
        self._redis_leases: dict[str, str] = {}  # request id -> key id, for leases held in Redis
        metrics.rate_limit_fallback.set(0)

    def limits_for(self, entry: KeyEntry) -> tuple[int, int]:
        """The key's limits; 0 or absent means the default (which may itself be 0: none)."""
        return (
            entry.limits.get("rpm") or self.default_rpm,
            entry.limits.get("concurrency") or self.default_concurrency,
        )

    def _set_fallback(self, on: bool, why: str = "") -> None:
        if on != self._fallback:
            self._fallback = on
            self.metrics.rate_limit_fallback.set(1 if on else 0)
            if on:
                logger.warning("redis unavailable (%s): enforcing limits per replica until it answers", why)
            else:
                logger.info("redis answers again: limits are shared across replicas again")

    async def admit(self, entry: KeyEntry, request_id: str) -> Verdict:
        rpm, conc = self.limits_for(entry)
        if rpm <= 0 and conc <= 0:
            return Verdict(True)
        now = self.clock()
        reset = window_reset(now)
        result: list[int] | None = None
        if self._script is not None:
            keys = [f"{self.prefix}:rpm:{entry.id}:{int(now // WINDOW)}", f"{self.prefix}:leases:{entry.id}"]
            args: list[str | int | float] = [
                rpm,
                reset + WINDOW,  # cleanup only: kept a window past its end, for replicas' clock skew
                conc,
                now,
                now + self.lease_seconds,
                request_id,
                int(self.lease_seconds) + 60,
            ]
            script = self._script
            try:
                result = [int(x) for x in await self.gate.call(lambda: script(keys=keys, args=args))]
                self._set_fallback(False)
                if conc > 0 and result[0] == 1:
                    if len(self._redis_leases) > 100_000:  # reports lost en masse: Redis expires the leases
                        self._redis_leases.clear()
                    self._redis_leases[request_id] = entry.id
            except REDIS_FAILURES as err:
                self._set_fallback(True, type(err).__name__)
        if result is None:
            result = self.memory.admit(entry.id, rpm, conc, request_id, now, self.lease_seconds)
        allowed, count, _active = result
        if allowed == 1:
            return Verdict(True)
        if allowed == 0:
            headers = {
                "Retry-After": str(reset),
                "x-ratelimit-limit-requests": str(rpm),
                "x-ratelimit-remaining-requests": str(max(0, rpm - count)),
                "x-ratelimit-reset-requests": f"{reset}s",
            }
            return Verdict(False, "rpm", headers)
        return Verdict(False, "concurrency", {"Retry-After": "1", "x-ratelimit-limit-concurrency": str(conc)})

    async def release(self, key_id: str, request_id: str) -> None:
        """The request ended: give its concurrency lease back (wherever it was taken)."""
        self.memory.release(key_id, request_id)
        held = self._redis_leases.pop(request_id, None)
        if held is None or self.client is None:
            return
        client = self.client
        with contextlib.suppress(*REDIS_FAILURES):  # else it expires on its own
            await self.gate.call(lambda: client.zrem(f"{self.prefix}:leases:{held}", request_id))
