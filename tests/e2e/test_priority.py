"""Priority admission with the real engine kept busy: low-priority keys are refused first (429 with
Retry-After) while a high-priority key still gets answers."""

from __future__ import annotations

import threading
from pathlib import Path

import openai

from sidecar.keys import add_key
from tests.conftest import http_get, start_pod, stop_pod
from tests.harness import wait_until


def test_low_priority_is_refused_first_while_the_engine_is_saturated(
    tmp_path: Path, model_path: Path
) -> None:
    # Saturated = one request in flight (llama.cpp runs one at a time); keys below priority 5 wait.
    env = {"LLM_POD_SATURATION_QUEUE": "1", "LLM_POD_PRIORITY_MIN_UNDER_LOAD": "5"}
    pod = start_pod(tmp_path, model_path, ("engine", "sidecar", "nginx"), extra_env=env)
    low = add_key(pod.keys_file, "batch-job", priority=1)
    made: list[openai.OpenAI] = []
    try:
        wait_until(lambda: http_get(pod.base + "/ready")[0] == 200, 120, 0.1, "the pod to be ready")

        def client(key: str) -> openai.OpenAI:
            made.append(openai.OpenAI(base_url=pod.base + "/v1", api_key=key, max_retries=0, timeout=120))
            return made[-1]

        messages = [{"role": "user", "content": "Tell me a long story about the sea."}]
        # Idle engine: the low-priority key is served (after the keys file reload, at most 1 s).
        wait_until(
            lambda: http_get(pod.base + "/healthz")[0] == 200 and _served(client(low), pod.model),
            10,
            0.2,
            "low key",
        )

        # A high-priority stream keeps the engine busy.
        first_chunk = threading.Event()
        streamed: list[str] = []

        def hold() -> None:
            stream = client(pod.key).chat.completions.create(
                model=pod.model,
                messages=messages,
                max_tokens=120,
                stream=True,  # type: ignore[arg-type]
            )
            for chunk in stream:
                first_chunk.set()
                streamed.append(chunk.choices[0].delta.content or "" if chunk.choices else "")

        holder = threading.Thread(target=hold)
        holder.start()
        assert first_chunk.wait(60)
        try:
            refused = None
            try:
                client(low).chat.completions.create(model=pod.model, messages=messages, max_tokens=4)  # type: ignore[arg-type]
            except openai.RateLimitError as err:
                refused = err
            assert refused is not None, "the low-priority key was served while the engine was saturated"
            assert refused.status_code == 429
            assert int(refused.response.headers["retry-after"]) >= 1
            assert refused.response.json()["error"]["code"] == "rate_limit_exceeded"
            # The high-priority key still gets an answer (queued behind the stream in the engine).
            reply = client(pod.key).chat.completions.create(model=pod.model, messages=messages, max_tokens=4)  # type: ignore[arg-type]
            assert reply.choices[0].message.content is not None
        finally:
            holder.join(120)
        assert "".join(streamed)
        # The stream ended and nginx said so: the low-priority key is served again.
        wait_until(lambda: _served(client(low), pod.model), 5, 0.2, "low key after the load")
        metrics = http_get(f"http://127.0.0.1:{pod.ports.metrics}/metrics")[2].decode()
        assert 'llm_pod_key_denials_total{key_id="batch-job",reason="overloaded"} 1.0' in metrics
    finally:
        for opened in made:
            opened.close()
        stop_pod(pod)


def _served(client: openai.OpenAI, model: str) -> bool:
    try:
        client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=2
        )
    except openai.APIStatusError:
        return False
    return True
