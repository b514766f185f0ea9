"""Prometheus metrics of the pod as the sidecar sees it, on a registry of the app's own.

nginx's own counters (stub_status, plain text) are read at scrape time and exported here too, so
one scrape of `/metrics` covers the sidecar and nginx; the engine's are at `/engine/metrics`.
"""

from __future__ import annotations

import logging
import re

import aiohttp
from aiohttp import web
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.engine_ready = Gauge(
            "llm_pod_engine_ready",
            "1 while the engine lists the served model in /v1/models",
            registry=self.registry,
        )
        self.cold_start = Gauge(
            "llm_pod_cold_start_seconds",
            "Seconds from sidecar start to the first time the engine listed the model (the pod's cold start)",
            registry=self.registry,
        )
        self.readiness_state = Gauge(
            "llm_pod_readiness_state",
            "1 for the readiness state the pod is in",
            ["state"],
            registry=self.registry,
        )
        self.engine_probe_timeouts = Counter(
            "llm_pod_engine_probe_timeouts",
            "Engine probes that timed out on an open connection (a busy engine, not a dead one)",
            registry=self.registry,
        )
        self.auth_decisions = Counter(
            "llm_pod_auth_decisions", "Auth decisions by outcome", ["outcome"], registry=self.registry
        )
        self.auth_latency = Histogram(
            "llm_pod_auth_latency_seconds",
            "Time the sidecar took to decide one auth request",
            buckets=(0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=self.registry,
        )
        self.key_requests = Counter(
            "llm_pod_key_requests", "Requests let through, by key id", ["key_id"], registry=self.registry
        )
        self.key_denials = Counter(
            "llm_pod_key_denials",
            "Requests refused for a known key id, by reason",
            ["key_id", "reason"],
            registry=self.registry,
        )
        self.rate_limited = Counter(
            "llm_pod_rate_limited",
            "Requests refused by a per-key limit",
            ["key_id", "limit"],
            registry=self.registry,
        )
        self.rate_limit_fallback = Gauge(
            "llm_pod_rate_limit_fallback",
            "1 while Redis is unreachable and limits are enforced per replica only",
            registry=self.registry,
        )
        self.jwks_fetches = Counter(
            "llm_pod_jwks_fetches", "JWKS fetches by result", ["result"], registry=self.registry
        )
        self.nginx_connections = Gauge(
            "llm_pod_nginx_connections",
            "nginx client connections by state (stub_status)",
            ["state"],
            registry=self.registry,
        )
        self.nginx_requests = Gauge(
            "llm_pod_nginx_requests",
            "Requests nginx has handled since it started (stub_status)",
            registry=self.registry,
        )
        self.nginx_up = Gauge(
            "llm_pod_nginx_up", "1 when nginx's stub_status answered this scrape", registry=self.registry
        )
        self.engine_waiting = Gauge(
            "llm_pod_engine_requests_waiting", "Requests waiting in the engine (vLLM)", registry=self.registry
        )


METRICS = web.AppKey("metrics", Metrics)
NGINX_STATUS_URL = web.AppKey("nginx_status_url", str)

logger = logging.getLogger(__name__)
STUB_STATUS = re.compile(
    r"Active connections:\s*(\d+).*?\n\s*(\d+)\s+(\d+)\s+(\d+)"
    r".*?Reading:\s*(\d+)\s+Writing:\s*(\d+)\s+Waiting:\s*(\d+)",
    re.S,
)


def read_stub_status(metrics: Metrics, text: str) -> bool:
    match = STUB_STATUS.search(text)
    if match is None:
        return False
    active, _accepts, _handled, requests, reading, writing, waiting = (int(g) for g in match.groups())
    metrics.nginx_connections.labels("active").set(active)
    metrics.nginx_connections.labels("reading").set(reading)
    metrics.nginx_connections.labels("writing").set(writing)
    metrics.nginx_connections.labels("waiting").set(waiting)
    metrics.nginx_requests.set(requests)
    return True


async def metrics_handler(request: web.Request) -> web.Response:
    metrics = request.app[METRICS]
    url = request.app.get(NGINX_STATUS_URL, "")
    if url:
        up = False
        try:
            timeout = aiohttp.ClientTimeout(total=0.5)
            async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as resp:
                up = resp.status == 200 and read_stub_status(metrics, await resp.text())
        except (aiohttp.ClientError, TimeoutError) as err:
            logger.debug("nginx stub_status unreadable: %s", err)
        metrics.nginx_up.set(1 if up else 0)
    body = generate_latest(metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def setup_metrics(app: web.Application, nginx_status_url: str = "") -> Metrics:
    metrics = Metrics()
    app[METRICS] = metrics
    app[NGINX_STATUS_URL] = nginx_status_url
    app.router.add_get("/metrics", metrics_handler)
    return metrics
