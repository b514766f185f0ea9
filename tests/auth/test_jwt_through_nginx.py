"""JWTs as a client sees them: RS256 keys from a JWKS served on loopback, checked by the real sidecar
behind the real nginx (the engine is the header-echoing TEST DOUBLE, tests/nginx/echo_engine.py).
tests/sidecar/test_tokens.py holds the same cases in-process, with HS256 beside them."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import jwt
import openai
import pytest

from tests.conftest import Pod, start_echo_pod, stop_pod
from tests.harness import wait_until
from tests.sidecar.test_tokens import ISS, REJECTED, Jwks, claims

COOLDOWN = 2.0  # seconds between JWKS fetches for unknown kids, for this pod


class JwksServer:
    """The Jwks of the in-process tests, served by a plain HTTP server in a thread: the sidecar is
    another process here."""

    def __init__(self) -> None:
        self.jwks = Jwks()
        self.jwks.ec_alg = ""  # an EC key beside the RSA one, naming no alg: its curve says ES256
        jwks = self.jwks

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                jwks.fetches += 1
                body = json.dumps(jwks.document()).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/jwks"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)


@dataclass
class JwtPod:
    pod: Pod
    jwks: JwksServer

    def chat(self, token: str) -> int:
        base = self.pod.base + "/v1"
        with openai.OpenAI(base_url=base, api_key=token, max_retries=0, timeout=10) as client:
            return client.chat.completions.with_raw_response.create(
                model=self.pod.model, messages=[{"role": "user", "content": "hi"}]
            ).status_code


@pytest.fixture(scope="module")
def jwt_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JwtPod]:
    jwks = JwksServer()
    env = {
        "LLM_POD_JWT_ISSUER": ISS,
        "LLM_POD_JWT_AUDIENCE": "llm-pod",
        "LLM_POD_JWT_ALGORITHMS": "RS256",
        "LLM_POD_JWT_JWKS_URL": jwks.url,
        "LLM_POD_JWT_LEEWAY": "5",
        "LLM_POD_JWT_JWKS_COOLDOWN": str(COOLDOWN),
    }
    try:
        pod = start_echo_pod(tmp_path_factory.mktemp("jwt-pod"), env)
    except BaseException:
        jwks.close()
        raise
    try:
        yield JwtPod(pod, jwks)
    finally:
        stop_pod(pod)
        jwks.close()


def test_a_valid_rs256_token_is_let_through(jwt_pod: JwtPod) -> None:
    assert jwt_pod.chat(jwt_pod.jwks.jwks.sign(claims())) == 200
    assert jwt_pod.jwks.jwks.fetches >= 1


@pytest.mark.parametrize("case", sorted(REJECTED))
def test_rejected_tokens_are_authentication_errors(jwt_pod: JwtPod, case: str) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        jwt_pod.chat(REJECTED[case](jwt_pod.jwks.jwks))
    assert caught.value.status_code == 401
    error = caught.value.response.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")


def test_a_burst_of_unknown_kids_fetches_the_jwks_at_most_once_per_cooldown(jwt_pod: JwtPod) -> None:
    jwks = jwt_pod.jwks.jwks
    assert jwt_pod.chat(jwks.sign(claims())) == 200
    started, before = time.monotonic(), jwks.fetches
    refused = 0
    while time.monotonic() - started < COOLDOWN * 1.5:  # spans one cooldown boundary at most twice
        try:
            jwt_pod.chat(jwks.sign(claims(), kid=f"made-up-{refused}"))
        except openai.AuthenticationError:
            refused += 1
    elapsed = time.monotonic() - started
    assert refused >= 20, "the burst was too small to show anything"
    # At most one fetch per cooldown that the burst overlapped (plus the one it may start in).
    assert jwks.fetches - before <= int(elapsed // COOLDOWN) + 1, (jwks.fetches - before, elapsed)
    # A key published later is picked up on the first unknown kid after the cooldown.
    jwks.kid = "k2"
    wait_until(lambda: _allowed(jwt_pod, jwks.sign(claims(), kid="k2")), COOLDOWN + 3, 0.2, "the new kid")


def test_an_rs256_token_naming_the_ec_key_is_an_authentication_error(jwt_pod: JwtPod) -> None:
    """PyJWT raised TypeError for it: the sidecar answered 500, the client got 503 (and the log a
    stack trace) for every such token. The pod allows RS256 only; the JWKS also publishes an EC key."""
    jwks = jwt_pod.jwks.jwks
    token = jwt.encode(claims(), jwks.private, algorithm="RS256", headers={"kid": "ec"})
    with pytest.raises(openai.AuthenticationError) as caught:
        jwt_pod.chat(token)
    assert caught.value.status_code == 401
    assert "Traceback" not in jwt_pod.pod.logs()


def test_a_concurrent_burst_of_unknown_kids_fetches_the_jwks_at_most_once_per_cooldown(
    jwt_pod: JwtPod,
) -> None:
    jwks = jwt_pod.jwks.jwks
    tokens = [jwks.sign(claims(), kid=f"concurrent-{i}") for i in range(48)]
    before, started = jwks.fetches, time.monotonic()
    with ThreadPoolExecutor(max_workers=16) as pool:
        outcomes = list(pool.map(_refused, [jwt_pod] * len(tokens), tokens))
    elapsed = time.monotonic() - started
    assert all(outcomes), "every made-up kid is an AuthenticationError"
    assert jwks.fetches - before <= int(elapsed // COOLDOWN) + 1, (jwks.fetches - before, elapsed)


def _refused(jwt_pod: JwtPod, token: str) -> bool:
    try:
        jwt_pod.chat(token)
    except openai.AuthenticationError:
        return True
    return False


def _allowed(jwt_pod: JwtPod, token: str) -> bool:
    try:
        return jwt_pod.chat(token) == 200
    except openai.AuthenticationError:
        return False
