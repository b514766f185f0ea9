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

import logging
import time
from dataclasses import dataclass, field

from aiohttp import web

from sidecar.errors import error_json
from sidecar.keys import StaticKeyStore
from sidecar.metrics import METRICS
from sidecar.settings import Settings

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
    def __init__(self, settings: Settings) -> None:
        if settings.api_keys_file is None:  # Settings refuses this; kept as a guard for direct use
            raise ValueError("no credential source")
        self.static = StaticKeyStore(settings.api_keys_file)

    async def decide(self, request: web.Request) -> Decision:
        header = request.headers.get("Authorization")
        if not header:
            return deny(401, "missing", "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.")
        token = bearer_token(header)
        if token is None:
            return deny(401, "malformed", "The Authorization header must be 'Bearer <key>'.")
        entry = self.static.lookup(token)
        if entry is None:
            return deny(401, "unknown", "Incorrect API key provided.")
        if entry.expired():
            return deny(401, "expired", "This API key has expired.", key_id=entry.id)
        if entry.disabled:
            return deny(403, "disabled", "This API key has been disabled.", key_id=entry.id)
        return Decision(200, "allowed", key_id=entry.id, priority=entry.priority)


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
    decision = await request.app[AUTHENTICATOR].decide(request)
    metrics.auth_latency.observe(time.perf_counter() - started)
    metrics.auth_decisions.labels(decision.outcome).inc()
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
    app[AUTHENTICATOR] = Authenticator(settings)
    app.router.add_get("/auth", auth_handler)
