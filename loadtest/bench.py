"""`make bench`: measure the real pod on this machine and rewrite docs/benchmarks.md.

Starts a redis-server and the pod (llama-cpp-python with the bundled model, the sidecar, nginx) on
free loopback ports, then measures:
- cold start: engine process start -> its /v1/models lists the model -> /ready is 200 through nginx;
- time to the first streamed chunk through nginx and directly from the engine (interleaved);
- auth cost: a denied call (no key -> 401) through nginx and the sidecar's /auth asked directly; a
  cheap authorised call (GET /v1/models) through nginx per credential source (static key, Redis key,
  HS256 JWT), against the same call made directly to the engine;
- a short headless Locust run of loadtest/locustfile.py through nginx: requests/s, latency, time to
  the first token, tokens/s, failures by cause;
- memory (RSS) of nginx (master and workers), the sidecar and the engine, idle and after the load.

About two and a half minutes on 2 cores. `--quick` is a smoke run (fewer samples, an 8 s load).
`--results FILE` also writes the measured values as JSON; `markdown()` renders them.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

import httpx
import jwt
import redis

from inference.fetch_model import fetch
from localpod.__main__ import model_cache
from localpod.pod import BUNDLED_MODEL_NAME, BUNDLED_MODEL_SOURCE, Ports, commands, pod_env, prepare_nginx
from sidecar.keys import add_key
from sidecar.redis_keys import RedisKeyAdmin

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.md"
ISS, AUD = "https://bench.invalid", "llm-pod"
LOAD_MAX_TOKENS = 32


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    ordered = sorted(samples)
    if not ordered:
        raise ValueError("no samples")
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll every 10 ms; return the monotonic time the predicate first held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return time.monotonic()
        time.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout} s waiting for {what}")


def status(url: str, headers: dict[str, str] | None = None) -> int:
    try:
        return httpx.get(url, headers=headers, timeout=2).status_code
    except httpx.HTTPError:
        return 0


@dataclass
class Running:
    ports: Ports
    env: dict[str, str]
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    cmds: dict[str, list[str]] = field(default_factory=dict)
    logdir: Path = Path()

    def start(self, name: str) -> float:
        log = (self.logdir / f"{name}.log").open("ab")
        env = {**os.environ, **self.env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
        started = time.monotonic()
        self.procs[name] = subprocess.Popen(  # noqa: S603 - our own commands
            self.cmds[name], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True
        )
        return started

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, 15)
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, 9)
                proc.wait(5)

    def rss_mib(self, name: str) -> float:
        """Resident memory of a process and its children (nginx's workers), in MiB."""
        proc = self.procs[name]
        pids = [proc.pid, *children(proc.pid)]
        total = 0
        for pid in pids:
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
            except OSError:
                continue
        return total / 1024


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, ValueError, IndexError):
                continue
    return found


@contextmanager
def pod_with_redis(tmp: Path) -> Iterator[tuple[Running, dict[str, str]]]:
    redis_path = shutil.which("redis-server")
    if redis_path is None or shutil.which("nginx") is None:
        raise SystemExit("bench needs nginx and redis-server: make system-deps")
    redis_port = free_port()
    redis_proc = subprocess.Popen(  # noqa: S603
        [redis_path, "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    redis_url = f"redis://127.0.0.1:{redis_port}/0"
    try:
        wait_for(lambda: _pings(redis_url), 10, "redis-server")
        ports = Ports(free_port(), free_port(), free_port(), free_port(), free_port())
        keys_file = tmp / "keys.yaml"
        secret = tmp / "jwt-secret"
        secret.write_text("bench-secret-" + os.urandom(16).hex())
        creds = {
            "static key": add_key(keys_file, "bench-static"),
            "Redis key": RedisKeyAdmin(redis.Redis.from_url(redis_url, decode_responses=True)).create(
                "bench-redis"
            ),
            "JWT (HS256)": jwt.encode(
                {"sub": "bench", "iss": ISS, "aud": AUD, "exp": int(time.time()) + 3600},
                secret.read_text(),
                algorithm="HS256",
            ),
        }
        model = fetch(BUNDLED_MODEL_SOURCE, model_cache())
        env = pod_env(ports, model, keys_file, drain_seconds=0.5)
        env.update(
            {
                "LLM_POD_REDIS_URL": redis_url,
                "LLM_POD_JWT_ISSUER": ISS,
                "LLM_POD_JWT_AUDIENCE": AUD,
                "LLM_POD_JWT_ALGORITHMS": "HS256",
                "LLM_POD_JWT_SECRET_FILE": str(secret),
            }
        )
        prepare_nginx(tmp / "nginx", env)
        running = Running(ports, env, cmds=commands(tmp / "nginx", sys.executable), logdir=tmp)
        try:
            yield running, creds
        finally:
            for name in ("nginx", "sidecar", "engine"):
                running.stop(name)
    finally:
        redis_proc.terminate()
        redis_proc.wait(10)


def _pings(url: str) -> bool:
    try:
        return bool(redis.Redis.from_url(url, socket_timeout=0.5).ping())
    except redis.RedisError:
        return False


def lists_model(port: int) -> bool:
    try:
        data = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).json().get("data", [])
    except (httpx.HTTPError, ValueError):
        return False
    return any(m.get("id") == BUNDLED_MODEL_NAME for m in data)


def cold_starts(pod: Running, rounds: int) -> list[tuple[float, float]]:
    """(engine start -> model listed, engine start -> /ready 200 via nginx), per restart."""
    base = f"http://127.0.0.1:{pod.ports.listen}"
    out = []
    for _ in range(rounds):
        pod.stop("engine")
        wait_for(lambda: status(base + "/ready") == 503, 10, "/ready to turn 503")
        started = pod.start("engine")
        listed = wait_for(lambda: lists_model(pod.ports.engine), 120, "the engine to list the model")
        ready = wait_for(lambda: status(base + "/ready") == 200, 10, "/ready to turn 200")
        out.append((listed - started, ready - started))
    return out


def first_chunk(url: str, headers: dict[str, str]) -> float:
    body = {
        "model": BUNDLED_MODEL_NAME,
        "messages": [{"role": "user", "content": "Count to three."}],
        "max_tokens": 4,
        "temperature": 0,
        "stream": True,
    }
    started = time.perf_counter()
    with httpx.stream("POST", url, json=body, headers=headers, timeout=60) as resp:
        resp.raise_for_status()
        for line in resp.iter_lines():
            if line.startswith("data: "):
                return time.perf_counter() - started
    raise RuntimeError("no streamed chunk")


def latencies(
    client: httpx.Client, url: str, headers: dict[str, str], n: int, expect: int = 200
) -> list[float]:
    out = []
    for _ in range(n):
        started = time.perf_counter()
        resp = client.get(url, headers=headers)
        out.append(time.perf_counter() - started)
        if resp.status_code != expect:
            raise RuntimeError(f"{url}: {resp.status_code}, expected {expect}: {resp.text[:200]}")
    return out


def run_locust(base: str, key: str, users: int, seconds: int, workdir: Path) -> dict[str, Any]:
    """loadtest/locustfile.py, headless through the front door; its --llm-summary as a dict."""
    out = workdir / "locust-summary.json"
    argv = [
        *("-f", str(ROOT / "loadtest" / "locustfile.py"), "--config", str(ROOT / "loadtest" / "locust.conf")),
        *("--host", base, "-u", str(users), "-r", str(users), "-t", f"{seconds}s"),
        *("--csv", str(workdir / "locust"), "--llm-summary", str(out)),
    ]
    env = {
        **os.environ,
        "LLM_POD_API_KEY": key,
        "LLM_POD_MODEL": BUNDLED_MODEL_NAME,
        "LLM_POD_MAX_TOKENS": str(LOAD_MAX_TOKENS),
    }
    done = subprocess.run(  # noqa: S603 - our own locustfile, by this interpreter
        [sys.executable, "-m", "locust", *argv],
        env=env,
        cwd=ROOT,  # the locustfile imports loadtest.traffic
        capture_output=True,
        text=True,
        timeout=seconds + 120,
        check=False,
    )
    if not out.exists():
        raise RuntimeError(f"locust wrote no summary (exit {done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    result["users"], result["run_time"] = users, seconds
    result["max_tokens"] = LOAD_MAX_TOKENS
    return result


def load_report(summary: dict[str, Any]) -> dict[str, Any]:
    """The numbers the benchmark page shows from a locustfile summary."""
    rows = {r["name"]: r for r in summary["rows"]}
    calls = [rows[n] for n in ("chat", "chat (stream)") if n in rows]
    failures: dict[str, int] = {}
    for f in summary["failures"]:
        failures[f["error"]] = failures.get(f["error"], 0) + f["occurrences"]

    def row(name: str) -> dict[str, Any]:
        r = rows.get(name, {})
        keys = ("requests", "failures", "rps", "p50", "p95")
        return {k: r.get(k, 0 if k in ("requests", "failures", "rps") else None) for k in keys}

    return {
        "users": summary["users"],
        "run_time": summary["run_time"],
        "max_tokens": summary["max_tokens"],
        "seconds": summary["seconds"],
        "requests": sum(r["requests"] for r in calls),
        "rps": sum(r["rps"] for r in calls),
        "rows": {name: row(name) for name in ("chat", "chat (stream)", "TTFT", "tokens/s")},
        "output_tokens": summary["output_tokens"],
        "tokens_per_s": summary["tokens_per_s"],
        "failures": failures,
    }


def machine() -> dict[str, str]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    os_release = Path("/etc/os-release")
    distro = next(
        (
            line.split("=", 1)[1].strip().strip('"')
            for line in (os_release.read_text().splitlines() if os_release.exists() else [])
            if line.startswith("PRETTY_NAME=")
        ),
        "",
    )
    nginx = subprocess.run(["nginx", "-v"], capture_output=True, text=True, check=False).stderr.strip()  # noqa: S607
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{mem_kib / 1024 / 1024:.0f} GiB",
        "os": f"{distro}, Linux {platform.release()}" if distro else platform.platform(),
        "python": platform.python_version(),
        "nginx": nginx.removeprefix("nginx version: "),
        "llama-cpp-python": version("llama-cpp-python"),
        "locust": version("locust"),
    }


def run(quick: bool) -> dict[str, Any]:
    if importlib.util.find_spec("locust") is None:
        raise SystemExit("bench needs locust: pip install -e '.[bench]'")
    results: dict[str, Any] = {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
    }
    with (
        tempfile.TemporaryDirectory(prefix="llm-pod-bench-") as tmpdir,
        pod_with_redis(Path(tmpdir)) as (pod, creds),
    ):
        base = f"http://127.0.0.1:{pod.ports.listen}"
        engine = f"http://127.0.0.1:{pod.ports.engine}"
        for name in ("sidecar", "nginx"):
            pod.start(name)
        wait_for(lambda: status(base + "/healthz") == 200, 20, "the sidecar and nginx")
        pod.start("engine")
        wait_for(lambda: status(base + "/ready") == 200, 120, "the pod to be ready")
        rss_idle = {name: pod.rss_mib(name) for name in ("nginx", "sidecar", "engine")}

        starts = cold_starts(pod, 1 if quick else 3)
        results["cold_start"] = {
            "engine_lists_model_s": statistics.median(s[0] for s in starts),
            "ready_via_nginx_s": statistics.median(s[1] for s in starts),
            "rounds": len(starts),
        }

        auth = {"Authorization": f"Bearer {creds['static key']}"}
        # The engine was just restarted: its first completion is slow for reasons of its own.
        first_chunk(engine + "/v1/chat/completions", {})
        via: list[float] = []
        direct: list[float] = []
        for i in range(4 if quick else 10):
            # Interleaved, and in turn which goes first, so neither path always follows the other.
            pair = [
                (via, base + "/v1/chat/completions", auth),
                (direct, engine + "/v1/chat/completions", {}),
            ]
            for samples, url, headers in pair if i % 2 == 0 else pair[::-1]:
                samples.append(first_chunk(url, headers))
        results["first_chunk_ms"] = {
            "nginx": summary(via, 90),
            "direct": summary(direct, 90),
            "samples": len(via),
        }

        n = 50 if quick else 500
        denied: dict[str, dict[str, float]] = {}
        allowed: dict[str, dict[str, float]] = {}
        with httpx.Client(timeout=5) as client:
            sidecar_auth = f"http://127.0.0.1:{pod.ports.sidecar}/auth"
            for name, url in (
                ("sidecar /auth directly", sidecar_auth),
                ("through nginx", base + "/v1/models"),
            ):
                latencies(client, url, {}, 20, expect=401)  # warm-up
                denied[name] = summary(latencies(client, url, {}, n, expect=401))
            latencies(client, engine + "/v1/models", {}, 20)
            allowed["engine directly (no nginx, no auth)"] = summary(
                latencies(client, engine + "/v1/models", {}, n)
            )
            for name, credential in creds.items():
                headers = {"Authorization": f"Bearer {credential}"}
                latencies(client, base + "/v1/models", headers, 20)
                allowed[f"through nginx, {name}"] = summary(
                    latencies(client, base + "/v1/models", headers, n)
                )
        results["auth_denied_ms"] = denied
        results["auth_allowed_ms"] = allowed
        results["auth_samples"] = n

        users, seconds = (2, 8) if quick else (4, 60)
        results["load"] = load_report(run_locust(base, creds["static key"], users, seconds, Path(tmpdir)))
        results["rss_mib"] = {"idle": rss_idle, "after": {name: pod.rss_mib(name) for name in rss_idle}}
    return results


def summary(samples: list[float], high: float = 99) -> dict[str, float]:
    """p50 and p`high` of samples in seconds, in milliseconds."""
    return {"p50": percentile(samples, 50) * 1000, f"p{high:g}": percentile(samples, high) * 1000}


def ms(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.0f}"


def markdown(r: dict[str, Any]) -> str:
    m, cs, fc, rss, load = r["machine"], r["cold_start"], r["first_chunk_ms"], r["rss_mib"], r["load"]
    rows = load["rows"]
    failures = ", ".join(f"{count}: {error}" for error, count in sorted(load["failures"].items()))
    lines = [
        "# Benchmarks",
        "",
        f"Regenerated by `make bench` (`python -m loadtest.bench`) on {r['date']}. Numbers from one",
        "machine; compare runs on the same machine only.",
        "",
        "| machine | |",
        "| --- | --- |",
        *(f"| {k} | {v} |" for k, v in m.items()),
        "",
        "## Cold start (bundled Gemma 3 270M Q4_K_M, llama-cpp-python)",
        "",
        f"Median of {cs['rounds']} engine restarts, timed from the engine process start.",
        "",
        "| event | seconds |",
        "| --- | --- |",
        f"| the engine's `/v1/models` lists the model | {cs['engine_lists_model_s']:.2f} |",
        f"| `/ready` is 200 through nginx | {cs['ready_via_nginx_s']:.2f} |",
        "",
        "## Time to the first streamed chunk",
        "",
        f"{fc['samples']} streamed chat completions each way, the same prompt (max_tokens 4), interleaved",
        "(each path first in turn) after one warm-up completion.",
        "",
        "| path | p50 ms | p90 ms |",
        "| --- | --- | --- |",
        f"| through nginx (auth_request + proxy) | {fc['nginx']['p50']:.1f} | {fc['nginx']['p90']:.1f} |",
        f"| directly to the engine | {fc['direct']['p50']:.1f} | {fc['direct']['p90']:.1f} |",
        f"| difference | {fc['nginx']['p50'] - fc['direct']['p50']:.1f} | |",
        "",
        "## Auth cost",
        "",
        f"{r['auth_samples']} sequential requests per row on one keep-alive connection.",
        "",
        "A denied call (no key, 401): the sidecar's decision alone, and the whole refusal through nginx.",
        "",
        "| path | p50 ms | p99 ms |",
        "| --- | --- | --- |",
        *(f"| {k} | {v['p50']:.2f} | {v['p99']:.2f} |" for k, v in r["auth_denied_ms"].items()),
        "",
        "An authorised `GET /v1/models` per credential source. The difference to the first row is what",
        "nginx plus the auth decision add to every call.",
        "",
        "| path | p50 ms | p99 ms |",
        "| --- | --- | --- |",
        *(f"| {k} | {v['p50']:.2f} | {v['p99']:.2f} |" for k, v in r["auth_allowed_ms"].items()),
        "",
        "## Load (Locust, through nginx)",
        "",
        f"`loadtest/locustfile.py` headless, {load['users']} users for {load['run_time']} s",
        f"(the completions in flight then ended by {load['seconds']:.0f} s): three streamed chat",
        f"completions for every one not, max_tokens {load['max_tokens']}, 0.5 to 2 s between a user's",
        "calls. llama-cpp-python's server runs one completion at a time: the others wait, and their",
        "time to the first token includes that wait.",
        "",
        f"{load['requests']} completions, {load['rps']:.2f} requests/s.",
        "",
        "| row | requests | p50 ms | p95 ms |",
        "| --- | --- | --- | --- |",
        f"| chat (whole answer) | {rows['chat']['requests']} | {ms(rows['chat']['p50'])} "
        f"| {ms(rows['chat']['p95'])} |",
        f"| chat (stream), to its last token | {rows['chat (stream)']['requests']} "
        f"| {ms(rows['chat (stream)']['p50'])} | {ms(rows['chat (stream)']['p95'])} |",
        f"| time to first token (TTFT) | {rows['TTFT']['requests']} | {ms(rows['TTFT']['p50'])} "
        f"| {ms(rows['TTFT']['p95'])} |",
        "",
        "| throughput | |",
        "| --- | --- |",
        f"| output tokens/s, all answers | {load['tokens_per_s']:.1f} ({load['output_tokens']} tokens) |",
        f"| tokens/s of one stream after its first token, p50 | {ms(rows['tokens/s']['p50'])} |",
        f"| failures | {failures or 'none'} |",
        "",
        "## Memory (RSS, MiB)",
        "",
        "nginx counts its master and workers.",
        "",
        "| process | idle | after the load |",
        "| --- | --- | --- |",
        *(f"| {k} | {rss['idle'][k]:.0f} | {rss['after'][k]:.0f} |" for k in rss["idle"]),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="fewer samples, a short load: a smoke run")
    parser.add_argument(
        "--out", type=Path, default=DOC, help="the markdown file to write (default: %(default)s)"
    )
    parser.add_argument("--results", type=Path, help="also write the measured values here as JSON")
    args = parser.parse_args(argv)
    results = run(args.quick)
    args.out.write_text(markdown(results), encoding="utf-8")
    if args.results:
        args.results.write_text(json.dumps(results, indent=2), encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
