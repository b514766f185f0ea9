"""The three images, built from the Dockerfiles with podman and run as one pod: the llama.cpp engine
image serving the bundled model, the sidecar image, the nginx image, each as its own container on a
read-only root filesystem, as uid 10001, with every capability dropped, as the chart runs them.

The containers share the host's network namespace (as a pod's containers share one): the engine
and the sidecar on 127.0.0.1, nginx on a free port. The upstream base images come from no registry
here: tests/images/podman.py builds labelled STAND-INS for them (see there)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import openai
import pytest

from localpod.pod import BUNDLED_CHAT_FORMAT, BUNDLED_MODEL_NAME
from localpod.render import DEFAULTS
from sidecar.keys import add_key
from tests.conftest import http_get
from tests.harness import PROC_LOGS, ROOT, free_port, wait_until
from tests.images.podman import IMAGES, STAND_INS, ImageError, bases, build, podman

# Building the images is part of the fixture: the engine image compiles for ~10 minutes the first
# time on a machine (later builds reuse its layers).
pytestmark = pytest.mark.timeout(2400)

UID = 10001
HARDENED = ["--read-only", "--cap-drop", "ALL", "--security-opt", "no-new-privileges", "--user", str(UID)]


def built(name: str) -> str:
    try:
        return build(name)
    except ImageError as err:
        pytest.fail(str(err), pytrace=False)


def test_every_base_image_has_a_stand_in_recipe() -> None:
    for dockerfile, _ in IMAGES.values():
        for base in bases(ROOT / dockerfile):
            assert base.rsplit(":", 1)[0] in STAND_INS, f"{dockerfile}: FROM {base}"


@dataclass
class ContainerPod:
    name: str
    ports: dict[str, int]
    key: str = field(repr=False)
    containers: list[str] = field(default_factory=list)

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.ports['LISTEN']}"

    def run(self, container: str, image: str, *args: str, env: dict[str, str], extra: list[str]) -> None:
        full = f"{self.name}-{container}"
        flags = [f for k, v in env.items() for f in ("--env", f"{k}={v}")]
        podman("run", "--detach", "--name", full, "--network=host", *HARDENED, *flags, *extra, image, *args)
        self.containers.append(full)

    def logs(self) -> str:
        return "\n".join(
            f"--- {c}\n" + podman("logs", c, check=False).stdout + podman("logs", c, check=False).stderr
            for c in self.containers
        )


@pytest.fixture(scope="module")
def container_pod(tmp_path_factory: pytest.TempPathFactory, model_path: Path) -> Iterator[ContainerPod]:
    images = {name: built(name) for name in ("llamacpp", "sidecar", "nginx")}
    tmp = tmp_path_factory.mktemp("container-pod")
    keys = tmp / "keys.yaml"
    key = add_key(keys, "container-tester", priority=3)
    os.chown(keys, UID, UID)  # a mounted Secret is readable by the pod's user (fsGroup in the chart)
    ports = {name: free_port() for name in ("LISTEN", "METRICS", "SIDECAR", "ENGINE", "REQUEST_END")}
    env = {f"LLM_POD_{name}_PORT": str(port) for name, port in ports.items()}
    env["LLM_POD_SERVED_MODEL"] = BUNDLED_MODEL_NAME
    pod = ContainerPod(f"llm-pod-test-{os.getpid()}", ports, key)
    try:
        pod.run(
            "engine",
            images["llamacpp"],
            env={
                **env,
                "LLM_POD_MODEL_PATH": "/models/model.gguf",
                "LLM_POD_CHAT_FORMAT": BUNDLED_CHAT_FORMAT,
                "LLM_POD_CTX_SIZE": "2048",
                "LLM_POD_THREADS": "2",
            },
            extra=["--volume", f"{model_path}:/models/model.gguf:ro"],
        )
        pod.run(
            "sidecar",
            images["sidecar"],
            env={
                **env,
                "LLM_POD_API_KEYS_FILE": "/etc/llm-pod/keys.yaml",
                "LLM_POD_DRAIN_SECONDS": "1",
                "LLM_POD_NGINX_STATUS_URL": f"http://127.0.0.1:{ports['METRICS']}/nginx_status",
            },
            extra=["--volume", f"{keys}:/etc/llm-pod/keys.yaml:ro"],
        )
        # nginx writes only under its prefix: an emptyDir in the chart, a tmpfs here.
        nginx_env = {**DEFAULTS, **env}  # body size and read timeout, as the chart sets them
        prefix = ["--tmpfs", "/var/lib/llm-pod/nginx:rw,mode=1777"]
        pod.run("nginx", images["nginx"], env=nginx_env, extra=prefix)
        try:
            wait_until(lambda: http_get(pod.base + "/ready")[0] == 200, 240, 0.2, "the pod to be ready")
        except AssertionError:
            raise AssertionError("the container pod did not become ready:\n" + pod.logs()[-6000:]) from None
        yield pod
    finally:
        logs = pod.logs()
        for container in reversed(pod.containers):
            podman("rm", "--force", "--time", "5", container, check=False)
        saved = tmp / "containers.log"
        saved.write_text(logs)
        PROC_LOGS.append(saved)  # the session's last check reads these too: no credential in them


def test_the_pod_from_the_images_answers_a_chat_completion(container_pod: ContainerPod) -> None:
    base, key = container_pod.base, container_pod.key
    with openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0) as client:
        reply = client.chat.completions.create(
            model=BUNDLED_MODEL_NAME, messages=[{"role": "user", "content": "Say hello"}], max_tokens=8
        )
    assert reply.choices[0].message.content
    missing = httpx.get(container_pod.base + "/v1/models")
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    # The per-model path prefix routes in the image's nginx too.
    listed = httpx.get(
        f"{container_pod.base}/{BUNDLED_MODEL_NAME}/v1/models",
        headers={"Authorization": f"Bearer {container_pod.key}"},
    )
    assert listed.status_code == 200
    assert BUNDLED_MODEL_NAME in {m["id"] for m in listed.json()["data"]}


def test_each_container_runs_hardened(container_pod: ContainerPod) -> None:
    for container in container_pod.containers:
        uid = podman("exec", container, "id", "-u").stdout.strip()
        assert uid == str(UID), container
        wrote = podman("exec", container, "touch", "/usr/local/llm-pod-was-here", check=False)
        assert wrote.returncode != 0, f"{container}: the root filesystem is writable"
        caps = podman("exec", container, "grep", "CapEff", "/proc/self/status").stdout.split()[-1]
        assert int(caps, 16) == 0, f"{container}: effective capabilities {caps}"


def test_the_engine_and_the_sidecar_listen_on_loopback_only(container_pod: ContainerPod) -> None:
    # All containers share one network namespace (the host's here): read who listens where.
    listening = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(FileNotFoundError), open(table, encoding="ascii") as f:
            for line in f.read().splitlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                if state == "0A":  # LISTEN
                    address, port = local.rsplit(":", 1)
                    listening.setdefault(int(port, 16), set()).add(address)
    for name in ("ENGINE", "SIDECAR"):
        assert listening[container_pod.ports[name]] == {"0100007F"}, name  # 127.0.0.1 only
