"""JWTs as credentials: HS* with a shared secret, or RS*/PS*/ES* with keys from a JWKS URL.

- The algorithm allow-list is explicit and one family only (Settings refuses a mix), so a public key
  can never be used as an HMAC secret; `alg: none` is never allowed. A JWKS key verifies only the
  algorithms it fits: its own `alg` when it names one, else those of its key type (and curve).
- exp, iss and aud are required; nbf and iat are checked when present; `jwt_leeway` absorbs clock skew.
- Claims become the caller's identity: `sub` is the key id (`jwt:<sub>`, or for a sub that is long or
  has other characters `jwt:<cleaned prefix>:<hash>`, see `key_id_for`), `priority` an integer,
  `limits` an object like the keys file's (`rpm`, `concurrency`), `models` a list of served models.
- The JWKS is fetched with aiohttp (never blocking the event loop; 2 s at most, under nginx's 5 s
  for the whole auth subrequest), kept for `jwt_jwks_cache_seconds` and then refreshed in the
  background while the known keys go on working, refetched on an unknown `kid` at most once per
  `jwt_jwks_cooldown` (one fetch at a time, which every request waiting on it shares), and kept as
  it was when a fetch fails or returns something that is not a usable JWKS.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import time
from typing import Any

import aiohttp
import jwt
from yarl import URL

from sidecar.keys import LIMIT_NAMES, KeyEntry
from sidecar.metrics import Metrics
from sidecar.settings import HMAC_ALGORITHMS, Settings, read_secret

logger = logging.getLogger(__name__)

JWT_SHAPE = re.compile(r"^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*$")
FETCH_TIMEOUT = 2.0  # seconds for a whole JWKS fetch: under nginx's 5 s for the auth subrequest
RSA_ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"})
# A sub kept as it is in the key id (`jwt:` + 59 characters fits the 64 of a key id).
CLEAN_SUB = re.compile(r"^[A-Za-z0-9._-]{1,59}$")


class TokenRejected(ValueError):
    """The token is not acceptable; the message is safe to show the client (no token content)."""


def looks_like_jwt(token: str) -> bool:
    return token.startswith("eyJ") and JWT_SHAPE.match(token) is not None


class SigningKey:
    """One key from the JWKS, and the algorithms it may verify.

    A key that names its `alg` verifies that algorithm only (RFC 7517 4.4: a key published for
    ES256 must not verify an RS256 token). One that names none verifies what its type allows: an RSA
    key RS* and PS*, an EC key the ES* of its curve (the algorithm PyJWK derives from `crv`).
    """

    __slots__ = ("algorithms", "jwk")

    def __init__(self, jwk: jwt.PyJWK, declared_alg: str | None) -> None:
        self.jwk = jwk
        if declared_alg:
            self.algorithms = frozenset({declared_alg})
        elif jwk.key_type == "RSA":
            self.algorithms = RSA_ALGORITHMS
        else:
            self.algorithms = frozenset({jwk.algorithm_name})

    def fits(self, alg: str) -> bool:
        return alg in self.algorithms


class JwksUnusable(ValueError):
    """A JWKS document that is not one, or holds no key this pod can verify with."""


def parse_jwks(document: Any) -> dict[str, SigningKey]:
    """The usable signing keys of a JWKS document by kid; JwksUnusable when there are none.

    Members that are not objects, not for signatures (`use` other than `sig`) or not usable by PyJWT
    are skipped; a document that is not `{"keys": [...]}` is refused as a whole.
    """
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise JwksUnusable("not a JWKS document ({'keys': [...]})")
    usable: list[tuple[str, SigningKey]] = []
    for raw in document["keys"]:
        if not isinstance(raw, dict) or raw.get("use", "sig") != "sig":
            continue
        alg, kid = raw.get("alg"), raw.get("kid")
        if alg is not None and not isinstance(alg, str):
            continue
        try:
            jwk = jwt.PyJWK(raw)
        except (jwt.PyJWTError, TypeError, ValueError, KeyError, AttributeError):
            continue
        usable.append((kid if isinstance(kid, str) else "", SigningKey(jwk, alg)))
    if not usable:
        raise JwksUnusable("no usable signing keys")
    with_kid = {kid: key for kid, key in usable if kid}
    # A JWKS without kids is usable only for tokens without one, and only with a single key.
    return with_kid or {"": usable[0][1]}


class JwksCache:
    def __init__(
        self, url: str, cooldown: float, max_age: float, metrics: Metrics, timeout: float = FETCH_TIMEOUT
    ) -> None:
        self.url = url
        # For log lines: no userinfo, query or fragment (a JWKS URL may carry a token in either).
        self.shown_url = str(URL(url).with_user(None).with_query(None).with_fragment(None))
        self.cooldown = cooldown
        self.max_age = max_age
        self.metrics = metrics
        self.timeout = timeout
        self._keys: dict[str, SigningKey] = {}
        self._fetched_at = -float("inf")  # last successful fetch
        self._attempted_at = -float("inf")  # last attempt, successful or not
        self._fetching: asyncio.Task[None] | None = None  # the one fetch in flight, if any
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._fetching is not None:
            self._fetching.cancel()
            await asyncio.gather(self._fetching, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    def _known(self, kid: str | None) -> SigningKey | None:
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        return self._keys.get(kid or "")

    def _start_fetch(self) -> asyncio.Task[None]:
        """The fetch in flight, or a new one: never two at once."""
        if self._fetching is None or self._fetching.done():
            self._attempted_at = time.monotonic()
            self._fetching = asyncio.create_task(self._fetch())
        return self._fetching

    async def key_for(self, kid: str | None) -> SigningKey:
        now = time.monotonic()
        may_fetch = now - self._attempted_at >= self.cooldown
        known = self._known(kid)
        if known is not None:
            if may_fetch and now - self._fetched_at > self.max_age:
                # Stale but known: this request uses the key it has; the refresh runs on its own.
                self._start_fetch()
            return known
        if self._fetching is not None and not self._fetching.done():
            await asyncio.shield(self._fetching)  # one fetch answers every request waiting on it
        elif may_fetch:
            await asyncio.shield(self._start_fetch())
        known = self._known(kid)
        if known is None:
            raise TokenRejected("The token's signing key (kid) is not known to this pod.")
        return known

    async def _fetch(self) -> None:
        """Fetch and replace the keys; on any failure keep the keys already known (never raises)."""
        if self._session is None:
            timeout = aiohttp.ClientTimeout(total=self.timeout, connect=min(1.0, self.timeout))
            self._session = aiohttp.ClientSession(timeout=timeout)
        try:
            async with self._session.get(self.url) as resp:
                resp.raise_for_status()
                document = await resp.json(content_type=None)
            keys = parse_jwks(document)
        except (aiohttp.ClientError, TimeoutError, ValueError) as err:
            self.metrics.jwks_fetches.labels("error").inc()
            logger.warning(
                "JWKS fetch from %s failed (%s%s); keeping %d known key(s)",
                self.shown_url,
                type(err).__name__,
                f" {err.status}" if isinstance(err, aiohttp.ClientResponseError) else "",
                len(self._keys),
            )
            return
        except Exception:
            # Whatever else a broken issuer can provoke, requests must see a failed fetch, not a 500.
            self.metrics.jwks_fetches.labels("error").inc()
            logger.exception(
                "JWKS fetch from %s failed; keeping %d known key(s)", self.shown_url, len(self._keys)
            )
            return
        self._keys = keys
        self._fetched_at = time.monotonic()
        self.metrics.jwks_fetches.labels("ok").inc()
        logger.info("JWKS fetched from %s: %d key(s)", self.shown_url, len(self._keys))


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
        except (jwt.PyJWTError, TypeError, ValueError) as err:
            raise TokenRejected("The token is not a valid JWT.") from err
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise TokenRejected(f"Tokens signed with {str(alg)[:10]!r} are not accepted by this pod.")
        key: Any
        if self.jwks is not None:
            kid = header.get("kid")
            signing = await self.jwks.key_for(kid if isinstance(kid, str) else None)
            if not signing.fits(alg):
                raise TokenRejected("The token's algorithm does not fit its signing key.")
            key = signing.jwk.key
        else:
            key = self.secret
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
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
        except (jwt.PyJWTError, TypeError, ValueError) as err:
            # PyJWTError, not only InvalidTokenError: a key that does not fit the algorithm raises
            # InvalidKeyError, or TypeError/ValueError from deeper down. Each is a refused token, not a 500.
            raise TokenRejected("The token's signature or claims are invalid.") from err
        return identity(claims)


def key_id_for(sub: str) -> str:
    """The key id of a JWT subject: distinct subjects always get distinct ids.

    A sub of at most 59 letters, digits, `.`, `_`, `-` is kept as it is: `jwt:<sub>`. Any other gets
    `jwt:<prefix>:<hash>`: its first 40 characters with the others replaced by `_`, then 16 hex
    digits of the SHA-256 of the whole sub. The second `:` keeps the two forms apart, and the hash
    keeps apart subs that clean or cut to the same prefix.
    """
    if CLEAN_SUB.match(sub):
        return f"jwt:{sub}"
    digest = hashlib.sha256(sub.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"jwt:{re.sub(r'[^A-Za-z0-9._-]', '_', sub[:40])}:{digest}"


def identity(claims: dict[str, Any]) -> KeyEntry:
    """Map verified claims to the key metadata the rest of the sidecar works with."""
    sub = claims["sub"]
    if not isinstance(sub, str) or not sub:
        raise TokenRejected("The token's sub claim must be a non-empty string.")
    key_id = key_id_for(sub)
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
