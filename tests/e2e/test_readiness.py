"""Readiness gating with the real engine: unready while it is down or loading, ready within 1 s of
its /v1/models first listing the model, unready within 2 s of it being killed; drain on SIGTERM."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import engine_lists_model, http_get, start_pod, stop_pod
from tests.harness import Proc, python, wait_until


def chat_status(base: str, key: str, model: str) -> tuple[int, dict[str, object]]:
    resp = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )
    return resp.status_code, resp.json()


def ready_code(url: str) -> str | None:
    status, _, body = http_get(url)
    return json.loads(body)["error"]["code"] if status == 503 and body else None


def test_ready_follows_the_engine(tmp_path: Path, model_path: Path) -> None:
    pod = start_pod(tmp_path, model_path, ("sidecar", "nginx"))
    try:
        ready_url = pod.base + "/ready"
        # No engine: unready (once the sidecar answers, it says why), and an API call gets an
        # OpenAI-shaped 503 instead of hanging.
        wait_until(lambda: ready_code(ready_url) == "loading", 30, what="/ready to say loading")
        assert http_get(ready_url)[0] == 503
        assert http_get(pod.base + "/healthz")[0] == 200  # liveness is the sidecar, never the engine
        status, payload = chat_status(pod.base, pod.key, pod.model)
        assert status == 503
        assert payload["error"]["code"] == "engine_unavailable"  # type: ignore[index]

        # Start the engine and watch both sides at once: when does /v1/models first list the model,
        # and when does the pod's /ready first say 200?
        seen: dict[str, float] = {}
        unready: list[str | None] = []  # what /ready said while the engine started and loaded
        stop = threading.Event()

        def ready_now() -> bool:
            status, _, body = http_get(ready_url, 1)
            if status != 200:
                unready.append(json.loads(body)["error"]["code"] if status == 503 and body else str(status))
            return status == 200

        def watch(name: str, check: object) -> None:
            while not stop.is_set() and name not in seen:
                if check():  # type: ignore[operator]
                    seen[name] = time.monotonic()
                time.sleep(0.01)

        watchers = [
            threading.Thread(
                target=watch, args=("listed", lambda: engine_lists_model(pod.ports.engine, pod.model))
            ),
            threading.Thread(target=watch, args=("ready", ready_now)),
        ]
        engine_started = time.monotonic()
        engine = Proc("engine", [python(), "-m", "inference.llamacpp"], pod.env, tmp_path)
        pod.procs = {"engine": engine, **pod.procs}
        for t in watchers:
            t.start()
        try:
            wait_until(
                lambda: len(seen) == 2, 180, 0.05, "the engine to list the model and the pod to be ready"
            )
        finally:
            stop.set()
            for t in watchers:
                t.join()
        lag = seen["ready"] - seen["listed"]
        print(
            f"engine time to ready: {seen['listed'] - engine_started:.2f} s; "
            f"/ready flipped {lag * 1000:.0f} ms later"
        )
        assert lag < 1.0
        # ... and not before the model was listed (the model takes seconds to load; the two watchers'
        # polls can land some tens of milliseconds apart on a busy machine).
        assert lag > -0.5
        assert unready, "the watcher never saw the pod unready while the engine loaded"
        assert set(unready) <= {"loading", "engine_unreachable"}, unready

        status, payload = chat_status(pod.base, pod.key, pod.model)
        assert status == 200, payload

        # Kill the engine outright: /ready turns 503 within 2 s, and calls get a 503 JSON error.
        killed = time.monotonic()
        engine.signal(signal.SIGKILL)
        wait_until(lambda: http_get(ready_url, 0.5)[0] == 503, 2.0, 0.02, "/ready to turn 503 after the kill")
        unready_after = time.monotonic() - killed
        print(f"/ready 503 {unready_after * 1000:.0f} ms after SIGKILL")
        assert unready_after < 2.0
        assert http_get(pod.base + "/healthz")[0] == 200
        assert ready_code(ready_url) == "engine_unreachable"
        status, payload = chat_status(pod.base, pod.key, pod.model)
        assert status == 503
        assert payload["error"]["code"] == "engine_unavailable"  # type: ignore[index]
        assert set(payload["error"]) == {"message", "type", "param", "code"}  # type: ignore[arg-type]
    finally:
        stop_pod(pod)


def test_sigterm_turns_unready_at_once_and_exits_after_the_drain(tmp_path: Path, model_path: Path) -> None:
    pod = start_pod(tmp_path, model_path, ("sidecar",))
    sidecar = pod.procs["sidecar"]
    readyz = f"http://127.0.0.1:{pod.ports.sidecar}/readyz"
    try:
        wait_until(lambda: http_get(readyz)[0] == 503, 30, what="the sidecar to answer")
        drain = float(pod.env["LLM_POD_DRAIN_SECONDS"])
        sent = time.monotonic()
        sidecar.popen.send_signal(signal.SIGTERM)
        wait_until(
            lambda: json.loads(http_get(readyz)[2] or b"{}").get("status") == "draining",
            0.5,
            0.01,
            "readiness to say draining",
        )
        assert sidecar.alive()  # still serving (probes, auth for in-flight work) during the drain
        assert sidecar.popen.wait(drain + 5) == 0
        elapsed = time.monotonic() - sent
        assert drain * 0.9 <= elapsed <= drain + 3, elapsed
    finally:
        stop_pod(pod)


def test_auth_fails_closed_when_the_sidecar_is_down(tmp_path: Path, model_path: Path) -> None:
    pod = start_pod(tmp_path, model_path, ("nginx",))
    try:
        wait_until(lambda: http_get(pod.base + "/healthz")[0] != 0, 30, what="nginx to answer")
        # nginx answers the liveness probe for the sidecar: it is down, so the probe fails (503).
        assert http_get(pod.base + "/healthz")[0] == 503
        status, payload = chat_status(pod.base, pod.key, pod.model)
        assert status == 503
        assert payload["error"]["code"] == "auth_unavailable"  # type: ignore[index]
        status, _, body = http_get(pod.base + "/ready")
        assert status == 503
        assert json.loads(body)["error"]["code"] == "sidecar_unreachable"
    finally:
        stop_pod(pod)
