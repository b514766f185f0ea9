"""What the auth decision costs a call, per credential source, measured through nginx.

    .venv/bin/python -m tests.auth.latency [--samples N]

Starts a redis-server, and nginx + the real sidecar with the header-echoing TEST DOUBLE as the
engine (tests/nginx/echo_engine.py: a real engine's own time would only add noise to a difference
of a millisecond), twice: one pod with a static keys file, a Redis key store and HS256 JWTs, one
with RS256 JWTs from a JWKS on loopback (one JWT family per pod, as the settings require). Each row
is N sequential `GET /v1/models` on one keep-alive connection, the rows interleaved so that load
from elsewhere on the machine falls on all of them alike. The first row is the echo engine
directly; the difference to it is what nginx's auth_request and the sidecar's decision add.
Prints a Markdown table for docs/auth.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import jwt
import redis

from sidecar.keys import add_key
from sidecar.redis_keys import RedisKeyAdmin
from tests.auth.test_jwt_through_nginx import JwksServer
from tests.conftest import Pod, start_echo_pod, stop_pod
from tests.harness import RedisServer, wait_until
from tests.sidecar.test_tokens import ISS, claims

SECRET = "latency-secret-" + "x" * 32


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def measure(rows: dict[str, tuple[str, dict[str, str]]], samples: int) -> dict[str, list[float]]:
    clients = {name: httpx.Client(base_url=url, headers=headers) for name, (url, headers) in rows.items()}
    times: dict[str, list[float]] = {name: [] for name in rows}
    try:
        for name, client in clients.items():  # warm: connections, caches, the JWKS
            for _ in range(20):
                assert client.get("/v1/models").status_code == 200, name
        for _ in range(samples):
            for name, client in clients.items():
                started = time.perf_counter()
                status = client.get("/v1/models").status_code
                times[name].append((time.perf_counter() - started) * 1000)
                assert status == 200, (name, status)
    finally:
        for client in clients.values():
            client.close()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--samples", type=int, default=1000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmpdir, ExitStack() as stack:
        tmp = Path(tmpdir)
        server = RedisServer(tmp)
        stack.callback(server.stop)
        admin = RedisKeyAdmin(stack.enter_context(redis.Redis.from_url(server.url, decode_responses=True)))
        secret = tmp / "jwt-secret"
        secret.write_text(SECRET)
        env = {
            "LLM_POD_REDIS_URL": server.url,
            "LLM_POD_JWT_ISSUER": ISS,
            "LLM_POD_JWT_AUDIENCE": "llm-pod",
            "LLM_POD_JWT_ALGORITHMS": "HS256",
            "LLM_POD_JWT_SECRET_FILE": str(secret),
            "LLM_POD_LOG_LEVEL": "WARNING",
        }
        (tmp / "a").mkdir()
        pod: Pod = start_echo_pod(tmp / "a", env)
        stack.callback(stop_pod, pod)
        jwks = JwksServer()
        stack.callback(jwks.close)
        (tmp / "b").mkdir()
        rs_env = {
            "LLM_POD_JWT_ISSUER": ISS,
            "LLM_POD_JWT_AUDIENCE": "llm-pod",
            "LLM_POD_JWT_ALGORITHMS": "RS256",
            "LLM_POD_JWT_JWKS_URL": jwks.url,
            "LLM_POD_LOG_LEVEL": "WARNING",
        }
        rs_pod: Pod = start_echo_pod(tmp / "b", rs_env)
        stack.callback(stop_pod, rs_pod)
        long_lived = claims(exp=int(time.time()) + 3600)

        def bearer(credential: str) -> dict[str, str]:
            return {"Authorization": f"Bearer {credential}"}

        rows = {
            "echo engine directly (no nginx, no auth)": (f"http://127.0.0.1:{pod.ports.engine}", {}),
            "static key": (pod.base, bearer(pod.key)),
            "Redis key (in-process cache, 2 s)": (pod.base, bearer(admin.create("latency-redis"))),
            "Redis key with an rpm limit (one Redis round trip)": (
                pod.base,
                bearer(admin.create("latency-redis-rpm", limits={"rpm": 10_000_000})),
            ),
            "static key with an rpm limit (one Redis round trip)": (
                pod.base,
                bearer(add_key(pod.keys_file, "latency-static-rpm", limits={"rpm": 10_000_000})),
            ),
            "JWT HS256": (pod.base, bearer(jwt.encode(long_lived, SECRET, algorithm="HS256"))),
            "JWT RS256 (JWKS, cached)": (rs_pod.base, bearer(jwks.jwks.sign(long_lived))),
        }
        # The keys file was changed: wait until the sidecar has re-read it (within 1 s) and every row answers.
        for url, headers in rows.values():
            wait_until(
                lambda u=url, h=headers: httpx.get(u + "/v1/models", headers=h).status_code == 200,
                5,
                0.05,
                "every credential to be accepted",
            )
        times = measure(rows, args.samples)
    base = statistics.median(next(iter(times.values())))
    print(f"{args.samples} sequential `GET /v1/models` per row, one keep-alive connection each, interleaved.")
    print()
    print("| path | p50 ms | p99 ms | p50 added to the direct call, ms |")
    print("| --- | --- | --- | --- |")
    for name, values in times.items():
        p50, p99 = statistics.median(values), percentile(values, 0.99)
        added = "" if p50 == base else f"{p50 - base:.2f}"
        label = name if name.startswith("echo") else f"through nginx, {name}"
        print(f"| {label} | {p50:.2f} | {p99:.2f} | {added} |")


if __name__ == "__main__":
    main()
