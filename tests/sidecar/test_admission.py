"""Priority admission with vLLM's queue as the load.

vLLM cannot run here (it needs a GPU), so its `/metrics` is a TEST DOUBLE: a small aiohttp server on
loopback whose body the test sets, including bodies a broken or half-started engine could send.
The sidecar side is real: the `Admission` poller, and the whole app's `/auth`."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from sidecar.admission import Admission
from sidecar.app import create_app
from sidecar.keys import add_key
from sidecar.metrics import Metrics
from sidecar.request_end import InFlight
from sidecar.settings import Settings
from tests.harness import eventually, free_port

SATURATION = 3  # LLM_POD_SATURATION_QUEUE in these tests
MIN_PRIORITY = 5  # LLM_POD_PRIORITY_MIN_UNDER_LOAD


def vllm_metrics(waiting: float) -> bytes:
    return (
        "# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
        "# TYPE vllm:num_requests_waiting gauge\n"
        f'vllm:num_requests_waiting{{model_name="m"}} {waiting}\n'
        'vllm:num_requests_running{model_name="m"} 8.0\n'
    ).encode()


class FakeVllmMetrics:
    """TEST DOUBLE of vLLM's `/metrics`: serves `body`, and counts the requests it answered."""

    def __init__(self) -> None:
        self.body = vllm_metrics(0)
        self.served = 0
        self.server: TestServer | None = None

    async def handler(self, request: web.Request) -> web.Response:
        self.served += 1
        return web.Response(body=self.body, content_type="text/plain", charset="utf-8")

    @property
    def port(self) -> int:
        assert self.server is not None
        assert self.server.port is not None
        return self.server.port


@pytest.fixture
async def vllm() -> AsyncIterator[FakeVllmMetrics]:
    fake = FakeVllmMetrics()
    app = web.Application()
    app.router.add_get("/metrics", fake.handler)
    fake.server = TestServer(app, host="127.0.0.1")
    await fake.server.start_server()
    yield fake
    await fake.server.close()


@pytest.fixture
def keys(tmp_path: Path) -> tuple[Path, str, str]:
    path = tmp_path / "keys.yaml"
    low = add_key(path, "batch", priority=1)
    high = add_key(path, "interactive", priority=9)
    return path, low, high


def settings_for(vllm: FakeVllmMetrics, keys_file: Path) -> Settings:
    return Settings(
        served_model="m",
        api_keys_file=keys_file,
        engine_port=vllm.port,
        request_end_port=free_port(),
        engine_type="vllm",
        saturation_queue=SATURATION,
        priority_min_under_load=MIN_PRIORITY,
    )


@pytest.fixture
async def admission(
    vllm: FakeVllmMetrics, keys: tuple[Path, str, str]
) -> AsyncIterator[tuple[Admission, asyncio.Task[None]]]:
    adm = Admission(settings_for(vllm, keys[0]), Metrics(), InFlight(60))
    poller = asyncio.create_task(adm.poll_vllm(interval=0.01))
    yield adm, poller
    poller.cancel()
    await asyncio.gather(poller, return_exceptions=True)


async def polled(vllm: FakeVllmMetrics, times: int = 3) -> None:
    """Wait until the poller has read the current body at least `times` more times."""
    target = vllm.served + times
    await eventually(lambda: vllm.served >= target, what=f"{times} more polls")


async def test_a_full_queue_refuses_low_priority_and_admits_high(
    vllm: FakeVllmMetrics, admission: tuple[Admission, asyncio.Task[None]]
) -> None:
    adm, _ = admission
    vllm.body = vllm_metrics(SATURATION + 1)
    await eventually(lambda: adm.engine_waiting == SATURATION + 1, what="the queue read")
    assert adm.refuses(1)
    assert not adm.refuses(MIN_PRIORITY)
    vllm.body = vllm_metrics(SATURATION - 1)
    await eventually(lambda: adm.engine_waiting == SATURATION - 1, what="the queue to drain")
    assert not adm.refuses(1)


GARBAGE = {
    "a number that does not parse": b"vllm:num_requests_waiting 1..2\n",  # ValueError in float()
    "bytes that are not UTF-8": b"vllm:num_requests_waiting 7\n\xff\xfe\n",  # UnicodeDecodeError
    "no queue metric": b"# an engine still starting\n",
}


@pytest.mark.parametrize("case", sorted(GARBAGE))
async def test_garbage_metrics_are_no_load_and_the_poller_lives_on(
    vllm: FakeVllmMetrics,
    admission: tuple[Admission, asyncio.Task[None]],
    case: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="sidecar.admission")
    adm, poller = admission
    vllm.body = vllm_metrics(SATURATION + 5)
    await eventually(lambda: adm.refuses(1), what="saturation")
    vllm.body = GARBAGE[case]
    await eventually(lambda: adm.engine_waiting == 0, what="the load reset to 0")
    await polled(vllm, 20)  # a failure streak of 20 polls...
    assert not adm.refuses(1)  # unknown load is not saturation
    assert not poller.done(), "the poller must survive a bad body"
    failures = [r for r in caplog.records if "failed" in r.getMessage()]
    assert len(failures) == 1, [r.getMessage() for r in failures]  # ... is logged once
    vllm.body = vllm_metrics(SATURATION + 1)  # good metrics again: the poller recovers
    await eventually(lambda: adm.engine_waiting == SATURATION + 1, what="the recovery")
    assert adm.refuses(1)
    assert any("again" in r.getMessage() for r in caplog.records)


async def test_through_auth_low_priority_gets_429_and_high_priority_passes(
    vllm: FakeVllmMetrics, keys: tuple[Path, str, str]
) -> None:
    """The whole app: the poller started by `setup_auth`, the decision at `/auth`."""
    path, low, high = keys
    app = create_app(settings_for(vllm, path), handle_sigterm=False)
    async with TestClient(TestServer(app)) as client:

        async def status(key: str) -> tuple[int, dict[str, str]]:
            resp = await client.get("/auth", headers={"Authorization": f"Bearer {key}"})
            return resp.status, dict(resp.headers)

        vllm.body = vllm_metrics(SATURATION)
        await polled(vllm, 2)  # read at least once after the body changed (every 0.5 s)
        code, headers = await status(low)
        assert (code, headers.get("X-LLM-Pod-Status")) == (403, "429"), headers  # a 429 in a 403
        assert headers["Retry-After"] == "2"
        assert json.loads(headers["X-LLM-Pod-Error"])["error"]["code"] == "rate_limit_exceeded"
        assert (await status(high))[0] == 204
        vllm.body = b"vllm:num_requests_waiting 1..2\n"
        await polled(vllm, 2)
        assert (await status(low))[0] == 204  # unreadable load: admitted
