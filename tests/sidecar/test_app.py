"""The sidecar's HTTP surface in-process (aiohttp test server), with engine answers it cannot get
from the real engine on demand (503 while loading, a different model) served by a test double."""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.app import create_app
from sidecar.auth import bearer_token
from sidecar.keys import add_key
from sidecar.logs import JsonFormatter, redact
from sidecar.metrics import METRICS
from sidecar.readiness import Probe, probe_engine
from sidecar.settings import Settings
from tests.harness import free_port


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, str]:
    path = tmp_path / "keys.yaml"
    return path, add_key(path, "alice", priority=7)


@pytest.fixture
async def client(keys: tuple[Path, str]) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    settings = Settings(
        served_model="m", api_keys_file=keys[0], engine_port=free_port(), ready_poll_fast=0.01
    )
    async with TestClient(TestServer(create_app(settings, handle_sigterm=False))) as c:
        yield c


async def test_allowed_is_bodyless_204_with_key_id_and_priority(
    client: TestClient, keys: tuple[Path, str]
) -> None:  # type: ignore[type-arg]
    resp = await client.get("/auth", headers={"Authorization": f"Bearer {keys[1]}"})
    assert resp.status == 204
    assert await resp.read() == b""
    assert resp.headers["X-LLM-Pod-Key-Id"] == "alice"
    assert resp.headers["X-LLM-Pod-Priority"] == "7"


@pytest.mark.parametrize(
    ("header", "outcome"),
    [(None, "missing"), ("Basic abc", "malformed"), ("Bearer sk-lp-nope", "unknown")],
)
async def test_denied_is_bodyless_401_with_the_client_error_in_headers(
    client: TestClient,
    header: str | None,
    outcome: str,  # type: ignore[type-arg]
) -> None:
    resp = await client.get("/auth", headers={"Authorization": header} if header else {})
    assert resp.status == 401
    assert await resp.read() == b""
    assert resp.headers["X-LLM-Pod-Status"] == "401"
    error = json.loads(resp.headers["X-LLM-Pod-Error"])["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_api_key"
    metrics = await (await client.get("/metrics")).text()
    assert f'llm_pod_auth_decisions_total{{outcome="{outcome}"}} 1.0' in metrics


def test_bearer_parsing() -> None:
    assert bearer_token("Bearer abc") == "abc"
    assert bearer_token("bearer  abc ") == "abc"
    for bad in (None, "", "Bearer", "Bearer a b", "Token abc", "Bearer " + "x" * 9000):
        assert bearer_token(bad) is None


async def test_healthz_is_the_sidecar_alone_and_readyz_waits_for_the_engine(client: TestClient) -> None:  # type: ignore[type-arg]
    assert (await client.get("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 503
    body = await resp.json()
    assert body["status"] == "loading"
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert client.app[METRICS].engine_ready._value.get() == 0


async def test_unknown_path_is_openai_shaped_404(client: TestClient) -> None:  # type: ignore[type-arg]
    resp = await client.get("/nope")
    assert resp.status == 404
    assert (await resp.json())["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("status", "payload", "expected"),
    [
        (200, {"data": [{"id": "m"}, {"id": "other"}]}, Probe.LISTED),
        (200, {"data": [{"id": "other"}]}, Probe.MISSING),
        (200, {"unexpected": True}, Probe.MISSING),
        (503, {"error": "loading"}, Probe.NOT_OK),
    ],
)
async def test_probe_reads_the_models_list(
    status: int, payload: dict[str, object], expected: Probe, keys: tuple[Path, str]
) -> None:
    # TEST DOUBLE of the engine's /v1/models: these answers cannot be asked of the real engine.
    async def models(_: web.Request) -> web.Response:
        return web.json_response(payload, status=status)

    app = web.Application()
    app.router.add_get("/v1/models", models)
    async with TestServer(app, host="127.0.0.1") as server:
        settings = Settings(served_model="m", api_keys_file=keys[0], engine_port=server.port or 0)
        async with aiohttp.ClientSession() as session:
            assert (await probe_engine(session, settings)).kind is expected


async def test_probe_of_a_closed_port_is_refused(keys: tuple[Path, str]) -> None:
    settings = Settings(served_model="m", api_keys_file=keys[0], engine_port=free_port())
    async with aiohttp.ClientSession() as session:
        assert (await probe_engine(session, settings)).kind is Probe.REFUSED


def test_log_lines_are_json_and_redact_credentials() -> None:
    record = logging.LogRecord("x", logging.INFO, "f", 1, "got %s", ("Bearer sk-lp-SECRETSECRET",), None)
    record.key_id = "alice"
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "got Bearer [redacted]"
    assert line["key_id"] == "alice"
    assert "SECRET" not in redact("token eyJhbGciOi.eyJzdWIiOiIx.c2lnbmF0dXJl and sk-lp-SECRETSECRET")
