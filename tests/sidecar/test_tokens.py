"""JWTs at the sidecar's /auth, in-process: HS256 with a secret file, RS256 with a JWKS served on
loopback by a real aiohttp server, and the attacks and mistakes a verifier must refuse."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import math
import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from sidecar.app import create_app
from sidecar.metrics import METRICS, Metrics
from sidecar.settings import Settings, SettingsError
from sidecar.tokens import JwksCache, key_id_for
from tests.harness import eventually, free_port

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
    """A JWKS endpoint on loopback that counts its fetches and can be switched to failing, to
    serving a broken document, or to hanging until `gate` is set. With `ec_alg` set it publishes an
    EC P-256 key (kid `ec`) beside the RSA one (`ec_alg` "": without an `alg` of its own)."""

    def __init__(self) -> None:
        self.private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec_private = ec.generate_private_key(ec.SECP256R1())
        self.kid = "k1"
        self.rsa_alg: str | None = "RS256"  # None: the RSA key names no alg
        self.ec_alg: str | None = None  # None: no EC key
        self.fetches = 0
        self.failing = False
        self.broken: str | None = None  # a body served instead of the JWKS
        self.gate: asyncio.Event | None = None
        self.server: TestServer | None = None

    def document(self) -> dict[str, Any]:
        jwk = RSAAlgorithm.to_jwk(self.private.public_key(), as_dict=True)
        keys = [{**jwk, "kid": self.kid, "use": "sig", **({"alg": self.rsa_alg} if self.rsa_alg else {})}]
        if self.ec_alg is not None:
            ec_jwk = ECAlgorithm.to_jwk(self.ec_private.public_key(), as_dict=True)
            keys.append(
                {**ec_jwk, "kid": "ec", "use": "sig", **({"alg": self.ec_alg} if self.ec_alg else {})}
            )
        return {"keys": keys}

    async def handler(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failing:
            return web.Response(status=500)
        if self.broken is not None:
            return web.Response(text=self.broken, content_type="application/json")
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
    if j.gate is not None:
        j.gate.set()  # let a hanging handler finish so the server can close
    await j.server.close()


Client = TestClient[web.Request, web.Application]


@pytest.fixture
def cooldown() -> float:
    return 30.0


@pytest.fixture
def algorithms() -> tuple[str, ...]:
    return ("RS256",)


@pytest.fixture
def jwks_max_age() -> float:
    return 600.0


@pytest.fixture
async def rs_client(
    jwks: Jwks, cooldown: float, algorithms: tuple[str, ...], jwks_max_age: float
) -> AsyncIterator[Client]:
    assert jwks.server is not None
    settings = Settings(
        served_model="m",
        engine_port=free_port(),
        request_end_port=free_port(),
        jwt_issuer=ISS,
        jwt_audience=AUD,
        jwt_algorithms=algorithms,
        jwt_jwks_url=str(jwks.server.make_url("/jwks")),
        jwt_jwks_cooldown=cooldown,
        jwt_jwks_cache_seconds=jwks_max_age,
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
    # A sub with characters a key id cannot hold: a cleaned prefix and a hash of the whole sub.
    digest = hashlib.sha256(b"bob@example.org").hexdigest()[:16]
    assert headers["X-LLM-Pod-Key-Id"] == f"jwt:bob_example.org:{digest}"
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


def metric(client: Client, counter: str, *labels: str) -> float:
    value: float = getattr(client.app[METRICS], counter).labels(*labels)._value.get()
    return value


def sign_es256(j: Jwks, payload: dict[str, Any], kid: str = "ec") -> str:
    return jwt.encode(payload, j.ec_private, algorithm="ES256", headers={"kid": kid})


# Tokens whose algorithm does not fit the key their kid names. Before, PyJWT raised TypeError for
# an RSA algorithm on an EC key: a 500 from /auth (503 to the client) and a stack trace per request.
MISFITS: dict[str, Callable[[Jwks], str]] = {
    "RS256 token, EC key's kid": lambda j: jwt.encode(
        claims(), j.private, algorithm="RS256", headers={"kid": "ec"}
    ),
    "ES256 token, RSA key's kid": lambda j: sign_es256(j, claims(), kid=j.kid),
    "PS256 token, RSA key published for RS256": lambda j: jwt.encode(
        claims(), j.private, algorithm="PS256", headers={"kid": j.kid}
    ),
}


@pytest.mark.parametrize("ec_alg", ["ES256", ""])
@pytest.mark.parametrize("algorithms", [("RS256", "PS256", "ES256")])
@pytest.mark.parametrize("case", sorted(MISFITS))
async def test_a_token_whose_algorithm_does_not_fit_its_key_is_401(
    rs_client: Client, jwks: Jwks, case: str, ec_alg: str, caplog: pytest.LogCaptureFixture
) -> None:
    jwks.ec_alg = ec_alg  # the EC key with its own alg, and without (its curve decides)
    assert (await auth(rs_client, jwks.sign(claims())))[0] == 204  # RSA key, RS256
    assert (await auth(rs_client, sign_es256(jwks, claims())))[0] == 204  # EC key, ES256
    status, headers = await auth(rs_client, MISFITS[case](jwks))
    assert status == 401, headers
    assert json.loads(headers["X-LLM-Pod-Error"])["error"]["code"] == "invalid_api_key"
    assert not [r for r in caplog.records if r.exc_info], "a refused token must not log a stack trace"


@pytest.mark.parametrize("algorithms", [("RS256", "PS256")])
async def test_an_rsa_key_without_alg_verifies_every_rsa_algorithm(rs_client: Client, jwks: Jwks) -> None:
    jwks.rsa_alg = None
    for alg in ("RS256", "PS256"):
        token = jwt.encode(claims(), jwks.private, algorithm=alg, headers={"kid": jwks.kid})
        assert (await auth(rs_client, token))[0] == 204, alg


BROKEN_JWKS = {
    "a list": "[]",
    "keys not a list": '{"keys": {"kid": "k1"}}',
    "keys a string": '{"keys": "k1"}',
    "members not objects": '{"keys": [1, "two", null]}',
    "an RSA key without n and e": '{"keys": [{"kty": "RSA", "kid": "k1"}]}',
    "no keys": '{"keys": []}',
    "not JSON": "<html>",
    "a number": "42",
}


@pytest.mark.parametrize("cooldown", [0.0])  # every unknown kid may refetch: no waiting in the test
@pytest.mark.parametrize("case", sorted(BROKEN_JWKS))
async def test_a_malformed_jwks_is_a_failed_fetch_and_keeps_the_known_keys(
    rs_client: Client, jwks: Jwks, case: str
) -> None:
    assert (await auth(rs_client, jwks.sign(claims())))[0] == 204
    jwks.broken = BROKEN_JWKS[case]
    status, _ = await auth(rs_client, jwks.sign(claims(), kid="rotated"))  # refetches: a broken JWKS
    assert status == 401
    assert jwks.fetches == 2
    assert metric(rs_client, "jwks_fetches", "error") == 1
    assert (await auth(rs_client, jwks.sign(claims())))[0] == 204  # the known key still works


async def test_a_concurrent_burst_of_unknown_kids_fetches_the_jwks_once(
    rs_client: Client, jwks: Jwks
) -> None:
    """50 unknown kids at once, on a pod that has not fetched yet: the lock (one fetch in flight,
    shared) holds while they race, and the cooldown (30 s) keeps a second burst from fetching."""
    jwks.gate = asyncio.Event()  # the JWKS answers only once every request of the burst is waiting
    burst = asyncio.gather(
        *(auth(rs_client, jwks.sign(claims(), kid=f"made-up-{i}")) for i in range(50)),
    )
    await eventually(lambda: jwks.fetches >= 1, what="the first fetch")
    jwks.gate.set()
    assert {status for status, _ in await burst} == {401}
    assert jwks.fetches == 1
    again = await asyncio.gather(*(auth(rs_client, jwks.sign(claims(), kid=f"x-{i}")) for i in range(50)))
    assert {status for status, _ in again} == {401}
    assert jwks.fetches == 1  # within the cooldown: no fetch at all


@pytest.mark.parametrize("cooldown", [0.0])
async def test_requests_for_a_new_kid_share_the_fetch_in_flight(rs_client: Client, jwks: Jwks) -> None:
    assert (await auth(rs_client, jwks.sign(claims())))[0] == 204
    jwks.kid = "k2"  # the issuer rotates: every request of the burst names a kid the pod has not seen
    jwks.gate = asyncio.Event()
    burst = asyncio.gather(*(auth(rs_client, jwks.sign(claims(), kid="k2")) for _ in range(20)))
    await eventually(lambda: jwks.fetches == 2, what="the refetch")
    jwks.gate.set()
    assert {status for status, _ in await burst} == {204}
    assert jwks.fetches == 2  # one fetch for the twenty


async def test_a_hanging_jwks_refuses_an_unknown_kid_before_nginx_gives_up(
    rs_client: Client, jwks: Jwks
) -> None:
    """nginx waits 5 s for the whole auth subrequest (proxy_read_timeout); a JWKS fetch waits 2 s."""
    jwks.gate = asyncio.Event()  # never set during the test: the JWKS accepts and never answers
    started = time.monotonic()
    status, headers = await auth(rs_client, jwks.sign(claims()))
    elapsed = time.monotonic() - started
    assert status == 401, headers
    assert 1.9 <= elapsed < 4.0, elapsed
    assert metric(rs_client, "jwks_fetches", "error") == 1


@pytest.mark.parametrize("jwks_max_age", [0.0])  # the keyset is stale at once
@pytest.mark.parametrize("cooldown", [0.0])
async def test_a_stale_keyset_serves_known_kids_while_it_refreshes(rs_client: Client, jwks: Jwks) -> None:
    assert (await auth(rs_client, jwks.sign(claims())))[0] == 204
    assert jwks.fetches == 1
    jwks.gate = asyncio.Event()  # the refresh hangs until the test lets it answer
    status, _ = await asyncio.wait_for(auth(rs_client, jwks.sign(claims())), 1.0)
    assert status == 204  # answered with the known key, not after the refresh
    await eventually(lambda: jwks.fetches == 2, what="the background refresh")
    assert metric(rs_client, "jwks_fetches", "ok") == 1  # ... which has not finished
    jwks.gate.set()
    await eventually(lambda: metric(rs_client, "jwks_fetches", "ok") == 2, what="the refresh to land")


def test_key_ids_of_subjects_are_distinct_and_fit_a_key_id() -> None:
    subs = [
        "alice_example.org",  # clean: kept as it is
        "alice@example.org",  # cleaned to the same text as the one above
        "alice example.org",
        "x" * 59,
        "x" * 59 + "a",  # these two used to be cut to the same 59 characters
        "x" * 59 + "b",
        "bob:1",  # a colon cannot make a clean sub look like a hashed one
        "\ud800",  # a lone surrogate from JSON must not crash the hash
        "é" * 100,
    ]
    ids = [key_id_for(sub) for sub in subs]
    assert len(set(ids)) == len(subs), ids
    assert ids[0] == "jwt:alice_example.org"
    assert ids[3] == "jwt:" + "x" * 59
    assert all(re.fullmatch(r"jwt:[A-Za-z0-9._-]{1,59}(:[0-9a-f]{16})?", i) and len(i) <= 64 for i in ids)


async def test_subjects_that_used_to_collide_get_their_own_limits(hs_client: Client) -> None:
    """`alice@example.org` and `alice_example.org` were both `jwt:alice_example.org`: one limit,
    one lease set and one metric series for two callers."""
    await eventually(lambda: time.time() % 60 < 58, what="a minute window with room for the test")
    ids = []
    for sub in ("alice@example.org", "alice_example.org"):
        token = jwt.encode(claims(sub=sub, limits={"rpm": 1}), SECRET, algorithm="HS256")
        status, headers = await auth(hs_client, token)
        assert status == 204, (sub, headers)  # the other subject's request did not count here
        ids.append(headers["X-LLM-Pod-Key-Id"])
    assert ids[0] != ids[1]


async def test_the_limits_claim_is_enforced(hs_client: Client) -> None:
    token = jwt.encode(claims(sub="limited", limits={"rpm": 1}), SECRET, algorithm="HS256")
    await eventually(lambda: time.time() % 60 < 58, what="a minute window with room for the test")
    assert (await auth(hs_client, token))[0] == 204
    before = time.time()
    status, headers = await auth(hs_client, token)
    after = time.time()
    assert (status, headers["X-LLM-Pod-Status"]) == (403, "429")  # a 429, carried in a 403 to nginx
    assert json.loads(headers["X-LLM-Pod-Error"])["error"]["code"] == "rate_limit_exceeded"
    assert headers["x-ratelimit-limit-requests"] == "1"
    # Until the minute's window ends, within 1 s.
    retry = int(headers["Retry-After"])
    assert math.ceil(60 - after % 60) - 1 <= retry <= math.ceil(60 - before % 60) + 1, retry


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


def test_the_jwks_url_is_logged_without_userinfo_or_query() -> None:
    cache = JwksCache("https://user:pass@issuer.test/jwks.json?token=abc#f", 30, 600, Metrics())
    assert cache.shown_url == "https://issuer.test/jwks.json"
