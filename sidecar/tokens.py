"""JWTs as credentials: HS* with a shared secret, or RS*/PS*/ES* with keys from a JWKS URL.

- The algorithm allow-list is explicit and one family only (Settings refuses a mix), so a public key
  can never be used as an HMAC secret; `alg: none` is never allowed.
- exp, iss and aud are required; nbf and iat are checked when present; `jwt_leeway` absorbs clock skew.
- Claims become the caller's identity: `sub` is the key id (as `jwt:<sub>`), `priority` an integer,
  `limits` an object like the keys file's (`rpm`, `concurrency`), `models` a list of served models.
- The JWKS is fetched with aiohttp (never blocking the event loop), kept for
  `jwt_jwks_cache_seconds`, refetched on an unknown `kid` at most once per `jwt_jwks_cooldown`, and
  kept as it was when a refetch fails.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import aiohttp
import jwt

from sidecar.keys import KEY_ID, LIMIT_NAMES, KeyEntry
from sidecar.metrics import Metrics
from sidecar.settings import HMAC_ALGORITHMS, Settings, read_secret

logger = logging.getLogger(__name__)

JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")


class TokenRejected(ValueError):
    """The token is not acceptable; the message is safe to show the client (no token content)."""


def looks_like_jwt(token: str) -> bool:
    return token.startswith("eyJ") and JWT_SHAPE.match(token) is not None


class JwksCache:
    def __init__(self, url: str, cooldown: float, max_age: float, metrics: Metrics) -> None:
        self.url = url
        self.cooldown = cooldown
        self.max_age = max_age
        self.metrics = metrics
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = 0.0  # last successful fetch
        self._attempted_at = -float("inf")  # last attempt, successful or not
        self._lock = asyncio.Lock()
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def key_for(self, kid: str | None) -> jwt.PyJWK:
        now = time.monotonic()
        stale = now - self._fetched_at > self.max_age
        if (kid not in self._keys or stale) and now - self._attempted_at >= self.cooldown:
            async with self._lock:
                # Another request may have fetched while this one waited for the lock.
                if now - self._attempted_at >= self.cooldown:
                    await self._fetch()
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        found = self._keys.get(kid or "")
        if found is None:
            raise TokenRejected("The token's signing key (kid) is not known to this pod.")
        return found

    async def _fetch(self) -> None:
        self._attempted_at = time.monotonic()
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5, connect=2))
        try:
            async with self._session.get(self.url) as resp:
                resp.raise_for_status()
                document = await resp.json(content_type=None)
            keyset = jwt.PyJWKSet.from_dict(document)
        except (aiohttp.ClientError, TimeoutError, ValueError, jwt.PyJWKSetError) as err:
            self.metrics.jwks_fetches.labels("error").inc()
            logger.warning(
                "JWKS fetch from %s failed (%s); keeping %d known key(s)", self.url, err, len(self._keys)
            )
            return
        self._keys = {k.key_id: k for k in keyset.keys if k.key_id}
        if not self._keys and keyset.keys:
            self._keys = {"": keyset.keys[0]}
        self._fetched_at = time.monotonic()
        self.metrics.jwks_fetches.labels("ok").inc()
        logger.info("JWKS fetched from %s: %d key(s)", self.url, len(self._keys))


class JwtVerifier:
    def __init__(self, settings: Settings, metrics: Metrics) -> None:
        self.settings = settings
        self.algorithms = list(settings.jwt_algorithms)
        self.hmac = bool(set(self.algorithms) & HMAC_ALGORITHMS.keys())
        self.secret = b""
        if self.hmac and settings.jwt_secret_file is not None:
            self.secret = read_secret(settings.jwt_secret_file)
        self.jwks = (
            None
            if self.hmac
            else JwksCache(
                settings.jwt_jwks_url, settings.jwt_jwks_cooldown, settings.jwt_jwks_cache_seconds, metrics
            )
        )

    async def close(self) -> None:
        if self.jwks is not None:
            await self.jwks.close()

    async def verify(self, token: str) -> KeyEntry:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as err:
            raise TokenRejected("The token is not a valid JWT.") from err
        alg = header.get("alg")
        if alg not in self.algorithms:
            raise TokenRejected(f"Tokens signed with {str(alg)[:10]!r} are not accepted by this pod.")
        key: Any
        if self.jwks is not None:
            kid = header.get("kid")
            key = (await self.jwks.key_for(kid if isinstance(kid, str) else None)).key
        else:
            key = self.secret
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self.algorithms,
                audience=self.settings.jwt_audience,
                issuer=self.settings.jwt_issuer,
                leeway=self.settings.jwt_leeway,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        except jwt.ExpiredSignatureError as err:
            raise TokenRejected("The token has expired.") from err
        except jwt.ImmatureSignatureError as err:
            raise TokenRejected("The token is not valid yet.") from err
        except jwt.InvalidAudienceError as err:
            raise TokenRejected("The token is not meant for this audience.") from err
        except jwt.InvalidIssuerError as err:
            raise TokenRejected("The token's issuer is not trusted.") from err
        except jwt.MissingRequiredClaimError as err:
            raise TokenRejected(f"The token lacks the required claim {err.claim!r}.") from err
        except jwt.InvalidTokenError as err:
            raise TokenRejected("The token's signature or claims are invalid.") from err
        return identity(claims)


def identity(claims: dict[str, Any]) -> KeyEntry:
    """Map verified claims to the key metadata the rest of the sidecar works with."""
    sub = re.sub(r"[^A-Za-z0-9._-]", "_", str(claims["sub"]))[:59]
    key_id = f"jwt:{sub}"
    if not KEY_ID.match(sub or "-"):
        raise TokenRejected("The token's sub claim is empty.")
    priority = claims.get("priority", 0)
    limits = claims.get("limits") or {}
    models = claims.get("models") or []
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise TokenRejected("The token's priority claim must be an integer.")
    if not isinstance(limits, dict) or not all(
        k in LIMIT_NAMES and isinstance(v, int) and not isinstance(v, bool) and v >= 0
        for k, v in limits.items()
    ):
        raise TokenRejected("The token's limits claim must map rpm/concurrency to non-negative integers.")
    if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
        raise TokenRejected("The token's models claim must be a list of model names.")
    return KeyEntry(key_id, "", priority, limits=dict(limits), models=tuple(models))
