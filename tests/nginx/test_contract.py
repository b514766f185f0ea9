"""nginx <-> sidecar contract with the real nginx and the real sidecar, and a header-echoing test
double in the engine's place (see echo_engine.py for why)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import openai
import pytest

from localpod.render import TEMPLATE, render, with_defaults
from sidecar.keys import KeyEntry, hash_key, write_key_file
from tests.conftest import Pod, start_echo_pod, stop_pod
from tests.harness import require_tool, wait_until


@pytest.fixture(scope="module")
def echo_pod(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    pod = start_echo_pod(tmp_path_factory.mktemp("echo-pod"))
    yield pod
    stop_pod(pod)


def forwarded(pod: Pod, path: str = "/v1/models", **headers: str) -> dict[str, object]:
    resp = httpx.get(pod.base + path, headers={"Authorization": f"Bearer {pod.key}", **headers})
    assert resp.status_code == 200, resp.text
    return dict(resp.json())


def test_engine_gets_key_id_and_priority_never_the_credential(echo_pod: Pod) -> None:
    seen = forwarded(echo_pod)["headers"]
    assert isinstance(seen, dict)
    lowered = {k.lower(): v for k, v in seen.items()}
    assert lowered["x-llm-pod-key-id"] == "tester"
    assert lowered["x-llm-pod-priority"] == "5"
    assert "authorization" not in lowered
    assert echo_pod.key not in str(seen)
    assert len(lowered["x-request-id"]) == 32


def test_client_sent_internal_headers_are_replaced(echo_pod: Pod) -> None:
    seen = forwarded(
        echo_pod,
        **{
            "X-LLM-Pod-Key-Id": "admin",
            "X-LLM-Pod-Priority": "999",
            "X-LLM-Pod-Status": "200",
            "X-LLM-Pod-Error": "x",
        },
    )["headers"]
    assert isinstance(seen, dict)
    lowered = {k.lower(): v for k, v in seen.items()}
    assert lowered["x-llm-pod-key-id"] == "tester"
    assert lowered["x-llm-pod-priority"] == "5"
    assert "x-llm-pod-status" not in lowered
    assert "x-llm-pod-error" not in lowered


def test_model_prefix_is_stripped_and_query_kept(echo_pod: Pod) -> None:
    assert (
        forwarded(echo_pod, f"/{echo_pod.model}/v1/chat/completions?x=1")["path"]
        == "/v1/chat/completions?x=1"
    )
    assert forwarded(echo_pod, "/v1/embeddings")["path"] == "/v1/embeddings"


def test_disabled_and_expired_keys(echo_pod: Pod) -> None:
    disabled, expired = "sk-lp-disabled-key-for-test", "sk-lp-expired-key-for-test"
    write_key_file(
        echo_pod.keys_file,
        [
            KeyEntry("tester", hash_key(echo_pod.key), priority=5),
            KeyEntry("off", hash_key(disabled), disabled=True),
            KeyEntry("old", hash_key(expired), expires=datetime(2020, 1, 1, tzinfo=UTC)),
        ],
    )

    def status(key: str) -> int:
        return httpx.get(echo_pod.base + "/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code

    # The sidecar re-reads a changed keys file within its check interval (1 s).
    wait_until(lambda: status(disabled) == 403, 5, 0.05, "the disabled key to be refused with 403")
    resp = httpx.get(echo_pod.base + "/v1/models", headers={"Authorization": f"Bearer {disabled}"})
    assert resp.json()["error"]["type"] == "permission_error"
    assert status(expired) == 401
    assert (
        "expired"
        in httpx.get(echo_pod.base + "/v1/models", headers={"Authorization": f"Bearer {expired}"}).json()[
            "error"
        ]["message"]
    )
    assert status(echo_pod.key) == 200


def test_template_renders_the_same_with_envsubst(echo_pod: Pod, tmp_path: Path) -> None:
    """The image renders the template with envsubst; make run and the tests with localpod.render."""
    require_tool("envsubst")
    text = TEMPLATE.read_text()
    env = with_defaults({k: v for k, v in echo_pod.env.items() if k.startswith("LLM_POD_")})
    names = " ".join(f"${{{k}}}" for k in sorted(env))
    by_envsubst = subprocess.run(
        [shutil.which("envsubst") or "envsubst", names],
        input=text,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert by_envsubst == render(text, env)
    conf = tmp_path / "llm-pod.conf"
    conf.write_text(by_envsubst)
    check = subprocess.run(
        [require_tool("nginx"), "-t", "-p", str(tmp_path), "-c", str(conf)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert check.returncode == 0, check.stderr


def test_a_missing_key_is_an_authentication_error_in_the_openai_client(echo_pod: Pod) -> None:
    def drop_credential(request: httpx.Request) -> None:
        del request.headers["Authorization"]

    with (
        httpx.Client(event_hooks={"request": [drop_credential]}) as http,
        openai.OpenAI(
            base_url=echo_pod.base + "/v1", api_key="unused", http_client=http, max_retries=0
        ) as client,
        pytest.raises(openai.AuthenticationError) as caught,
    ):
        client.models.list()
    body = caught.value.response.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["code"] == "invalid_api_key"
    assert "didn't provide an API key" in body["error"]["message"]


@pytest.mark.parametrize(
    ("headers", "path", "status", "code"),
    [
        ({"X-Big": "x" * 9000}, "/v1/models", 400, "bad_request"),  # over large_client_header_buffers
        ({}, "/v1/models?" + "q" * 9000, 414, "uri_too_long"),
    ],
)
def test_requests_nginx_cannot_take_get_json_errors(
    echo_pod: Pod, headers: dict[str, str], path: str, status: int, code: str
) -> None:
    resp = httpx.get(echo_pod.base + path, headers={"Authorization": f"Bearer {echo_pod.key}", **headers})
    assert resp.status_code == status
    assert resp.headers["content-type"].startswith("application/json")
    assert resp.json()["error"]["code"] == code


def test_a_silent_engine_is_a_504_json_error(tmp_path: Path) -> None:
    pod = start_echo_pod(tmp_path, {"LLM_POD_PROXY_READ_TIMEOUT": "1s"})
    try:
        resp = httpx.get(
            pod.base + "/v1/models?sleep=3", headers={"Authorization": f"Bearer {pod.key}"}, timeout=10
        )
        assert resp.status_code == 504
        error = resp.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "engine_timeout"
        assert "1s" in error["message"]
    finally:
        stop_pod(pod)


def test_a_malformed_request_line_gets_a_json_400(echo_pod: Pod) -> None:
    with socket.create_connection(("127.0.0.1", echo_pod.ports.listen), timeout=5) as sock:
        sock.sendall(b"NOT AN HTTP REQUEST\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400")
    assert json.loads(body)["error"]["code"] == "bad_request"
