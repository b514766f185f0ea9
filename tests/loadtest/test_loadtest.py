"""The load test and the benchmark, run for real against the real pod (briefly)."""

from __future__ import annotations

import csv
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from loadtest.bench import percentile
from localpod.pod import commands
from tests.conftest import Pod, http_get, start_pod, stop_pod
from tests.harness import ROOT, Proc, wait_until


def test_percentile_interpolates_between_ranks() -> None:
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == 2.5
    assert percentile([1.0, 2.0], 99) == pytest.approx(1.99)
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 50)


def run_locust(
    pod: Pod, out: Path, users: int, seconds: int, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    config = ["-f", "loadtest/locustfile.py", "--config", "loadtest/locust.conf", "--host", pod.base]
    load = ["-u", str(users), "-r", str(users), "-t", f"{seconds}s", "--csv", str(out / "run")]
    argv = [sys.executable, "-m", "locust", *config, *load]
    return subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=seconds + 60, check=False,
        env={**env, "PATH": "/usr/bin:/bin"},
    )  # fmt: skip


def test_locustfile_loads_the_pod_and_reports_time_to_first_token(pod: Pod, tmp_path: Path) -> None:
    done = run_locust(pod, tmp_path, 2, 8, {"LLM_POD_API_KEY": pod.key, "LLM_POD_MAX_TOKENS": "8"})
    assert done.returncode == 0, done.stderr[-3000:]
    with (tmp_path / "run_stats.csv").open() as stats:
        rows = {r["Name"]: r for r in csv.DictReader(stats)}
    assert int(rows["Aggregated"]["Failure Count"]) == 0
    assert int(rows["TTFT"]["Request Count"]) >= 1
    assert float(rows["TTFT"]["Median Response Time"]) > 0
    assert int(rows["chat (stream)"]["Request Count"]) >= 1


def test_locustfile_counts_refusals_by_their_code(pod: Pod, tmp_path: Path) -> None:
    run_locust(pod, tmp_path, 1, 3, {"LLM_POD_API_KEY": "sk-lp-not-a-key"})
    failures = (tmp_path / "run_failures.csv").read_text()
    assert "401 unauthorised" in failures


def test_bench_quick_measures_and_writes_the_tables(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    done = subprocess.run(
        [sys.executable, "-m", "loadtest.bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    text = out.read_text()
    for row in (
        "`/ready` is 200 through nginx",
        "through nginx, static key",
        "through nginx, Redis key",
        "through nginx, JWT (HS256)",
        "directly to the engine",
    ):
        line = next(line for line in text.splitlines() if row in line)
        assert re.search(r"\| [0-9]+\.[0-9]+ \|", line), line


def test_coldstart_timer_waits_through_a_loading_engine(tmp_path: Path, model_path: Path) -> None:
    # The sidecar and nginx are up, the engine is not: the timer gets 503s (Retry-After 1), keeps
    # trying, and reports the time once the engine has loaded and answers.
    pod = start_pod(tmp_path, model_path, ("sidecar", "nginx"))
    try:
        wait_until(lambda: http_get(pod.base + "/healthz")[0] == 200, 20, 0.05, "nginx and the sidecar")
        argv = [
            sys.executable,
            "-m",
            "loadtest.coldstart",
            "--url",
            pod.base,
            "--key",
            pod.key,
            "--deadline",
            "120",
        ]
        timer = Proc("coldstart", argv, {}, tmp_path)
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
