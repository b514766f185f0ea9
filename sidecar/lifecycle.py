"""Shutdown: on SIGTERM readiness turns false at once, and the process exits after the drain period.

In Kubernetes the endpoint is removed while nginx still serves the streams already in flight.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.web_runner import GracefulExit

from sidecar.readiness import ENGINE
from sidecar.settings import Settings

logger = logging.getLogger(__name__)


def _exit() -> None:
    # GracefulExit is how aiohttp's own signal handling stops run_app: it leaves run_forever and
    # runs every cleanup context.
    raise GracefulExit


def setup_lifecycle(app: web.Application, settings: Settings) -> None:
    async def sigterm_ctx(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        draining = False

        def on_sigterm() -> None:
            nonlocal draining
            if draining:
                return
            draining = True
            app[ENGINE].drain()
            logger.info("SIGTERM: not ready; exiting in %.1f s", settings.drain_seconds)
            loop.call_later(settings.drain_seconds, _exit)

        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
        yield
        loop.remove_signal_handler(signal.SIGTERM)

    app.cleanup_ctx.append(sigterm_ctx)
