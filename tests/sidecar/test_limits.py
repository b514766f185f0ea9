"""Per-key limits and the Redis key store against a real redis-server: counting, leases, caching,
revocation, and what happens while Redis is down."""

from __future__ import annotations

import asyncio
import logging
import math
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import redis
import redis.asyncio as aioredis

from sidecar import redis_keys
from sidecar.keys import KeyEntry, KeyFileError, hash_key
from sidecar.limits import Limiter, MemoryLimits
from sidecar.metrics import Metrics
from sidecar.redis_conn import RedisGate, redis_client
from sidecar.redis_keys import RedisKeyAdmin, RedisKeyStore, StoreUnavailable
from sidecar.settings import Settings
from tests.harness import ROOT, RedisServer, free_port


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    yield server
    server.stop()


@pytest.fixture
def sync_redis(redis_server: RedisServer) -> Iterator[Callable[[], redis.Redis]]:
    """Synchronous clients (as the keys CLI uses), each closed after the test."""
    made: list[redis.Redis] = []

    def make() -> redis.Redis:
        made.append(redis.Redis.from_url(redis_server.url, decode_responses=True))
        return made[-1]

    yield make
    for each in made:
        each.close()


@pytest.fixture
async def client(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    settings = Settings(served_model="m", redis_url=redis_server.url, request_end_port=free_port())
    c = redis_client(settings)
    yield c
    await c.aclose()


def entry(key_id: str = "k", **limits: int) -> KeyEntry:
    return KeyEntry(key_id, hash_key(key_id), limits=limits)


def test_memory_limits_count_a_minute_and_hold_leases() -> None:
    mem = MemoryLimits()
    now = 120.0  # the start of a minute
    assert [mem.admit("k", 3, 0, f"r{i}", now, 60)[0] for i in range(5)] == [1, 1, 1, 0, 0]
    assert mem.admit("k", 3, 0, "r", now + 60, 60)[0] == 1  # the next minute starts afresh
    assert [mem.admit("c", 0, 2, f"r{i}", now, 60)[0] for i in range(3)] == [1, 1, 2]
    mem.release("c", "r0")
    assert mem.admit("c", 0, 2, "r9", now, 60)[0] == 1
    assert mem.admit("c", 0, 2, "rA", now + 61, 60)[0] == 1  # expired leases are the backstop


def until_window_end(now: float) -> int:
    return math.ceil((now // 60 + 1) * 60 - now)


async def test_rpm_through_redis_with_ratelimit_headers(client: aioredis.Redis) -> None:
    limiter = Limiter(Metrics(), client, "t", lease_seconds=60)
    verdicts = [await limiter.admit(entry(rpm=5), f"r{i}") for i in range(7)]
    before = time.time()
    verdicts.append(await limiter.admit(entry(rpm=5), "r7"))
    after = time.time()
    assert [v.allowed for v in verdicts] == [True] * 5 + [False] * 3
    refused = verdicts[-1]
    assert refused.limit == "rpm"
    assert refused.headers is not None
    assert refused.headers["x-ratelimit-limit-requests"] == "5"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    # The time until the fixed window ends (not a TTL set at the window's first hit), within 1 s.
    retry = int(refused.headers["Retry-After"])
    assert until_window_end(after) - 1 <= retry <= until_window_end(before) + 1, (retry, before % 60)
    assert refused.headers["x-ratelimit-reset-requests"] == f"{retry}s"


class Clock:
    """An injected wall clock: the test says which second of which minute it is."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize("store", ["redis", "memory"])
async def test_the_reset_is_the_end_of_the_window_not_a_minute_after_its_first_request(
    client: aioredis.Redis, store: str
) -> None:
    clock = Clock(600 * 60 + 5.2)  # 5.2 s into a minute: the window's first request
    limiter = Limiter(
        Metrics(), client if store == "redis" else None, f"t-{time.time_ns()}", lease_seconds=60, clock=clock
    )
    assert (await limiter.admit(entry(rpm=2), "a")).allowed
    clock.now += 40  # 45.2 s into the minute
    assert (await limiter.admit(entry(rpm=2), "b")).allowed
    refused = await limiter.admit(entry(rpm=2), "c")
    assert not refused.allowed
    assert refused.headers is not None
    assert refused.headers["Retry-After"] == "15"  # 60 - 45.2, rounded up; a TTL would say 20 (or 60)
    assert refused.headers["x-ratelimit-reset-requests"] == "15s"
    clock.now += 15  # the next minute: a fresh count
    assert (await limiter.admit(entry(rpm=2), "d")).allowed


@pytest.mark.parametrize("store", ["redis", "memory"])
async def test_a_limit_of_zero_means_the_default(client: aioredis.Redis, store: str) -> None:
    def limiter(**defaults: int) -> Limiter:
        return Limiter(
            Metrics(),
            client if store == "redis" else None,
            f"t-{time.time_ns()}",
            lease_seconds=60,
            clock=Clock(600 * 60 + 1.0),
            **defaults,
        )

    by_rpm = limiter(default_rpm=2)
    assert [(await by_rpm.admit(entry("r", rpm=0), f"r{i}")).allowed for i in range(3)] == [True, True, False]
    # An explicit limit still wins over the default.
    explicit = [(await by_rpm.admit(entry("x", rpm=3), f"x{i}")).allowed for i in range(4)]
    assert explicit == [True, True, True, False]
    by_conc = limiter(default_concurrency=1)
    first = await by_conc.admit(entry("c", concurrency=0), "c0")
    second = await by_conc.admit(entry("c", concurrency=0), "c1")
    assert (first.allowed, second.allowed, second.limit) == (True, False, "concurrency")


async def test_concurrency_leases_through_redis_and_their_release(client: aioredis.Redis) -> None:
    limiter = Limiter(Metrics(), client, "t", lease_seconds=60)
    e = entry("c", concurrency=2)
    assert (await limiter.admit(e, "a")).allowed
    assert (await limiter.admit(e, "b")).allowed
    third = await limiter.admit(e, "c")
    assert not third.allowed
    assert third.limit == "concurrency"
    await limiter.release("c", "a")
    assert (await limiter.admit(e, "d")).allowed
    # Another replica (another Limiter on the same Redis) sees the same leases.
    other = Limiter(Metrics(), client, "t", lease_seconds=60)
    assert not (await other.admit(e, "e")).allowed


async def test_redis_down_falls_back_per_replica_and_recovers(
    client: aioredis.Redis, redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    metrics = Metrics()
    # No pause after a failure here (the pause has a test of its own): Redis is used the moment it is back.
    limiter = Limiter(metrics, client, "t", lease_seconds=60, gate=RedisGate(pause=0))
    assert (await limiter.admit(entry(rpm=2), "r0")).allowed
    redis_server.kill()
    # Still limited (per replica now), never let through unlimited.
    results = [(await limiter.admit(entry(rpm=2), f"r{i}")).allowed for i in range(1, 5)]
    assert results == [True, True, False, False]
    assert metrics.rate_limit_fallback._value.get() == 1
    assert any("enforcing limits per replica" in r.getMessage() for r in caplog.records)
    redis_server.start()  # empty: this test's Redis keeps nothing across a restart
    results = [(await limiter.admit(entry(rpm=2), f"r{i}")).allowed for i in range(5, 8)]
    assert results == [True, True, False]  # counted in Redis again, from its fresh count
    assert metrics.rate_limit_fallback._value.get() == 0
    assert any("shared across replicas again" in r.getMessage() for r in caplog.records)


async def test_redis_key_store_caches_revokes_and_survives_an_outage(
    client: aioredis.Redis, redis_server: RedisServer, sync_redis: Callable[[], redis.Redis]
) -> None:
    admin = RedisKeyAdmin(sync_redis(), "t")
    key = admin.create("alice", priority=4, limits={"rpm": 10})
    other = admin.create("bob")
    store = RedisKeyStore(client, "t", cache_seconds=0.3, stale_seconds=1.5, gate=RedisGate(pause=0))
    found = await store.lookup(key)
    assert found is not None
    assert (found.id, found.priority, found.limits) == ("alice", 4, {"rpm": 10})
    assert await store.lookup("sk-lp-unknown") is None

    admin.revoke("alice")
    still = await store.lookup(key)
    assert still is not None
    assert not still.disabled  # from the cache, within its 0.3 s
    await asyncio.sleep(0.35)
    revoked = await store.lookup(key)
    assert revoked is not None
    assert revoked.disabled

    assert await store.lookup(other) is not None
    redis_server.kill()
    await asyncio.sleep(0.35)  # past the cache, within the stale bound: served from the cache
    cached = await store.lookup(other)
    assert cached is not None
    assert cached.id == "bob"
    with pytest.raises(StoreUnavailable):
        await store.lookup("sk-lp-never-seen")  # nothing cached: refused, never allowed
    await asyncio.sleep(1.2)  # past the stale bound
    with pytest.raises(StoreUnavailable):
        await store.lookup(other)
    redis_server.start()
    admin2 = RedisKeyAdmin(sync_redis(), "t")
    new = admin2.create("bob")  # the restarted Redis kept nothing (no persistence in this test)
    assert (await store.lookup(new)) is not None


async def test_a_key_revoked_just_before_an_outage_works_until_the_stale_bound(
    client: aioredis.Redis, redis_server: RedisServer, sync_redis: Callable[[], redis.Redis]
) -> None:
    """The honest revocation bound while Redis is down (docs/auth.md, Redis outage)."""
    admin = RedisKeyAdmin(sync_redis(), "t")
    key = admin.create("hank")
    store = RedisKeyStore(client, "t", cache_seconds=0.2, stale_seconds=1.0, gate=RedisGate(pause=0))
    looked_up = time.monotonic()  # before the lookup, as the cache stamps its entries
    found = await store.lookup(key)
    assert found is not None
    assert not found.disabled
    admin.revoke("hank")
    redis_server.kill()  # before this replica's next lookup: it never sees the revocation
    seen: list[tuple[float, bool]] = []  # (seconds since the last good lookup, disabled)
    refused_at = None
    while refused_at is None and time.monotonic() - looked_up < 5:
        try:
            entry = await store.lookup(key)
            assert entry is not None
            seen.append((time.monotonic() - looked_up, entry.disabled))
        except StoreUnavailable:
            refused_at = time.monotonic() - looked_up
        await asyncio.sleep(0.02)
    assert refused_at is not None, seen
    # Past the 0.2 s cache the revoked key still works, as the cache last saw it ...
    assert any(elapsed > 0.3 and not disabled for elapsed, disabled in seen), seen
    # ... until the stale bound, then the lookup fails closed.
    assert 1.0 <= refused_at < 1.5, refused_at


async def test_a_hung_redis_costs_one_timeout_per_pause_not_one_per_decision(
    client: aioredis.Redis, redis_server: RedisServer, sync_redis: Callable[[], redis.Redis]
) -> None:
    key = RedisKeyAdmin(sync_redis(), "t").create("dora", limits={"rpm": 3})
    gate = RedisGate(pause=1.0)
    metrics = Metrics()
    store = RedisKeyStore(client, "t", cache_seconds=0, stale_seconds=30, gate=gate)  # always asks Redis
    limiter = Limiter(metrics, client, "t", lease_seconds=60, gate=gate)
    assert await store.lookup(key) is not None
    if 60 - time.time() % 60 < 5:  # keep the decisions inside one minute window
        await asyncio.sleep(60 - time.time() % 60)
    assert redis_server.proc is not None
    redis_server.proc.signal(signal.SIGSTOP)  # hung: connections are accepted, nothing answers
    try:
        started = time.monotonic()
        allowed = []
        for i in range(20):
            found = await store.lookup(key)  # from the cache, once Redis has not answered
            assert found is not None
            allowed.append((await limiter.admit(found, f"r{i}")).allowed)
        elapsed = time.monotonic() - started
    finally:
        redis_server.proc.signal(signal.SIGCONT)
    # Waiting out the 0.25 s timeout on each call would take 20 x 2 x 0.25 = 10 s.
    assert elapsed < 2.0, elapsed
    assert allowed == [True] * 3 + [False] * 17  # limited per replica meanwhile, never open
    assert metrics.rate_limit_fallback._value.get() == 1
    # Redis answers again: the first call after the pause finds out, and limits are shared again.
    deadline = time.monotonic() + 10
    while metrics.rate_limit_fallback._value.get() == 1 and time.monotonic() < deadline:
        await limiter.admit(entry("probe", rpm=1000), f"p{time.monotonic_ns()}")
        await asyncio.sleep(0.1)
    assert metrics.rate_limit_fallback._value.get() == 0


def keys_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sidecar", "keys", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


def test_keys_cli_on_redis_prints_a_key_once(
    redis_server: RedisServer, sync_redis: Callable[[], redis.Redis]
) -> None:
    url = redis_server.url
    made = keys_cli("create", "--redis", url, "--id", "carol", "--priority", "2", "--rpm", "30")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith("sk-lp-")
    listed = keys_cli("list", "--redis", url)
    assert '"id": "carol"' in listed.stdout
    assert key not in listed.stdout
    assert hash_key(key) not in listed.stdout
    shown = keys_cli("show", "--redis", url, "--id", "carol")
    assert '"rpm": 30' in shown.stdout
    assert keys_cli("create", "--redis", url, "--id", "carol").returncode == 2  # ids are unique
    rotated = keys_cli("rotate", "--redis", url, "--id", "carol").stdout.strip()
    assert rotated.startswith("sk-lp-")
    assert rotated != key
    raw = sync_redis()
    assert not raw.exists(f"llm-pod:key:{hash_key(key)}")  # the old key is gone
    assert raw.hget(f"llm-pod:key:{hash_key(rotated)}", "priority") == "2"  # metadata kept
    assert keys_cli("revoke", "--redis", url, "--id", "carol").returncode == 0
    assert '"state": "disabled"' in keys_cli("show", "--redis", url, "--id", "carol").stdout


# --- the keys CLI's writes against concurrent admins ---------------------------------------------
# Each race is made deterministic by running the other admin's command (on its own connection) at
# the point where the first one has read and not yet written: inside `new_key` or the entry parse.


def entries_in_redis(raw: redis.Redis, prefix: str = "t") -> set[str]:
    return {str(k).rsplit(":", 1)[1] for k in raw.scan_iter(f"{prefix}:key:*")}


def once(action: Callable[[], object]) -> Callable[[], None]:
    done: list[bool] = []

    def run() -> None:
        if not done:
            done.append(True)
            action()

    return run


def test_two_creates_of_one_id_cannot_both_succeed(
    sync_redis: Callable[[], redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    admin, other = RedisKeyAdmin(sync_redis(), "t"), RedisKeyAdmin(sync_redis(), "t")
    theirs: list[str] = []
    race = once(lambda: theirs.append(other.create("erin", priority=1)))
    real_new_key = redis_keys.new_key

    def new_key_while_another_admin_creates() -> str:
        race()  # after this admin checked that "erin" is free, before it writes
        return real_new_key()

    monkeypatch.setattr(redis_keys, "new_key", new_key_while_another_admin_creates)
    with pytest.raises(KeyFileError, match="exists"):
        admin.create("erin", priority=9)
    raw = sync_redis()
    assert raw.hget("t:ids", "erin") == hash_key(theirs[0])  # the first create's key is the one kept
    assert entries_in_redis(raw) == {hash_key(theirs[0])}
    assert admin.show("erin").priority == 1


def test_two_rotations_at_once_leave_one_key_that_the_ids_know(
    sync_redis: Callable[[], redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    admin, other = RedisKeyAdmin(sync_redis(), "t"), RedisKeyAdmin(sync_redis(), "t")
    admin.create("fred")
    race = once(lambda: other.rotate("fred"))
    real_new_key = redis_keys.new_key

    def new_key_while_another_admin_rotates() -> str:
        race()
        return real_new_key()

    monkeypatch.setattr(redis_keys, "new_key", new_key_while_another_admin_rotates)
    last = admin.rotate("fred")
    raw = sync_redis()
    # Without the transaction the other rotation's key stayed in Redis, working, known to no id:
    # no command could revoke it.
    assert entries_in_redis(raw) == {hash_key(last)}
    assert raw.hget("t:ids", "fred") == hash_key(last)


def test_a_revoke_during_a_rotation_disables_the_new_key(
    sync_redis: Callable[[], redis.Redis], monkeypatch: pytest.MonkeyPatch
) -> None:
    admin, other = RedisKeyAdmin(sync_redis(), "t"), RedisKeyAdmin(sync_redis(), "t")
    admin.create("gina")
    rotated: list[str] = []
    race = once(lambda: rotated.append(other.rotate("gina")))
    real_parse = redis_keys.entry_from_fields

    def parse_while_another_admin_rotates(digest: str, fields: dict[str, str]) -> KeyEntry:
        race()  # the revoke has read the old entry and not yet written
        return real_parse(digest, fields)

    monkeypatch.setattr(redis_keys, "entry_from_fields", parse_while_another_admin_rotates)
    admin.revoke("gina")
    raw = sync_redis()
    # Without the transaction the revoke wrote the old entry back, pointed the id at it, and left
    # the rotated key working and known to no id.
    assert raw.hget("t:ids", "gina") == hash_key(rotated[0])
    assert entries_in_redis(raw) == {hash_key(rotated[0])}
    assert admin.show("gina").disabled
