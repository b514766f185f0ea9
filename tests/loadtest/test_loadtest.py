"""The load test, the benchmark and the cold-start timer, run for real against the real pod (briefly)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from loadtest.bench import load_report, markdown, percentile
from loadtest.traffic import Credential, parse_keys, sse_data, streams
from localpod.pod import commands
from sidecar.keys import add_key
from tests.conftest import Pod, http_get, start_pod, stop_pod
from tests.harness import ROOT, Proc, wait_until


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    assert percentile([5.0], 90) == 5.0
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)


def test_the_stream_share_is_spread_evenly_and_the_first_call_streams() -> None:
    assert [streams(n, 0.75) for n in range(8)] == [True, True, True, False] * 2
    assert [streams(n, 0.5) for n in range(4)] == [True, False, True, False]
    assert not any(streams(n, 0.0) for n in range(10))
    assert all(streams(n, 1.0) for n in range(10))


def test_keys_are_dealt_out_by_label_and_weight() -> None:
    assert parse_keys("", "sk-a, sk-b") == [Credential("sk-a"), Credential("sk-b")]
    assert parse_keys("", "") == [Credential()]
    assert parse_keys("p5=sk-a,p0*3=sk-b", "ignored") == [
        Credential("sk-a", "p5"),
        *[Credential("sk-b", "p0")] * 3,
    ]
    # A bare key where a labelled one belongs: refused, and the message does not repeat it.
    with pytest.raises(ValueError, match="LABEL") as err:
        parse_keys("sk-lp-secret", "")
    assert "secret" not in str(err.value)
    with pytest.raises(ValueError, match="positive integer"):
        parse_keys("p0*0=sk-a", "")


def test_sse_lines_are_read_with_either_line_ending() -> None:
    assert sse_data(b'data: {"a": 1}\r\n') == b'{"a": 1}'
    assert sse_data(b"data:[DONE]\n") == b"[DONE]"
    assert sse_data(b"\r\n") is None
    assert sse_data(b": keep-alive\n") is None


def run_locust(pod: Pod, out: Path, users: int, seconds: int, env: dict[str, str]) -> dict[str, Any]:
    """The locustfile headless against the pod; its --llm-summary (written at exit) as a dict."""
    summary = out / "summary.json"
    config = ["-f", "loadtest/locustfile.py", "--config", "loadtest/locust.conf", "--host", pod.base]
    load = ["-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--csv", str(out / "run")]
    argv = [sys.executable, "-m", "locust", *config, *load, "--llm-summary", str(summary)]
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 90, check=False,
        env={**env, "PATH": "/usr/bin:/bin", "LLM_POD_MAX_TOKENS": "8"},
    )  # fmt: skip
    assert summary.exists(), done.stderr[-3000:]
    result: dict[str, Any] = json.loads(summary.read_text())
    result.update(returncode=done.returncode, users=users, run_time=seconds, max_tokens=8)
    return result


def rows(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["name"]: r for r in summary["rows"]}


def test_locustfile_loads_the_pod_and_reports_time_to_first_token(pod: Pod, tmp_path: Path) -> None:
    summary = run_locust(pod, tmp_path, 2, 5, {"LLM_POD_API_KEY": pod.key})
    assert summary["returncode"] == 0, summary
    assert summary["failures"] == []
    found = rows(summary)
    assert all(r["failures"] == 0 for r in found.values()), found
    # Each user's first call streams, and it is counted even if it ends after the 5 s.
    assert found["chat (stream)"]["requests"] >= 2
    assert found["TTFT"]["requests"] == found["chat (stream)"]["requests"]
    assert found["TTFT"]["type"] == "LLM"
    assert 0 < found["TTFT"]["p50"] <= found["chat (stream)"]["p50"]
    assert found["tokens/s"]["p50"] > 0
    assert 1 <= found["tokens/s"]["avg_size"] <= 8  # tokens per stream, max_tokens 8
    assert summary["output_tokens"] >= 2
    assert summary["tokens_per_s"] > 0
    # Locust's own CSV is written too (rewritten once a second, it can miss the last completions).
    assert (tmp_path / "run_stats.csv").read_text().startswith("Type,Name,Request Count")

    # What the benchmark page makes of it.
    report = load_report(summary)
    assert report["requests"] == found["chat (stream)"]["requests"] + found.get("chat", {}).get("requests", 0)
    assert report["failures"] == {}
    assert report["rows"]["TTFT"]["p50"] == found["TTFT"]["p50"]


def http_get_with_key(url: str, key: str) -> int:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"})  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=2) as resp:  # noqa: S310 - loopback test URL
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return err.code


def test_refusals_are_counted_by_code_and_by_key_label(pod: Pod, tmp_path: Path) -> None:
    # A key allowed one request a minute: once the sidecar has it (that poll takes the one), 429s.
    limited = add_key(pod.keys_file, "loadtest-limited", limits={"rpm": 1})

    def loaded() -> bool:
        return http_get_with_key(pod.base + "/v1/models", limited) in (200, 429)

    wait_until(loaded, 10, 0.1, "the sidecar to load the new key")
    keys = f"ok={pod.key},limited={limited},unknown=sk-lp-not-a-key"
    summary = run_locust(pod, tmp_path, 3, 3, {"LLM_POD_API_KEYS": keys})
    by_label: dict[str, set[str]] = {}
    for failure in summary["failures"]:
        label = re.fullmatch(r".* \[(\w+)\]", failure["name"])
        assert label, failure
        by_label.setdefault(label.group(1), set()).add(failure["error"])
    assert by_label == {"limited": {"429 rate limited"}, "unknown": {"401 unauthorised"}}
    found = rows(summary)
    assert found["TTFT [ok]"]["requests"] >= 1
    assert found["chat (stream) [ok]"]["failures"] == 0
    assert summary["returncode"] == 1  # Locust's exit code for a run with failures


def test_bench_quick_measures_and_renders_what_it_measured(tmp_path: Path) -> None:
    out, raw = tmp_path / "benchmarks.md", tmp_path / "results.json"
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.bench", "--quick", "--out", str(out), "--results", str(raw)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(raw.read_text())

    cold = results["cold_start"]
    assert 0 < cold["engine_lists_model_s"] <= cold["ready_via_nginx_s"] < 120
    for path in ("nginx", "direct"):
        assert 0 < results["first_chunk_ms"][path]["p50"] <= results["first_chunk_ms"][path]["p90"]
    denied = results["auth_denied_ms"]
    assert set(denied) == {"sidecar /auth directly", "through nginx"}
    assert all(0 < v["p50"] <= v["p99"] for v in denied.values())
    assert len(results["auth_allowed_ms"]) == 4
    load = results["load"]
    assert load["failures"] == {}
    assert load["requests"] >= 2
    assert load["rows"]["TTFT"]["p50"] > 0
    assert load["tokens_per_s"] > 0
    rss = results["rss_mib"]
    assert set(rss["idle"]) == {"nginx", "sidecar", "engine"}
    assert rss["after"]["engine"] > 100  # the model is mapped in
    assert all(v > 0 for v in rss["idle"].values())
    assert results["machine"]["llama-cpp-python"]

    # The page is the rendering of exactly these values, every table cell filled.
    text = out.read_text()
    assert text == markdown(results)
    for row in (
        "`/ready` is 200 through nginx",
        "| sidecar /auth directly",
        "| through nginx |",
        "through nginx, JWT (HS256)",
        "directly to the engine",
        "time to first token (TTFT)",
        "output tokens/s, all answers",
        "| engine |",
    ):
        line = next(line for line in text.splitlines() if row in line)
        assert re.search(r"\| [0-9]+(\.[0-9]+)? [|(]", line), line
    assert "| failures | none |" in text


def test_coldstart_timer_stops_at_a_refusal(pod: Pod) -> None:
    argv = [sys.executable, "-m", "loadtest.coldstart", "--url", pod.base, "--deadline", "30"]
    done = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
        env={"PATH": "/usr/bin:/bin", "LLM_POD_API_KEY": "sk-lp-not-a-key"},
    )  # fmt: skip
    assert done.returncode == 1, done.stderr
    result = json.loads(done.stdout)
    assert result["seconds"] is None
    assert result["statuses"] == [401]


def test_coldstart_timer_waits_through_a_loading_engine(tmp_path: Path, model_path: Path) -> None:
    # The sidecar and nginx are up, the engine is not: the timer gets 503s (Retry-After 1), keeps
    # trying, and reports the time once the engine has loaded and answers.
    pod = start_pod(tmp_path, model_path, ("sidecar", "nginx"))
    try:
        wait_until(lambda: http_get(pod.base + "/healthz")[0] == 200, 20, 0.05, "nginx and the sidecar")
        argv = [sys.executable, "-m", "loadtest.coldstart", "--url", pod.base, "--deadline", "120"]
        timer = Proc("coldstart", argv, {"LLM_POD_API_KEY": pod.key}, tmp_path)
        pod.procs["timer"] = timer  # stopped (and its log closed) with the pod

        def refused_calls() -> int:
            log = pod.procs["nginx"].output()
            return sum(1 for line in log.splitlines() if '"path":"/v1/chat/completions","status":503' in line)

        # Start the engine only once the timer has been refused twice: the timing must include that.
        wait_until(lambda: refused_calls() >= 2, 20, 0.05, "two refused attempts")
        cmds = commands(tmp_path / "nginx", sys.executable)
        pod.procs["engine"] = Proc("engine", cmds["engine"], pod.env, tmp_path)
        assert timer.popen.wait(120) == 0, timer.output()
        result = json.loads(timer.output().strip().splitlines()[-1])
        assert result["seconds"] >= 1.0
        assert result["statuses"][-1] == 200
        assert result["statuses"].count(503) >= 2
    finally:
        stop_pod(pod)
