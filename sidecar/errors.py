"""The OpenAI error shape, and the one middleware that turns every failure into it."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_TYPES = {
    400: "invalid_request_error",
    401: "invalid_request_error",
    403: "permission_error",
    404: "invalid_request_error",
    405: "invalid_request_error",
    429: "rate_limit_exceeded",
    503: "service_unavailable",
}


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_json(message: str, type_: str, code: str | None = None) -> str:
    # ASCII-only so the same text can travel in an HTTP header to nginx.
    return json.dumps(error_body(message, type_, code), ensure_ascii=True, separators=(",", ":"))


def error_response(
    status: int, message: str, code: str | None = None, extra: dict[str, Any] | None = None
) -> web.Response:
    body = error_body(message, _TYPES.get(status, "api_error"), code)
    body.update(extra or {})
    return web.json_response(body, status=status)


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, exc.reason or "request failed", code=None)
    except Exception:
        logger.exception("unhandled error in %s %s", request.method, request.path)
        return error_response(500, "internal error in the llm-pod sidecar", code="internal_error")


def setup_errors(app: web.Application) -> None:
    app.middlewares.append(openai_errors)
