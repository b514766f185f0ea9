"""`make run`: the pod on this machine with the bundled model, under honcho.

Fetches the model once (cached), makes a fresh API key for this run, renders the nginx config,
prints how to call the pod, then hands the three processes to honcho.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

from inference.fetch_model import FetchError, fetch
from localpod.pod import (
    BUNDLED_CHAT_FORMAT,
    BUNDLED_MODEL_NAME,
    BUNDLED_MODEL_SOURCE,
    Ports,
    commands,
    pod_env,
    prepare_nginx,
    procfile,
)
from localpod.render import DEFAULTS
from sidecar.keys import add_key

ROOT = Path(__file__).resolve().parent.parent


def model_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llm-pod" / "models" / "gemma3-270m-q4-k-m"


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        # As nginx and uvicorn do: a port held only by TIME_WAIT sockets of a stopped run is free.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def banner(port: int, key: str, model: str, python: str = sys.executable) -> str:
    base = f"http://127.0.0.1:{port}"
    return f"""
llm-pod is starting on {base} (model: {model}); it answers once {base}/ready says "ready".

  API key for this run (shown once; make run makes a new one each time):
    {key}

  curl:
    curl {base}/v1/chat/completions \\
      -H "Authorization: Bearer {key}" -H "Content-Type: application/json" \\
      -d '{{"model": "{model}", "messages": [{{"role": "user", "content": "Say hello"}}], "max_tokens": 64}}'

  openai client:
    {python} - <<'EOF'
from openai import OpenAI
client = OpenAI(base_url="{base}/v1", api_key="{key}")
messages = [{{"role": "user", "content": "Say hello"}}]
reply = client.chat.completions.create(model="{model}", messages=messages, max_tokens=64)
print(reply.choices[0].message.content)
EOF

  Ctrl-C stops the pod.
"""


def ports_from_env(listen: int) -> Ports:
    def port(name: str) -> int:
        return int(os.environ.get(f"LLM_POD_{name}_PORT") or DEFAULTS[f"LLM_POD_{name}_PORT"])

    return Ports(
        listen=listen,
        metrics=port("METRICS"),
        sidecar=port("SIDECAR"),
        engine=port("ENGINE"),
        request_end=port("REQUEST_END"),
    )


def run_env(ports: Ports, model_path: Path, keys_file: Path, environ: Mapping[str, str]) -> dict[str, str]:
    """The pod's environment: the bundled model's settings, then every LLM_POD_* the user set (README's
    configuration table), except the keys file: make run's key must be the one that works."""
    own_model = bool(environ.get("LLM_POD_MODEL_PATH"))
    env = pod_env(
        ports,
        model_path,
        keys_file,
        served_model=BUNDLED_MODEL_NAME if not own_model else model_path.stem,
        # the bundled model needs llama.cpp's `gemma` format; another model brings its own template
        chat_format=BUNDLED_CHAT_FORMAT if not own_model else "",
    )
    env.update(
        {k: v for k, v in environ.items() if k.startswith("LLM_POD_") and v and k != "LLM_POD_API_KEYS_FILE"}
    )
    env["LLM_POD_NGINX_STATUS_URL"] = f"http://127.0.0.1:{ports.metrics}/nginx_status"
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--state-dir", type=Path, default=ROOT / ".run")
    parser.add_argument("--port", type=int, default=int(os.environ.get("LLM_POD_LISTEN_PORT", "8080")))
    parser.add_argument("--prepare-only", action="store_true", help="do everything but start the processes")
    args = parser.parse_args(argv)

    ports = ports_from_env(args.port)
    busy = [str(p) for p in (ports.listen, ports.metrics, ports.sidecar, ports.engine) if not port_free(p)]
    if busy and not args.prepare_only:
        print(
            f"make run: port(s) {', '.join(busy)} already in use on 127.0.0.1 (another pod running?)",
            file=sys.stderr,
        )
        return 1
    own_model = os.environ.get("LLM_POD_MODEL_PATH")
    if own_model:
        model_path = Path(own_model).resolve()
        if not model_path.is_file():
            print(f"make run: LLM_POD_MODEL_PATH={own_model}: no such file", file=sys.stderr)
            return 1
    else:
        try:
            model_path = fetch(BUNDLED_MODEL_SOURCE, model_cache())
        except FetchError as err:
            print(f"make run: {err}", file=sys.stderr)
            return 1
    state = args.state_dir.resolve()
    keys_file = state / "keys.yaml"
    key = add_key(keys_file, "make-run")
    env = run_env(ports, model_path, keys_file, os.environ)
    env["LLM_POD_LISTEN_PORT"] = str(ports.listen)
    nginx_prefix = state / "nginx"
    prepare_nginx(nginx_prefix, env)
    cmds = commands(nginx_prefix)
    procfile_path = state / "Procfile"
    procfile_path.write_text(procfile(cmds), encoding="utf-8")
    print(banner(ports.listen, key, env["LLM_POD_SERVED_MODEL"]), flush=True)
    if args.prepare_only:
        return 0
    honcho = shutil.which("honcho", path=str(Path(sys.executable).parent)) or shutil.which("honcho")
    if honcho is None:
        print("make run: honcho is missing: pip install 'honcho>=2.0'", file=sys.stderr)
        return 1
    child_env = {**os.environ, **env, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    child_env["PATH"] = f"{Path(sys.executable).parent}:{child_env.get('PATH', '')}"
    os.execve(honcho, [honcho, "-f", str(procfile_path), "-d", str(ROOT), "start"], child_env)  # noqa: S606


if __name__ == "__main__":
    sys.exit(main())
