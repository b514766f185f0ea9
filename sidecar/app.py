"""Compose the sidecar: each concern adds its routes and resources through `setup_<concern>`."""

from __future__ import annotations

from aiohttp import web

from sidecar.auth import setup_auth
from sidecar.errors import setup_errors
from sidecar.lifecycle import setup_lifecycle
from sidecar.metrics import setup_metrics
from sidecar.readiness import setup_readiness
from sidecar.settings import Settings

SETTINGS = web.AppKey("settings", Settings)


def create_app(settings: Settings, *, handle_sigterm: bool = True) -> web.Application:
    app = web.Application()
    app[SETTINGS] = settings
    setup_errors(app)
    setup_metrics(app, settings.nginx_status_url)
    setup_readiness(app, settings)
    setup_auth(app, settings)
    if handle_sigterm:
        setup_lifecycle(app, settings)
    return app
