"""Every auth decision as a client sees it: real nginx, the real sidecar, a real redis-server, and the
header-echoing TEST DOUBLE in the engine's place (tests/nginx/echo_engine.py; what reaches the
engine is all these tests look at, and the echo can hold a request open on demand)."""

from __future__ import annotations

import json
import math
import re
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import httpx
import jwt
import openai
import pytest
import redis

from sidecar.keys import add_key, revoke_key
from sidecar.redis_keys import RedisKeyAdmin
from tests.conftest import Pod, http_get, start_echo_pod, stop_pod
from tests.harness import RedisServer, wait_until

ISS, AUD = "https://issuer.test", "llm-pod"
SECRET = "another-shared-secret-of-32-bytes-or-more"


@dataclass
class AuthPod:
    pod: Pod
    redis: RedisServer
    keys: dict[str, str] = field(repr=False)  # name -> credential; kept out of failure reports

    def client(self, name: str | None) -> openai.OpenAI:
        key = self.keys[name] if name else "no-key"
        return openai.OpenAI(base_url=self.pod.base + "/v1", api_key=key, max_retries=0, timeout=10)

    def metrics(self) -> str:
        return http_get(f"http://127.0.0.1:{self.pod.ports.metrics}/metrics")[2].decode()

    def counter(self, name: str, **labels: str) -> float:
        """One sample of the sidecar's metrics; 0 when the series does not exist yet."""
        selector = ",".join(f'{k}="{v}"' for k, v in labels.items())
        match = re.search(rf"^{re.escape(name)}\{{{re.escape(selector)}\}} (\S+)$", self.metrics(), re.M)
        return float(match.group(1)) if match else 0.0


def token(**overrides: object) -> str:
    now = int(time.time())
    claims: dict[str, object] = {
        "sub": "svc-1",
        "iss": ISS,
        "aud": AUD,
        "iat": now,
        "exp": now + 600,
        "priority": 2,
    }
    claims.update(overrides)
    return jwt.encode(claims, SECRET, algorithm="HS256")


@pytest.fixture(scope="module")
def auth_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthPod]:
    tmp = tmp_path_factory.mktemp("auth-pod")
    server = RedisServer(tmp, persistent=True)
    keys_file = tmp / "keys.yaml"
    keys = {
        "expired": add_key(keys_file, "expired", expires=datetime.now(UTC) - timedelta(minutes=1)),
        "disabled": add_key(keys_file, "disabled"),
        "limited": add_key(keys_file, "limited", limits={"rpm": 3}),
        "single": add_key(keys_file, "single", limits={"concurrency": 1}),
        "elsewhere": add_key(keys_file, "elsewhere", models=("some-other-model",)),
    }
    revoke_key(keys_file, "disabled")
    with redis.Redis.from_url(server.url, decode_responses=True) as sync:
        keys["redis"] = RedisKeyAdmin(sync).create("redis-user", priority=4)
    keys["jwt"] = token()
    keys["jwt-expired"] = token(exp=int(time.time()) - 120)
    secret_file = tmp / "jwt-secret"
    secret_file.write_text(SECRET)
    env = {
        "LLM_POD_REDIS_URL": server.url,
        "LLM_POD_REDIS_CACHE_SECONDS": "0.5",
        "LLM_POD_REDIS_STALE_SECONDS": "3",
        "LLM_POD_JWT_ISSUER": ISS,
        "LLM_POD_JWT_AUDIENCE": AUD,
        "LLM_POD_JWT_ALGORITHMS": "HS256",
        "LLM_POD_JWT_SECRET_FILE": str(secret_file),
        "LLM_POD_JWT_LEEWAY": "5",
    }
    pod = start_echo_pod(tmp, env)
    keys["static"] = pod.key
    try:
        yield AuthPod(pod, server, keys)
    finally:
        stop_pod(pod)
        server.stop()


def chat(ap: AuthPod, name: str | None) -> int:
    with ap.client(name) as client:
        raw = client.chat.completions.with_raw_response.create(
            model=ap.pod.model, messages=[{"role": "user", "content": "hi"}]
        )
    return raw.status_code


def error_of(err: openai.APIStatusError) -> dict[str, object]:
    body = err.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


@pytest.mark.parametrize("name", ["static", "redis", "jwt"])
def test_each_key_source_is_let_through_with_its_key_id(auth_pod: AuthPod, name: str) -> None:
    resp = httpx.get(
        auth_pod.pod.base + "/v1/models", headers={"Authorization": f"Bearer {auth_pod.keys[name]}"}
    )
    assert resp.status_code == 200, resp.text
    seen = {k.lower(): v for k, v in resp.json()["headers"].items()}
    assert seen["x-llm-pod-key-id"] == {"static": "tester", "redis": "redis-user", "jwt": "jwt:svc-1"}[name]
    assert seen["x-llm-pod-priority"] == {"static": "5", "redis": "4", "jwt": "2"}[name]
    assert "authorization" not in seen


@pytest.mark.parametrize("name", [None, "expired", "jwt-expired"])
def test_missing_unknown_or_expired_credentials_are_401(auth_pod: AuthPod, name: str | None) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        chat(auth_pod, name)
    assert caught.value.status_code == 401
    error = error_of(caught.value)
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_api_key"


@pytest.mark.parametrize("name", ["disabled", "elsewhere"])
def test_disabled_keys_and_keys_for_other_models_are_403(auth_pod: AuthPod, name: str) -> None:
    with pytest.raises(openai.PermissionDeniedError) as caught:
        chat(auth_pod, name)
    assert caught.value.status_code == 403
    assert error_of(caught.value)["code"] == "permission_denied"


def test_requests_per_minute_are_429_with_retry_after_and_ratelimit_headers(auth_pod: AuthPod) -> None:
    if 60 - time.time() % 60 < 5:  # keep the burst inside one minute window
        wait_until(lambda: time.time() % 60 < 50, 10, 0.2, "the next minute")
    assert [chat(auth_pod, "limited") for _ in range(3)] == [200, 200, 200]
    before = time.time()
    with pytest.raises(openai.RateLimitError) as caught:
        chat(auth_pod, "limited")
    after = time.time()
    headers = caught.value.response.headers
    assert caught.value.status_code == 429
    assert error_of(caught.value)["code"] == "rate_limit_exceeded"
    # Retry-After is the time to the end of this minute's window, rounded up.
    assert math.ceil(60 - after % 60) <= int(headers["retry-after"]) <= math.ceil(60 - before % 60)
    assert headers["x-ratelimit-limit-requests"] == "3"
    assert headers["x-ratelimit-remaining-requests"] == "0"
    assert re.fullmatch(r"\d+s", headers["x-ratelimit-reset-requests"])
    assert 'llm_pod_rate_limited_total{key_id="limited",limit="rpm"} 1.0' in auth_pod.metrics()


def test_concurrency_is_held_until_nginx_reports_the_request_ended(auth_pod: AuthPod) -> None:
    url = auth_pod.pod.base + "/v1/models"
    # The same client-chosen request id on every call: leases must not collide on it.
    auth = {"Authorization": f"Bearer {auth_pod.keys['single']}", "X-Request-Id": str(uuid.uuid4())}
    held: dict[str, int] = {}
    slow = threading.Thread(
        target=lambda: held.update(status=httpx.get(url + "?sleep=1.5", headers=auth).status_code)
    )
    admitted = auth_pod.counter("llm_pod_key_requests_total", key_id="single")
    slow.start()
    try:
        # Only once the slow request holds the key's one slot may another try: a probe sent earlier
        # could take the slot itself and leave the slow request refused.
        wait_until(
            lambda: auth_pod.counter("llm_pod_key_requests_total", key_id="single") > admitted,
            5,
            0.02,
            "the slow request to be let through",
        )
        resp = httpx.get(url, headers=auth)
        assert resp.status_code == 429
        assert resp.headers["x-ratelimit-limit-concurrency"] == "1"
    finally:
        slow.join()
    assert held["status"] == 200
    # nginx's end-of-request line (syslog over UDP) gives the slot back, long before the lease expires.
    wait_until(lambda: httpx.get(url, headers=auth).status_code == 200, 2, 0.05, "the slot to come back")
    # ... and that last request's lease leaves Redis too once it has ended: no lease outlives its request.
    with redis.Redis.from_url(auth_pod.redis.url) as client:
        wait_until(lambda: client.zcard("llm-pod:leases:single") == 0, 2, 0.02, "the last lease to go")


def test_redis_outage_fails_closed_and_heals(auth_pod: AuthPod) -> None:
    assert chat(auth_pod, "redis") == 200  # cached now
    auth_pod.redis.kill()
    try:
        # Static keys and JWTs do not need Redis.
        assert chat(auth_pod, "static") == 200
        assert chat(auth_pod, "jwt") == 200
        # A cached Redis key keeps working until the stale bound (3 s here) ...
        assert chat(auth_pod, "redis") == 200
        # ... a Redis key never seen is refused (503 auth_unavailable), never let through ...
        with pytest.raises(openai.InternalServerError) as caught:
            chat_with(auth_pod, "sk-lp-" + "x" * 43)
        assert caught.value.status_code == 503
        assert error_of(caught.value)["code"] == "auth_unavailable"
        # ... and once the stale bound passes, the cached one is refused too.
        wait_until(lambda: status_of(auth_pod, "redis") == 503, 6, 0.2, "the cached Redis key to expire")
        # Limits fall back to this replica, say so, and still hold: 3 a minute, never unlimited.
        if 60 - time.time() % 60 < 5:  # keep the burst inside one minute window
            wait_until(lambda: time.time() % 60 < 50, 10, 0.2, "the next minute")
        assert [status_of(auth_pod, "limited") for _ in range(5)] == [200, 200, 200, 429, 429]
        assert "llm_pod_rate_limit_fallback 1.0" in auth_pod.metrics()
        assert "enforcing limits per replica" in auth_pod.pod.procs["sidecar"].output()
    finally:
        auth_pod.redis.start()
    # Redis back: normal service, nothing restarted.
    wait_until(lambda: status_of(auth_pod, "redis") == 200, 5, 0.1, "the Redis key to work again")

    # Limited requests are counted in Redis again and the fallback ends, within a few seconds (a Redis
    # that has just restarted may still be loading its data, or the 1 s pause may still run).
    seen: list[tuple[int, bool]] = []

    def shared_again() -> bool:
        status = status_of(auth_pod, "single")
        seen.append((status, "llm_pod_rate_limit_fallback 0.0" in auth_pod.metrics()))
        return seen[-1] == (200, True)

    try:
        wait_until(shared_again, 5, 0.2, "limits to be shared through Redis again")
    except AssertionError as err:
        with redis.Redis.from_url(auth_pod.redis.url, decode_responses=True) as client:
            leases = client.zrange("llm-pod:leases:single", 0, -1, withscores=True)
        log = auth_pod.pod.procs["sidecar"].output()[-3000:]
        raise AssertionError(f"{err}; (status, shared) seen: {seen[-10:]}; leases: {leases}\n{log}") from None


def chat_with(ap: AuthPod, key: str) -> int:
    with openai.OpenAI(base_url=ap.pod.base + "/v1", api_key=key, max_retries=0, timeout=10) as client:
        return client.chat.completions.with_raw_response.create(
            model=ap.pod.model, messages=[{"role": "user", "content": "hi"}]
        ).status_code


def status_of(ap: AuthPod, name: str) -> int:
    resp = httpx.get(ap.pod.base + "/v1/models", headers={"Authorization": f"Bearer {ap.keys[name]}"})
    return resp.status_code


def test_no_log_line_holds_a_key_or_a_token(auth_pod: AuthPod) -> None:
    logs = auth_pod.pod.logs() + "".join(
        p.read_text() for p in auth_pod.pod.procs["sidecar"].log_path.parent.glob("redis-*.log")
    )
    assert "key_id" in logs  # the logs were captured at all
    for name, credential in auth_pod.keys.items():
        assert credential not in logs, f"the {name} credential reached a log"
        assert credential[:24] not in logs, f"part of the {name} credential reached a log"
    assert not re.search(r"eyJ[A-Za-z0-9_-]{10,}\.", logs)
    assert json.dumps(SECRET)[1:-1] not in logs
