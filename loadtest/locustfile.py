"""Load an llm-pod (or any OpenAI-compatible endpoint) through its front door with Locust.

    LLM_POD_API_KEY=sk-lp-... locust -f loadtest/locustfile.py --config loadtest/locust.conf \
        --host http://127.0.0.1:8080

Each user sends chat completions, three streamed for one not, with bounded max_tokens. Besides
Locust's own request rows, streamed calls report two rows of their own: "TTFT" (time to the first
token) and "tokens/s" (decode rate after the first token, reported as its value in the response-time
column). 401, 429 and 503 answers are failures named by their code, so the statistics tell a refused
request from a slow one.

Settings (environment): LLM_POD_API_KEY (or several, comma-separated, cycled over users),
LLM_POD_MODEL (default gemma-3-270m), LLM_POD_MAX_TOKENS (default 32), LLM_POD_PATH_PREFIX (e.g.
`/gemma-3-270m` to go through the per-model path a gateway or the KEDA interceptor routes on).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
from typing import Any

from locust import HttpUser, between, events, task

KEYS = itertools.cycle(
    [k.strip() for k in os.environ.get("LLM_POD_API_KEY", "").split(",") if k.strip()] or [""]
)
MODEL = os.environ.get("LLM_POD_MODEL", "gemma-3-270m")
MAX_TOKENS = int(os.environ.get("LLM_POD_MAX_TOKENS", "32"))
PREFIX = os.environ.get("LLM_POD_PATH_PREFIX", "").rstrip("/")
PROMPTS = [
    "Say hello.",
    "Name three colours.",
    "Write one sentence about the sea.",
    "What is two plus two?",
]
NAMED_FAILURES = {
    401: "401 unauthorised",
    403: "403 forbidden",
    429: "429 rate limited",
    503: "503 unavailable",
}


def fire(name: str, request_type: str, value_ms: float, exception: Exception | None = None) -> None:
    events.request.fire(  # type: ignore[no-untyped-call]
        request_type=request_type,
        name=name,
        response_time=value_ms,
        response_length=0,
        exception=exception,
        context={},
    )


class ChatUser(HttpUser):
    wait_time = between(0.5, 2)

    def on_start(self) -> None:
        key = next(KEYS)
        self.headers = {"Authorization": f"Bearer {key}"} if key else {}

    def body(self, stream: bool) -> dict[str, Any]:
        return {
            "model": MODEL,
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],  # noqa: S311 - not crypto
            "max_tokens": MAX_TOKENS,
            "stream": stream,
        }

    def failed(self, resp: Any) -> bool:
        if resp.status_code in NAMED_FAILURES:
            resp.failure(NAMED_FAILURES[resp.status_code])
            return True
        if resp.status_code != 200:
            resp.failure(f"{resp.status_code}")
            return True
        return False

    @task(1)
    def chat(self) -> None:
        url = f"{PREFIX}/v1/chat/completions"
        with self.client.post(
            url, json=self.body(False), headers=self.headers, name="chat", catch_response=True
        ) as resp:
            if not self.failed(resp):
                resp.success()

    @task(3)
    def chat_stream(self) -> None:
        url = f"{PREFIX}/v1/chat/completions"
        started = time.perf_counter()
        first: float | None = None
        tokens = 0
        with self.client.post(
            url,
            json=self.body(True),
            headers=self.headers,
            name="chat (stream)",
            stream=True,
            catch_response=True,
        ) as resp:
            if self.failed(resp):
                return
            for line in resp.iter_lines():
                if not line.startswith(b"data: ") or line == b"data: [DONE]":
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                if choices[0].get("delta", {}).get("content"):
                    tokens += 1
                    if first is None:
                        first = time.perf_counter()
            resp.success()
        if first is None:
            fire("TTFT", "LLM", (time.perf_counter() - started) * 1000, RuntimeError("no token streamed"))
            return
        fire("TTFT", "LLM", (first - started) * 1000)
        decode = time.perf_counter() - first
        if tokens > 1 and decode > 0:
            fire("tokens/s", "LLM", (tokens - 1) / decode)
