"""Two sidecar processes sharing one real redis-server agree: a revocation reaches both within the
stated bound, and a per-minute limit holds across both."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Iterator

import pytest
import redis

from sidecar.redis_keys import RedisKeyAdmin
from sidecar.settings import Settings
from tests.conftest import http_get
from tests.harness import Proc, RedisServer, free_port, python, wait_until

REVOCATION_BOUND = 5.0  # seconds: what docs/auth.md promises with the default settings


def auth_status(port: int, key: str) -> int:
    req = urllib.request.Request(f"http://127.0.0.1:{port}/auth", headers={"Authorization": f"Bearer {key}"})
    try:
        with urllib.request.urlopen(req, timeout=2) as resp:  # noqa: S310 - loopback
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


@pytest.fixture(scope="module")
def replicas(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RedisServer, list[int]]]:
    tmp = tmp_path_factory.mktemp("replicas")
    server = RedisServer(tmp)
    ports = [free_port(), free_port()]
    procs = []
    for i, port in enumerate(ports):
        env = {
            "LLM_POD_SERVED_MODEL": "m",
            "LLM_POD_SIDECAR_PORT": str(port),
            "LLM_POD_ENGINE_PORT": str(free_port()),
            "LLM_POD_REQUEST_END_PORT": str(free_port()),
            "LLM_POD_REDIS_URL": server.url,  # every auth setting at its default, as a user runs it
            "LLM_POD_DRAIN_SECONDS": "0",  # stop at once: no traffic to drain here
        }
        procs.append(Proc(f"sidecar-{i}", [python(), "-m", "sidecar"], env, tmp))
    try:
        for port in ports:
            wait_until(
                lambda p=port: http_get(f"http://127.0.0.1:{p}/healthz")[0] == 200, 20, 0.05, "a sidecar"
            )
        yield server, ports
    finally:
        for proc in procs:
            proc.stop()
        server.stop()


@pytest.fixture
def admin(replicas: tuple[RedisServer, list[int]]) -> Iterator[RedisKeyAdmin]:
    with redis.Redis.from_url(replicas[0].url, decode_responses=True) as client:
        yield RedisKeyAdmin(client)


def test_the_default_cache_is_within_the_stated_bound() -> None:
    assert Settings.__dataclass_fields__["redis_cache_seconds"].default <= REVOCATION_BOUND


def test_a_revocation_reaches_every_replica_within_the_bound(
    replicas: tuple[RedisServer, list[int]], admin: RedisKeyAdmin
) -> None:
    _, ports = replicas
    key = admin.create("to-revoke")
    for port in ports:
        assert auth_status(port, key) == 204
    revoked_at = time.monotonic()
    admin.revoke("to-revoke")
    landed = {}
    deadline = revoked_at + REVOCATION_BOUND + 2
    while len(landed) < len(ports) and time.monotonic() < deadline:
        for port in ports:
            if port not in landed and auth_status(port, key) == 403:
                landed[port] = time.monotonic() - revoked_at
        time.sleep(0.05)
    assert len(landed) == len(ports), f"revocation not seen by every replica: {landed}"
    print(f"revocation landed after {max(landed.values()):.2f} s")
    assert max(landed.values()) <= REVOCATION_BOUND


def test_a_per_minute_limit_holds_across_two_replicas(
    replicas: tuple[RedisServer, list[int]], admin: RedisKeyAdmin
) -> None:
    _, ports = replicas
    key = admin.create("shared-limit", limits={"rpm": 10})
    if 60 - time.time() % 60 < 8:  # keep the burst inside one minute window
        wait_until(lambda: time.time() % 60 < 50, 10, 0.2, "the next minute")
    statuses = [auth_status(ports[i % 2], key) for i in range(30)]
    allowed = statuses.count(204)
    assert 10 <= allowed <= 11, statuses
    assert set(statuses) == {204, 403}  # refused as 429s (carried in a 403 to nginx)
