"""`GET /auth`: nginx's auth_request asks here whether a request may pass.

The contract with nginx (see nginx/llm-pod.conf.template):
- allowed: 204, no body, `X-LLM-Pod-Key-Id` and `X-LLM-Pod-Priority` (copied to the engine request
  and the access log with auth_request_set);
- denied: 401 or 403, no body (auth_request passes only those two through), with the status the
  client must get in `X-LLM-Pod-Status` (401, 403 or 429: auth_request would turn a 429 into a 500)
  and the OpenAI-shaped JSON body in `X-LLM-Pod-Error`; nginx answers with both.
- anything else (an exception, a timeout, the sidecar down) becomes a 500 in nginx, which answers 503:
  the auth path fails closed.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from aiohttp import web

from sidecar.admission import Admission
from sidecar.errors import error_json
from sidecar.keys import KeyEntry, StaticKeyStore
from sidecar.limits import Limiter
from sidecar.metrics import METRICS, Metrics
from sidecar.readiness import ENGINE
from sidecar.redis_conn import RedisGate, redis_client
from sidecar.redis_keys import RedisKeyStore, StoreUnavailable
from sidecar.request_end import InFlight, listen
from sidecar.settings import Settings
from sidecar.tokens import JwtVerifier, TokenRejected, looks_like_jwt

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Decision:
    status: int  # what the client gets: 200 for allowed, else 401/403/429
    outcome: str  # a metric label: allowed, missing, malformed, unknown, expired, disabled, ...
    key_id: str = ""
    priority: int = 0
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)

    @property
    def allowed(self) -> bool:
        return self.status == 200


def deny(status: int, outcome: str, message: str, key_id: str = "", **headers: str) -> Decision:
    return Decision(status, outcome, key_id=key_id, message=message, headers=dict(headers))


def bearer_token(header: str | None) -> str | None:
    """The credential from `Authorization: Bearer <token>`, or None when absent or malformed."""
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or any(c.isspace() for c in token) or len(token) > 8192:
        return None
    return token


class Authenticator:
    """Who is calling (static keys, Redis keys, JWTs) and whether they may, now (models, priority, limits)."""

    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        redis_client: aioredis.Redis | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        gate = RedisGate()  # one for the key store and the limits: one Redis, one verdict on it
        self.static = StaticKeyStore(settings.api_keys_file) if settings.api_keys_file else None
        self.redis = (
            RedisKeyStore(
                redis_client,
                settings.redis_prefix,
                settings.redis_cache_seconds,
                settings.redis_stale_seconds,
                gate,
            )
            if redis_client is not None
            else None
        )
        self.jwt = JwtVerifier(settings, metrics) if settings.jwt_enabled else None
        self.in_flight = InFlight(settings.lease_seconds)
        self.limiter = Limiter(
            metrics,
            redis_client,
            settings.redis_prefix,
            settings.lease_seconds,
            settings.default_rpm,
            settings.default_concurrency,
            gate,
        )
        self.admission = Admission(settings, metrics, self.in_flight)
        # Told when the engine completes a request (readiness: a busy engine is not a hung one).
        self.on_engine_answer: Callable[[], None] | None = None

    async def identify(self, token: str) -> KeyEntry | Decision:
        """The key entry behind a credential, or the denial. Raises StoreUnavailable (fail closed)."""
        if self.jwt is not None and looks_like_jwt(token):
            try:
                return await self.jwt.verify(token)
            except TokenRejected as err:
                return deny(401, "invalid_token", str(err))
        entry = self.static.lookup(token) if self.static is not None else None
        if entry is None and self.redis is not None:
            entry = await self.redis.lookup(token)
        if entry is None:
            return deny(401, "unknown", "Incorrect API key provided.")
        return entry

    async def decide(self, request: web.Request) -> Decision:
        header = request.headers.get("Authorization")
        if not header:
            return deny(
                401, "missing", "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
            )
        token = bearer_token(header)
        if token is None:
            return deny(401, "malformed", "The Authorization header must be 'Bearer <key>'.")
        found = await self.identify(token)
        if isinstance(found, Decision):
            return found
        entry = found
        if entry.expired():
            return deny(401, "expired", "This API key has expired.", key_id=entry.id)
        if entry.disabled:
            return deny(403, "disabled", "This API key has been disabled.", key_id=entry.id)
        if not entry.allows_model(self.settings.served_model):
            return deny(
                403,
                "model_not_allowed",
                f"This key may not use {self.settings.served_model}.",
                key_id=entry.id,
            )
        if self.admission.refuses(entry.priority):
            return deny(
                429,
                "overloaded",
                "The model is saturated and serves higher-priority keys first. Retry shortly.",
                key_id=entry.id,
                **{"Retry-After": "2"},
            )
        # The lease id is nginx's own $request_id, which no client can choose (X-Request-Id can be).
        request_id = request.headers.get("X-LLM-Pod-Lease") or uuid.uuid4().hex
        verdict = await self.limiter.admit(entry, request_id)
        if not verdict.allowed:
            self.metrics.rate_limited.labels(entry.id, verdict.limit).inc()
            what = "requests per minute" if verdict.limit == "rpm" else "concurrent requests"
            return deny(
                429,
                f"rate_limited_{verdict.limit}",
                f"Rate limit reached for {what} on this key.",
                key_id=entry.id,
                **(verdict.headers or {}),
            )
        self.in_flight.start(request_id)
        return Decision(200, "allowed", key_id=entry.id, priority=entry.priority)

    async def request_ended(self, key_id: str, request_id: str, engine_answered: bool = False) -> None:
        self.in_flight.end(request_id)
        if engine_answered and self.on_engine_answer is not None:
            self.on_engine_answer()
        await self.limiter.release(key_id, request_id)


AUTHENTICATOR = web.AppKey("authenticator", Authenticator)

_ERROR_TYPES = {401: "invalid_request_error", 403: "permission_error", 429: "rate_limit_exceeded"}
_ERROR_CODES = {401: "invalid_api_key", 403: "permission_denied", 429: "rate_limit_exceeded"}


def to_response(decision: Decision) -> web.Response:
    if decision.allowed:
        headers = {"X-LLM-Pod-Key-Id": decision.key_id, "X-LLM-Pod-Priority": str(decision.priority)}
        return web.Response(status=204, headers=headers)
    body = error_json(decision.message, _ERROR_TYPES[decision.status], _ERROR_CODES[decision.status])
    headers = {"X-LLM-Pod-Status": str(decision.status), "X-LLM-Pod-Error": body, **decision.headers}
    if decision.key_id:
        headers["X-LLM-Pod-Key-Id"] = decision.key_id
    # auth_request forwards 401 and 403 only; the real status travels in X-LLM-Pod-Status.
    return web.Response(status=401 if decision.status == 401 else 403, headers=headers)


async def auth_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    started = time.perf_counter()
    try:
        decision = await request.app[AUTHENTICATOR].decide(request)
    except StoreUnavailable as err:
        # Closed, never open: nginx turns this 500 into a 503 auth_unavailable for the client.
        metrics.auth_latency.observe(time.perf_counter() - started)  # a refusal's wait counts too
        metrics.auth_decisions.labels("store_unavailable").inc()
        logger.warning("refusing: %s", err, extra={"request_id": request.headers.get("X-Request-Id")})
        return web.Response(status=500)
    metrics.auth_latency.observe(time.perf_counter() - started)
    metrics.auth_decisions.labels(decision.outcome).inc()
    if decision.allowed:
        metrics.key_requests.labels(decision.key_id).inc()
    elif decision.key_id:
        metrics.key_denials.labels(decision.key_id, decision.outcome).inc()
    if not decision.allowed:
        # Ids and outcomes only: the credential itself never reaches a log line.
        logger.info(
            "denied",
            extra={
                "outcome": decision.outcome,
                "status": decision.status,
                "key_id": decision.key_id or None,
                "request_id": request.headers.get("X-Request-Id"),
            },
        )
    return to_response(decision)


def setup_auth(app: web.Application, settings: Settings) -> None:
    metrics = app[METRICS]

    async def auth_ctx(app: web.Application) -> AsyncIterator[None]:
        client = redis_client(settings) if settings.redis_url else None
        authenticator = Authenticator(settings, metrics, client)
        if ENGINE in app:
            authenticator.on_engine_answer = app[ENGINE].engine_answered
        app[AUTHENTICATOR] = authenticator
        transport = await listen("127.0.0.1", settings.request_end_port, authenticator.request_ended)
        poller = None
        if settings.engine_type == "vllm" and authenticator.admission.enabled:
            poller = asyncio.create_task(authenticator.admission.poll_vllm())
        yield
        if poller is not None:
            poller.cancel()
            await asyncio.gather(poller, return_exceptions=True)
        transport.close()
        if authenticator.jwt is not None:
            await authenticator.jwt.close()
        if client is not None:
            await client.aclose()

    app.cleanup_ctx.append(auth_ctx)
    app.router.add_get("/auth", auth_handler)
