"""Fixtures that start the real pod: the llama-cpp-python engine with the bundled model, the sidecar
and nginx, each on a free loopback port. The engine is started once per session (it takes a few
seconds to load); tests that kill an engine start one of their own."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from inference.fetch_model import fetch
from localpod.__main__ import model_cache
from localpod.pod import BUNDLED_MODEL_NAME, BUNDLED_MODEL_SOURCE, Ports, commands, pod_env, prepare_nginx
from sidecar.keys import add_key
from tests.harness import Proc, free_port, python, require_tool, wait_until


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
    key: str
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
        listen=free_port(), metrics=free_port(), sidecar=free_port(), engine=free_port(), request_end=free_port()
    )


def start_pod(tmp: Path, model_path: Path, parts: tuple[str, ...], ports: Ports | None = None) -> Pod:
    """Start the named parts of a pod (engine, sidecar, nginx) and return it; waits for nothing."""
    require_tool("nginx")
    ports = ports or new_ports()
    keys_file = tmp / "keys.yaml"
    key = add_key(keys_file, "tester", priority=5)
    env = pod_env(ports, model_path, keys_file, drain_seconds=1.0)
    env["LLM_POD_THREADS"] = "2"
    prefix = tmp / "nginx"
    prepare_nginx(prefix, env)
    cmds = commands(prefix, python())
    procs = {name: Proc(name, cmds[name], env, tmp) for name in parts}
    return Pod(ports, env, key, keys_file, procs)


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
