"""The whole pod through its front door: real llama-cpp-python engine with the bundled Gemma 3 270M,
the real sidecar and the real nginx, on free loopback ports."""

from __future__ import annotations

import itertools
import json
import re
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.conftest import Pod, http_get

PROMPT = [{"role": "user", "content": "Count from 1 to 40, separated by spaces."}]


_CLIENTS: list[openai.OpenAI] = []


@pytest.fixture(autouse=True, scope="module")
def _close_clients() -> Iterator[None]:
    yield
    while _CLIENTS:
        _CLIENTS.pop().close()


def client(pod: Pod, key: str | None = None, prefix: str = "") -> openai.OpenAI:
    """An openai client for this pod; closed when the module's tests are done."""
    made = openai.OpenAI(base_url=f"{pod.base}{prefix}/v1", api_key=key or pod.key, max_retries=0, timeout=60)
    _CLIENTS.append(made)
    return made


def assert_openai_error(body: bytes | object, code: str | None = None) -> dict[str, object]:
    payload = json.loads(body) if isinstance(body, bytes | str) else body
    assert isinstance(payload, dict), payload
    error = payload["error"]
    assert set(error) >= {"message", "type", "param", "code"}, error
    assert error["message"]
    if code is not None:
        assert error["code"] == code, error
    return error


def test_chat_completion_with_a_valid_key(pod: Pod) -> None:
    reply = client(pod).chat.completions.create(
        model=pod.model, messages=PROMPT, max_tokens=24, temperature=0
    )
    assert reply.choices[0].message.content, reply
    assert reply.choices[0].message.content.strip()


def test_streamed_chat_completion(pod: Pod) -> None:
    stream = client(pod).chat.completions.create(
        model=pod.model, messages=PROMPT, max_tokens=24, temperature=0, stream=True
    )
    parts = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in parts if p]) > 3, parts
    assert "".join(parts).strip()


def test_wrong_key_is_an_authentication_error(pod: Pod) -> None:
    with pytest.raises(openai.AuthenticationError) as caught:
        client(pod, key="sk-lp-not-a-real-key").chat.completions.create(
            model=pod.model, messages=PROMPT, max_tokens=4
        )
    assert caught.value.status_code == 401
    assert_openai_error(caught.value.response.content, "invalid_api_key")


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Bearer a b"])
def test_malformed_authorization_is_401_json(pod: Pod, header: str) -> None:
    resp = httpx.get(f"{pod.base}/v1/models", headers={"Authorization": header})
    assert resp.status_code == 401
    assert_openai_error(resp.content, "invalid_api_key")


def test_missing_key_is_401_json(pod: Pod) -> None:
    resp = httpx.post(f"{pod.base}/v1/chat/completions", json={"model": pod.model, "messages": PROMPT})
    assert resp.status_code == 401
    assert resp.headers["content-type"].startswith("application/json")
    error = assert_openai_error(resp.content, "invalid_api_key")
    assert "didn't provide an API key" in str(error["message"])


def test_model_path_prefix_routes(pod: Pod) -> None:
    routed = client(pod, prefix=f"/{pod.model}")
    assert [m.id for m in routed.models.list()] == [pod.model]
    reply = routed.chat.completions.create(model=pod.model, messages=PROMPT, max_tokens=8, temperature=0)
    assert reply.choices[0].message.content


def test_unknown_prefix_is_404_json(pod: Pod) -> None:
    resp = httpx.get(f"{pod.base}/some-other-model/v1/models", headers={"Authorization": f"Bearer {pod.key}"})
    assert resp.status_code == 404
    assert resp.headers["content-type"].startswith("application/json")
    assert_openai_error(resp.content, "not_found")


def test_too_large_body_is_413_json(pod: Pod) -> None:
    body = b'{"model":"x","messages":[{"role":"user","content":"' + b"a" * (17 * 1024 * 1024) + b'"}]}'
    resp = httpx.post(
        f"{pod.base}/v1/chat/completions",
        content=body,
        headers={"Authorization": f"Bearer {pod.key}", "Content-Type": "application/json"},
    )
    assert resp.status_code == 413
    assert_openai_error(resp.content, "request_too_large")


def listening_addresses(port: int) -> set[str]:
    """Local addresses with a listening TCP socket on `port`, read from the kernel's tables."""
    found: set[str] = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            addr, port_hex = fields[1].split(":")
            if fields[3] == "0A" and int(port_hex, 16) == port and len(addr) == width:
                found.add(addr)
    return found


def test_engine_and_sidecar_listen_on_loopback_only(pod: Pod) -> None:
    loopback = "0100007F"  # 127.0.0.1, little-endian hex as the kernel prints it
    assert listening_addresses(pod.ports.engine) == {loopback}
    assert listening_addresses(pod.ports.sidecar) == {loopback}
    # ... while nginx, the door, listens on every address.
    assert listening_addresses(pod.ports.listen) == {"00000000"}


def test_request_id_is_propagated_and_logged_with_the_key_id(pod: Pod) -> None:
    rid = str(uuid.uuid4())
    resp = httpx.get(
        f"{pod.base}/v1/models", headers={"Authorization": f"Bearer {pod.key}", "X-Request-Id": rid}
    )
    assert resp.status_code == 200
    assert resp.headers["x-request-id"] == rid
    for sent in (None, "not a uuid; replaced"):
        headers = {"Authorization": f"Bearer {pod.key}", **({"X-Request-Id": sent} if sent else {})}
        generated = httpx.get(f"{pod.base}/v1/models", headers=headers)
        assert generated.status_code == 200
        assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    line = next(
        json.loads(raw)
        for raw in pod.procs["nginx"].output().splitlines()
        if rid in raw and raw.startswith("{")
    )
    assert line["key_id"] == "tester"
    assert line["status"] == 200
    assert line["path"] == "/v1/models"


def test_metrics_port_serves_sidecar_metrics(pod: Pod) -> None:
    assert (
        httpx.get(pod.base + "/v1/models", headers={"Authorization": f"Bearer {pod.key}"}).status_code == 200
    )
    status, _, body = http_get(f"http://127.0.0.1:{pod.ports.metrics}/metrics")
    text = body.decode()
    assert status == 200
    assert "llm_pod_engine_ready 1.0" in text
    assert 'llm_pod_auth_decisions_total{outcome="allowed"}' in text
    assert "llm_pod_auth_latency_seconds_bucket" in text
    cold = next(line for line in text.splitlines() if line.startswith("llm_pod_cold_start_seconds "))
    assert float(cold.split()[1]) > 0
    # nginx's stub_status, read by the sidecar at scrape time: this very scrape is one active connection.
    assert "llm_pod_nginx_up 1.0" in text
    active = next(
        line for line in text.splitlines() if line.startswith('llm_pod_nginx_connections{state="active"}')
    )
    assert float(active.split()[1]) >= 1
    handled = next(line for line in text.splitlines() if line.startswith("llm_pod_nginx_requests "))
    assert float(handled.split()[1]) >= 1
    status, _, body = http_get(f"http://127.0.0.1:{pod.ports.metrics}/nginx_status")
    assert status == 200
    assert b"Active connections" in body


def first_chunk_and_arrivals(
    url: str, headers: dict[str, str], model: str, max_tokens: int
) -> tuple[float, list[float]]:
    """Seconds to the first streamed event, and each event's arrival time, measured from the send."""
    body = {"model": model, "messages": PROMPT, "max_tokens": max_tokens, "temperature": 0, "stream": True}
    arrivals: list[float] = []
    started = time.perf_counter()
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as resp:
        assert resp.status_code == 200, resp.read()
        for line in resp.iter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                arrivals.append(time.perf_counter() - started)
    assert arrivals, "no events"
    return arrivals[0], arrivals


def test_streaming_is_not_buffered(pod: Pod) -> None:
    via_nginx, direct = [], []
    auth = {"Authorization": f"Bearer {pod.key}"}
    for _ in range(5):  # interleaved, so drift in machine load hits both sides alike
        via_nginx.append(first_chunk_and_arrivals(f"{pod.base}/v1/chat/completions", auth, pod.model, 4)[0])
        engine = f"http://127.0.0.1:{pod.ports.engine}/v1/chat/completions"
        direct.append(first_chunk_and_arrivals(engine, {}, pod.model, 4)[0])
    delta = statistics.median(via_nginx) - statistics.median(direct)
    print(
        f"first-chunk median: nginx {statistics.median(via_nginx) * 1000:.1f} ms, "
        f"direct {statistics.median(direct) * 1000:.1f} ms, delta {delta * 1000:.1f} ms"
    )
    assert delta < 0.050

    # Chunks arrive spread over the generation, not in one burst at the end.
    first, arrivals = first_chunk_and_arrivals(f"{pod.base}/v1/chat/completions", auth, pod.model, 48)
    assert len(arrivals) >= 10, arrivals
    span = arrivals[-1] - first
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert span > 0.1, arrivals
    # The first event arrives in the first half of the answer's time, not with the rest at its end.
    assert first < 0.5 * arrivals[-1], arrivals
    # In a buffered response most events land together; here most are separated by decode steps.
    assert sum(1 for g in gaps if g > 0.002) >= len(gaps) // 2, gaps


def test_no_key_in_any_log_line(pod: Pod) -> None:
    client(pod).models.list()
    with pytest.raises(openai.AuthenticationError):
        client(pod, key="sk-lp-leaked-wrong-key-123456").models.list()
    logs = pod.logs()
    assert pod.key not in logs
    assert "sk-lp-leaked-wrong-key-123456" not in logs
    assert "Bearer" not in logs
