"""Entrypoint of the llama-cpp-python engine: LLM_POD_* settings -> `python -m llama_cpp.server`.

The engine always binds 127.0.0.1: nginx, in the same pod, is its only client. The process is
replaced (exec), so signals from the supervisor reach the server itself.
"""

from __future__ import annotations

import os
import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path

DEFAULTS = {
    "LLM_POD_ENGINE_PORT": "8000",
    "LLM_POD_CTX_SIZE": "4096",
    "LLM_POD_THREADS": "0",
    "LLM_POD_CHAT_FORMAT": "",
    "LLM_POD_N_GPU_LAYERS": "0",
    "LLM_POD_ENGINE_EXTRA_ARGS": "",
}


class EngineConfigError(ValueError):
    pass


def available_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


# Flags the pod owns. --config_file would replace the whole command line, --host among it.
OWNED_FLAGS = ("--host", "--port", "--model_alias", "--interrupt_requests", "--config_file")


def owned_flag(arg: str) -> bool:
    """Whether `arg` names an owned flag, abbreviations included (argparse accepts any unique prefix)."""
    name = arg.split("=", 1)[0]
    return name.startswith("--") and len(name) > 2 and any(flag.startswith(name) for flag in OWNED_FLAGS)


def server_args(environ: Mapping[str, str]) -> list[str]:
    """The llama_cpp.server command line for these settings; every problem is reported at once."""
    env = {**DEFAULTS, **{k: v for k, v in environ.items() if k.startswith("LLM_POD_")}}
    problems: list[str] = []
    model = env.get("LLM_POD_MODEL_PATH", "")
    served = env.get("LLM_POD_SERVED_MODEL", "")
    if not model:
        problems.append("LLM_POD_MODEL_PATH is required: the .gguf file to serve")
    elif not Path(model).is_file():
        problems.append(f"LLM_POD_MODEL_PATH={model}: no such file")
    if not served:
        problems.append("LLM_POD_SERVED_MODEL is required: the id clients send as `model`")
    numbers: dict[str, int] = {}
    for name, low in (("ENGINE_PORT", 1), ("CTX_SIZE", 0), ("THREADS", 0), ("N_GPU_LAYERS", -1)):
        raw = env["LLM_POD_" + name]
        value = int(raw) if re.fullmatch(r"-?[0-9]+", raw.strip()) else None
        if value is None or value < low:
            problems.append(f"LLM_POD_{name}={raw!r}: expected an integer >= {low}")
        else:
            numbers[name] = value
    extra = shlex.split(env["LLM_POD_ENGINE_EXTRA_ARGS"])
    if any(owned_flag(a) for a in extra):
        problems.append(
            "LLM_POD_ENGINE_EXTRA_ARGS may not set --host, --port, --model_alias, --interrupt_requests "
            "or --config_file (or an abbreviation of one): the pod owns them"
        )
    if problems:
        raise EngineConfigError("invalid engine settings:\n" + "\n".join(f"  - {p}" for p in problems))
    threads = numbers["THREADS"] or available_cpus()
    args = [
        sys.executable, "-m", "llama_cpp.server",
        "--host", "127.0.0.1",
        "--port", str(numbers["ENGINE_PORT"]),
        "--model", model,
        "--model_alias", served,
        "--n_ctx", str(numbers["CTX_SIZE"]),
        "--n_threads", str(threads),
        "--n_threads_batch", str(threads),
        "--n_gpu_layers", str(numbers["N_GPU_LAYERS"]),
        # By default llama-cpp-python ends a running generation as soon as any other request waits
        # for the model, including a readiness probe's /v1/models. A shared pod queues instead.
        "--interrupt_requests", "false",
    ]  # fmt: skip
    if env["LLM_POD_CHAT_FORMAT"]:
        args += ["--chat_format", env["LLM_POD_CHAT_FORMAT"]]
    return args + extra


def engine_environ(environ: Mapping[str, str]) -> dict[str, str]:
    """The environment without variables llama_cpp.server would read as settings.

    Its settings are pydantic-settings models that read any environment variable named like a field
    (case-insensitive), and those win over the command line: a PORT set by a process runner or an
    API_KEY meant for something else would silently move or lock the engine.
    """
    from llama_cpp.server.settings import ModelSettings, ServerSettings  # noqa: PLC0415 - only at exec

    fields = {name.lower() for model in (ServerSettings, ModelSettings) for name in model.model_fields}
    fields.add("config_file")  # llama_cpp.server reads CONFIG_FILE itself: it would replace every flag
    return {k: v for k, v in environ.items() if k.lower() not in fields}


def main() -> int:
    try:
        args = server_args(os.environ)
    except EngineConfigError as err:
        print(err, file=sys.stderr)
        return 2
    os.execve(args[0], args, engine_environ(os.environ))  # noqa: S606 - replacing this process is the point


if __name__ == "__main__":
    sys.exit(main())
