"""TEST DOUBLE standing in for the engine, only to show what nginx forwards to it.

The real engine (tests/e2e) cannot tell us which headers reached it; this one echoes the method,
path and headers of every request as JSON; `?sleep=S` holds the answer S seconds (a long request).
Run: python -m tests.nginx.echo_engine PORT
"""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web


async def echo(request: web.Request) -> web.Response:
    await asyncio.sleep(float(request.query.get("sleep", "0")))
    return web.json_response(
        {"method": request.method, "path": request.path_qs, "headers": dict(request.headers)}
    )


def main() -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", echo)
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None)


if __name__ == "__main__":
    main()
