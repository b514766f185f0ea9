"""Fixtures that start the real pod: the llama-cpp-python engine with the bundled model, the sidecar
and nginx, each on a free loopback port. The engine is started once per session (it takes a few
seconds to load); tests that kill an engine start one of their own."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from inference.fetch_model import fetch
from localpod.__main__ import model_cache
from localpod.pod import BUNDLED_MODEL_NAME, BUNDLED_MODEL_SOURCE, Ports, commands, pod_env, prepare_nginx
from sidecar.keys import add_key
from tests.harness import Proc, credentials_in_logs, free_port, python, require_tool, wait_until


def http_get(url: str, timeout: float = 2.0) -> tuple[int, dict[str, str], bytes]:
    """GET without raising on HTTP errors; (0, {}, b"") when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - loopback test URLs
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return 0, {}, b""


def engine_lists_model(port: int, model: str) -> bool:
    status, _, body = http_get(f"http://127.0.0.1:{port}/v1/models")
    return status == 200 and model in {m.get("id") for m in json.loads(body).get("data", [])}


@pytest.fixture(scope="session")
def model_path() -> Path:
    return fetch(BUNDLED_MODEL_SOURCE, model_cache())


@dataclass
class Pod:
    ports: Ports
    env: dict[str, str]
    key: str = field(repr=False)  # a credential: kept out of failure reports
    keys_file: Path
    procs: dict[str, Proc]
    model: str = BUNDLED_MODEL_NAME

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ports.listen}"

    def logs(self) -> str:
        return "\n".join(f"--- {name}\n{p.output()}" for name, p in self.procs.items())


def new_ports() -> Ports:
    return Ports(
        listen=free_port(),
        metrics=free_port(),
        sidecar=free_port(),
        engine=free_port(),
        request_end=free_port(),
    )


def start_pod(
    tmp: Path,
    model_path: Path,
    parts: tuple[str, ...],
    ports: Ports | None = None,
    extra_env: dict[str, str] | None = None,
) -> Pod:
    """Start the named parts of a pod (engine, sidecar, nginx) and return it; waits for nothing."""
    require_tool("nginx")
    ports = ports or new_ports()
    keys_file = tmp / "keys.yaml"
    key = add_key(keys_file, "tester", priority=5)
    env = pod_env(ports, model_path, keys_file, drain_seconds=1.0)
    env["LLM_POD_THREADS"] = "2"
    env.update(extra_env or {})
    prefix = tmp / "nginx"
    prepare_nginx(prefix, env)
    cmds = commands(prefix, python())
    procs = {name: Proc(name, cmds[name], env, tmp) for name in parts}
    return Pod(ports, env, key, keys_file, procs)


def start_echo_pod(tmp: Path, extra_env: dict[str, str] | None = None) -> Pod:
    """nginx and the real sidecar with the header-echoing TEST DOUBLE (tests/nginx/echo_engine.py) as
    the engine: for what a real engine adds nothing to. Waits until all three answer."""
    pod = start_pod(tmp, tmp / "no-model.gguf", ("sidecar", "nginx"), extra_env=extra_env)
    engine = Proc("echo-engine", [python(), "-m", "tests.nginx.echo_engine", str(pod.ports.engine)], {}, tmp)
    pod.procs["engine"] = engine
    try:
        wait_until(lambda: http_get(pod.base + "/v1/models", 1)[0] == 401, 30, what="nginx and the sidecar")
        wait_until(
            lambda: http_get(f"http://127.0.0.1:{pod.ports.engine}/v1/x", 1)[0] == 200, 30, what="echo"
        )
    except AssertionError:
        logs = pod.logs()
        stop_pod(pod)
        raise AssertionError("echo pod did not start:\n" + logs) from None
    return pod


def stop_pod(pod: Pod) -> None:
    for proc in reversed(list(pod.procs.values())):
        proc.stop()


@pytest.fixture(scope="session")
def pod(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[Pod]:
    """The whole pod, ready: the engine lists the model and /ready says so."""
    pod = start_pod(tmp_path_factory.mktemp("pod"), model_path, ("engine", "sidecar", "nginx"))
    try:
        wait_until(lambda: http_get(pod.base + "/ready")[0] == 200, 180, 0.1, "the pod to be ready")
    except AssertionError:
        stop_pod(pod)
        raise AssertionError("pod did not become ready:\n" + pod.logs()) from None
    yield pod
    stop_pod(pod)


@pytest.fixture(scope="session", autouse=True)
def no_credential_in_any_process_log() -> Iterator[None]:
    """After every test: no line any process of the pod wrote (sidecar, nginx, engine, redis, ...) holds
    a key, a JWT or a Bearer value, whichever test's traffic it carried."""
    yield
    leaked = credentials_in_logs()
    assert not leaked, "credentials reached process logs:\n" + "\n".join(leaked[:20])
