"""Load an llm-pod (or any OpenAI-compatible endpoint) through its front door with Locust.

    LLM_POD_API_KEY=sk-lp-... locust -f loadtest/locustfile.py --config loadtest/locust.conf \
        --host http://127.0.0.1:8080

(from the repository root, or anywhere with llm-pod installed: it imports loadtest.traffic).

Each user sends chat completions with bounded max_tokens, three streamed for every one not (in that
order, so a short run still streams). Every answer is checked: a 200 with a well-formed body, a
stream that ends with `[DONE]` and carries at least one token. Rows, besides Locust's own:

- `chat` and `chat (stream)`: the whole call, to the last byte of the answer.
- `TTFT` (type `LLM`): request sent -> first streamed token, in ms.
- `tokens/s` (type `LLM`): one stream's decode rate after its first token, in the response-time
  columns; its content size is the stream's token count.

401, 403, 429 and 503 answers are failures named by their code ("429 rate limited"), so the failure
table tells a refused request from a broken one. At the end the run's output tokens per second (all
answers, all workers) are logged; `--llm-summary FILE` writes them, each row's counts and p50/p95
and each failure as JSON (what `make bench` reads).

Settings (environment):
- LLM_POD_API_KEY: the key (several, comma-separated, are dealt out to users in turn).
- LLM_POD_API_KEYS: keys with labels, for priority-admission runs: `LABEL[*WEIGHT]=KEY,...`, e.g.
  `p5=sk-lp-aaa,p0*3=sk-lp-bbb` gives one user in four the p5 key. Each label gets its own rows
  (`chat (stream) [p0]`), so refusals and TTFT are counted per priority.
- LLM_POD_MODEL (default gemma-3-270m), LLM_POD_MAX_TOKENS (default 32), LLM_POD_STREAM_SHARE
  (default 0.75), LLM_POD_PATH_PREFIX (e.g. `/gemma-3-270m`, the per-model path the KEDA
  interceptor or a gateway routes on).
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import random
import re
import threading
import time
from pathlib import Path
from typing import Any

from locust import FastHttpUser, between, events, task
from locust.env import Environment
from locust.runners import WorkerRunner
from locust.stats import StatsError

from loadtest.traffic import NAMED_FAILURES, PROMPTS, parse_keys, sse_data, streams

logger = logging.getLogger(__name__)


class Tokens:
    """Output tokens of the whole run (each worker counts its own; the master sums their reports)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.started = self.stopped = 0.0

    def add(self, n: int) -> None:
        with self.lock:
            self.count += n

    def take(self) -> int:
        with self.lock:
            n, self.count = self.count, 0
        return n


TOKENS = Tokens()


def error_text(error: Any) -> str:
    """A failure as marked ("429 rate limited"), without Locust's exception wrapper around it."""
    text = StatsError.parse_error(error)
    found = re.fullmatch(r"""CatchResponseError\((['"])(.*)\1\)""", text)
    return found.group(2) if found else text


def summary(environment: Environment) -> dict[str, Any]:
    """The run in one JSON-able dict: token totals, each row's counts and percentiles, each failure.

    Written at exit, after the last completion was counted (Locust's --csv files are rewritten once
    a second and can miss the completions that finish during --stop-timeout)."""
    seconds = max((TOKENS.stopped or time.monotonic()) - TOKENS.started, 1e-9)
    rows = [
        {
            "type": e.method,
            "name": e.name,
            "requests": e.num_requests,
            "failures": e.num_failures,
            "rps": e.total_rps,
            "p50": e.get_response_time_percentile(0.5) if e.num_requests else None,
            "p95": e.get_response_time_percentile(0.95) if e.num_requests else None,
            "avg_size": e.avg_content_length,
        }
        for e in environment.stats.entries.values()
    ]
    failures = [
        {"type": f.method, "name": f.name, "error": error_text(f.error), "occurrences": f.occurrences}
        for f in environment.stats.errors.values()
    ]
    return {
        "seconds": round(seconds, 3),
        "output_tokens": TOKENS.count,
        "tokens_per_s": TOKENS.count / seconds,
        "rows": rows,
        "failures": failures,
    }


def _options(parser: Any) -> None:
    parser.add_argument("--llm-summary", default="", help="write the run's summary here as JSON at exit")


def _started(environment: Environment, **_: Any) -> None:
    TOKENS.take()
    TOKENS.started, TOKENS.stopped = time.monotonic(), 0.0


def _stopped(environment: Environment, **_: Any) -> None:
    TOKENS.stopped = time.monotonic()


def _report(client_id: str, data: dict[str, Any]) -> None:
    data["llm_output_tokens"] = TOKENS.take()


def _worker_report(client_id: str, data: dict[str, Any]) -> None:
    TOKENS.add(int(data.get("llm_output_tokens", 0)))


def _quitting(environment: Environment, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        return
    result = summary(environment)
    logger.info(
        "output tokens: %d in %.1f s, %.1f tokens/s",
        result["output_tokens"],
        result["seconds"],
        result["tokens_per_s"],
    )
    path = getattr(environment.parsed_options, "llm_summary", "")
    if path:
        Path(path).write_text(json.dumps(result, indent=1), encoding="utf-8")


LISTENERS = (
    (events.init_command_line_parser, _options),
    (events.test_start, _started),
    (events.test_stop, _stopped),
    (events.report_to_master, _report),
    (events.worker_report, _worker_report),
    (events.quitting, _quitting),
)
for hook, listener in LISTENERS:
    hook.add_listener(listener)  # type: ignore[no-untyped-call]  # Locust's add_listener is untyped


class ChatUser(FastHttpUser):
    wait_time = between(0.5, 2)
    # A completion can take long on a busy CPU engine; the default 60 s would cut it short.
    network_timeout = 300.0
    connection_timeout = 10.0

    # Read once when Locust imports this file, so a bad setting stops the run before any user starts.
    credentials = itertools.cycle(
        parse_keys(os.environ.get("LLM_POD_API_KEYS", ""), os.environ.get("LLM_POD_API_KEY", ""))
    )
    model = os.environ.get("LLM_POD_MODEL", "gemma-3-270m")
    max_tokens = int(os.environ.get("LLM_POD_MAX_TOKENS", "32"))
    stream_share = float(os.environ.get("LLM_POD_STREAM_SHARE", "0.75"))
    url = os.environ.get("LLM_POD_PATH_PREFIX", "").rstrip("/") + "/v1/chat/completions"
    if not 0 <= stream_share <= 1:
        raise ValueError("LLM_POD_STREAM_SHARE must be between 0 and 1")

    def on_start(self) -> None:
        cred = next(self.credentials)
        self.suffix = f" [{cred.label}]" if cred.label else ""
        # identity: the SSE lines are read as they arrive, never through a decompressor.
        self.headers = {"Accept-Encoding": "identity"}
        if cred.key:
            self.headers["Authorization"] = f"Bearer {cred.key}"
        self.calls = 0

    def body(self, stream: bool) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": random.choice(PROMPTS)}],  # noqa: S311 - not crypto
            "max_tokens": self.max_tokens,
            "stream": stream,
        }

    def refused(self, resp: Any) -> bool:
        """Mark anything but a 200 as a failure named by its status; True if it was one."""
        if resp.status_code == 200:
            return False
        if resp.status_code == 0:
            resp.failure(f"connection error: {type(getattr(resp, 'error', None)).__name__}")
        else:
            resp.failure(NAMED_FAILURES.get(resp.status_code, f"{resp.status_code} unexpected"))
        return True

    def fire(self, name: str, value: float, length: int = 0) -> None:
        self.environment.events.request.fire(
            request_type="LLM",
            name=name + self.suffix,
            response_time=value,
            response_length=length,
            exception=None,
            context={},
        )

    @task
    def chat(self) -> None:
        stream = streams(self.calls, self.stream_share)
        self.calls += 1
        if stream:
            self.chat_streamed()
        else:
            self.chat_whole()

    def chat_whole(self) -> None:
        with self.client.post(
            self.url,
            json=self.body(False),
            headers=self.headers,
            name="chat" + self.suffix,
            catch_response=True,
        ) as resp:
            if self.refused(resp):
                return
            try:
                answer = resp.json()
                content = answer["choices"][0]["message"]["content"]
                tokens = int(answer.get("usage", {}).get("completion_tokens", 0))
            except (ValueError, KeyError, IndexError, TypeError):
                resp.failure("malformed answer")
                return
            if not isinstance(content, str):
                resp.failure("malformed answer")
                return
            TOKENS.add(tokens)
            resp.success()

    def chat_streamed(self) -> None:
        started = time.perf_counter()
        first = 0.0
        tokens = 0
        done = False
        with self.client.post(
            self.url,
            json=self.body(True),
            headers=self.headers,
            name="chat (stream)" + self.suffix,
            stream=True,
            catch_response=True,
        ) as resp:
            if self.refused(resp):
                return
            try:
                # geventhttpclient's own readline with "\n": returns each line as it arrives (the
                # wrapper's read(n) waits for n bytes, its readline for "\r\n", which vLLM never sends).
                raw = resp._response
                while line := raw.readline(b"\n"):
                    data = sse_data(line)
                    if data is None:
                        continue
                    if data == b"[DONE]":
                        done = True  # read on to the end of the body: the connection is then reused
                        continue
                    choices = json.loads(data).get("choices") or [{}]
                    if choices[0].get("delta", {}).get("content"):
                        tokens += 1
                        if tokens == 1:
                            first = time.perf_counter()
            except Exception as err:  # any broken stream is this request's failure
                resp.failure(f"broken stream: {type(err).__name__}")
                return
            ended = time.perf_counter()
            # The whole stream, not the time to its headers (Locust's default for stream=True).
            resp.request_meta["response_time"] = (ended - started) * 1000
            if not done or tokens == 0:
                resp.failure("stream ended without [DONE]" if not done else "no token streamed")
                return
            resp.success()
        TOKENS.add(tokens)
        self.fire("TTFT", (first - started) * 1000)
        if tokens > 1 and ended > first:
            self.fire("tokens/s", (tokens - 1) / (ended - first), length=tokens)
