"""JWTs at the sidecar's /auth, in-process: HS256 with a secret file, RS256 with a JWKS served on
loopback by a real aiohttp server, and the attacks and mistakes a verifier must refuse."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

from sidecar.app import create_app
from sidecar.settings import Settings, SettingsError
from tests.harness import free_port

ISS, AUD = "https://issuer.test", "llm-pod"


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "sub": "team-a",
        "iss": ISS,
        "aud": AUD,
        "iat": now,
        "exp": now + 300,
        "priority": 3,
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


class Jwks:
    """A JWKS endpoint on loopback that counts its fetches and can be switched to failing."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = "k1"
        self.fetches = 0
        self.failing = False
        self.server: TestServer | None = None

    def document(self) -> dict[str, Any]:
        jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}]}

    async def handler(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.failing:
            return web.Response(status=500)
        return web.json_response(self.document())

    def sign(self, payload: dict[str, Any], kid: str | None = None) -> str:
        return jwt.encode(payload, self.private, algorithm="RS256", headers={"kid": kid or self.kid})

    def public_pem(self) -> bytes:
        return self.private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@pytest.fixture
async def jwks() -> AsyncIterator[Jwks]:
    j = Jwks()
    app = web.Application()
    app.router.add_get("/jwks", j.handler)
    j.server = TestServer(app, host="127.0.0.1")
    await j.server.start_server()
    yield j
    await j.server.close()


Client = TestClient[web.Request, web.Application]


@pytest.fixture
def cooldown() -> float:
    return 30.0


@pytest.fixture
async def rs_client(jwks: Jwks, cooldown: float) -> AsyncIterator[Client]:
    assert jwks.server is not None
    settings = Settings(
        served_model="m",
        engine_port=free_port(),
        request_end_port=free_port(),
        jwt_issuer=ISS,
        jwt_audience=AUD,
        jwt_algorithms=("RS256",),
        jwt_jwks_url=str(jwks.server.make_url("/jwks")),
        jwt_jwks_cooldown=cooldown,
        jwt_leeway=5.0,
    )
    async with TestClient(TestServer(create_app(settings, handle_sigterm=False))) as c:
        yield c


SECRET = "a-shared-secret-of-at-least-32-bytes!"


@pytest.fixture
async def hs_client(tmp_path: Path) -> AsyncIterator[Client]:
    secret_file = tmp_path / "jwt-secret"
    secret_file.write_text(SECRET + "\n")
    settings = Settings(
        served_model="m",
        engine_port=free_port(),
        request_end_port=free_port(),
        jwt_issuer=ISS,
        jwt_audience=AUD,
        jwt_algorithms=("HS256",),
        jwt_secret_file=secret_file,
        jwt_leeway=5.0,
    )
    async with TestClient(TestServer(create_app(settings, handle_sigterm=False))) as c:
        yield c


async def auth(client: Client, token: str) -> tuple[int, dict[str, str]]:
    resp = await client.get("/auth", headers={"Authorization": f"Bearer {token}"})
    return resp.status, dict(resp.headers)


async def test_valid_hs256(hs_client: Client) -> None:
    status, headers = await auth(hs_client, jwt.encode(claims(), SECRET, algorithm="HS256"))
    assert status == 204
    assert headers["X-LLM-Pod-Key-Id"] == "jwt:team-a"
    assert headers["X-LLM-Pod-Priority"] == "3"


async def test_valid_rs256_from_jwks(rs_client: Client, jwks: Jwks) -> None:
    status, headers = await auth(rs_client, jwks.sign(claims(sub="bob@example.org")))
    assert status == 204, headers
    assert headers["X-LLM-Pod-Key-Id"] == "jwt:bob_example.org"
    assert jwks.fetches == 1
    # Cached: a second token needs no fetch.
    assert (await auth(rs_client, jwks.sign(claims())))[0] == 204
    assert jwks.fetches == 1


def forged_none(payload: dict[str, Any]) -> str:
    def b64(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()

    return f"{b64({'alg': 'none', 'typ': 'JWT'})}.{b64(payload)}."


def hs256_with_the_public_key(j: Jwks) -> str:
    """The classic confusion attack: the public key, which anyone can fetch, used as an HMAC secret."""
    header = base64.urlsafe_b64encode(json.dumps({"alg": "HS256", "typ": "JWT", "kid": j.kid}).encode())
    body = base64.urlsafe_b64encode(json.dumps(claims()).encode()).rstrip(b"=")
    signing_input = header.rstrip(b"=") + b"." + body
    sig = base64.urlsafe_b64encode(hmac.new(j.public_pem(), signing_input, hashlib.sha256).digest())
    return (signing_input + b"." + sig.rstrip(b"=")).decode()


REJECTED: dict[str, Callable[[Jwks], str]] = {
    "expired": lambda j: j.sign(claims(exp=int(time.time()) - 60)),
    "not yet valid": lambda j: j.sign(claims(nbf=int(time.time()) + 120)),
    "wrong audience": lambda j: j.sign(claims(aud="another-service")),
    "wrong issuer": lambda j: j.sign(claims(iss="https://evil.test")),
    "missing exp": lambda j: j.sign(claims(exp=None)),
    "alg none": lambda j: forged_none(claims()),
    "unknown kid": lambda j: j.sign(claims(), kid="not-published"),
    "bad signature": lambda j: j.sign(claims())[:-4] + "AAAA",
    "HS256 signed with the RSA public key": hs256_with_the_public_key,
}


@pytest.mark.parametrize("case", sorted(REJECTED))
async def test_rejected_tokens_are_401(rs_client: Client, jwks: Jwks, case: str) -> None:
    status, headers = await auth(rs_client, REJECTED[case](jwks))
    assert status == 401
    assert headers["X-LLM-Pod-Status"] == "401"
    error = json.loads(headers["X-LLM-Pod-Error"])["error"]
    assert error["code"] == "invalid_api_key"


async def test_hs256_signed_with_the_rsa_public_key_is_refused(rs_client: Client, jwks: Jwks) -> None:
    status, headers = await auth(rs_client, hs256_with_the_public_key(jwks))
    assert status == 401
    assert "not accepted" in json.loads(headers["X-LLM-Pod-Error"])["error"]["message"]


@pytest.mark.parametrize("cooldown", [0.5])
async def test_a_burst_of_unknown_kids_fetches_the_jwks_at_most_once_per_cooldown(
    rs_client: Client, jwks: Jwks, cooldown: float
) -> None:
    assert (await auth(rs_client, jwks.sign(claims())))[0] == 204
    first_fetch = time.monotonic()
    assert jwks.fetches == 1
    for burst in range(2):
        for i in range(50):
            assert (await auth(rs_client, jwks.sign(claims(), kid=f"unknown-{burst}-{i}")))[0] == 401
        # The first fetch, then at most one for each cooldown that has passed since (on a busy machine
        # a burst may outlast a cooldown; on a quiet one this is 1 after the first burst, 2 after the second).
        assert jwks.fetches <= 1 + int((time.monotonic() - first_fetch) // cooldown), jwks.fetches
        await asyncio.sleep(cooldown + 0.1)  # the cooldown passes: the next unknown kid may fetch again
    assert jwks.fetches >= 2  # ... and did
    # A key the issuer publishes later is picked up once the cooldown allows another fetch.
    jwks.kid = "k2"
    await asyncio.sleep(cooldown + 0.1)
    assert (await auth(rs_client, jwks.sign(claims(), kid="k2")))[0] == 204


@pytest.mark.parametrize("cooldown", [0.2])
async def test_a_failed_refetch_keeps_the_known_keys(rs_client: Client, jwks: Jwks) -> None:
    assert (await auth(rs_client, jwks.sign(claims())))[0] == 204
    await asyncio.sleep(0.3)
    jwks.failing = True
    assert (await auth(rs_client, jwks.sign(claims(), kid="rotated")))[0] == 401  # triggers a failing fetch
    assert jwks.fetches == 2
    assert (await auth(rs_client, jwks.sign(claims())))[0] == 204  # the known key still works


async def test_claims_limit_the_models_a_token_may_use(hs_client: Client) -> None:
    status, headers = await auth(
        hs_client, jwt.encode(claims(models=["other-model"]), SECRET, algorithm="HS256")
    )
    assert status == 403
    assert json.loads(headers["X-LLM-Pod-Error"])["error"]["code"] == "permission_denied"


def test_settings_refuse_mixing_hmac_and_asymmetric(tmp_path: Path) -> None:
    secret = tmp_path / "s"
    secret.write_text("x")
    with pytest.raises(SettingsError, match="mixes HMAC and asymmetric"):
        Settings(
            served_model="m",
            jwt_issuer=ISS,
            jwt_audience=AUD,
            jwt_algorithms=("HS256", "RS256"),
            jwt_secret_file=secret,
            jwt_jwks_url="http://127.0.0.1:1/jwks",
        )


def test_settings_refuse_none_and_require_iss_and_aud() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"LLM_POD_SERVED_MODEL": "m", "LLM_POD_JWT_ALGORITHMS": "none"})
    text = str(caught.value)
    assert "unknown or unsafe NONE" in text
    assert "JWT_ISSUER is required" in text
    assert "JWT_AUDIENCE is required" in text
