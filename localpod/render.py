"""Render the nginx template: envsubst's behaviour, restricted to `${LLM_POD_*}` names.

The image renders the same file with envsubst; a test checks that both give the same bytes.
Unlike a bare envsubst, a placeholder with no value is an error, not an empty string.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path

TEMPLATE = Path(__file__).resolve().parent.parent / "nginx" / "llm-pod.conf.template"
PLACEHOLDER = re.compile(r"\$\{(LLM_POD_[A-Z0-9_]+)\}")

# What the template needs besides the served model; the chart renders every one of them too.
DEFAULTS = {
    "LLM_POD_LISTEN_PORT": "8080",
    "LLM_POD_METRICS_PORT": "9090",
    "LLM_POD_SIDECAR_PORT": "8081",
    "LLM_POD_ENGINE_PORT": "8000",
    "LLM_POD_REQUEST_END_PORT": "8082",
    "LLM_POD_MAX_BODY_SIZE": "16m",
    "LLM_POD_PROXY_READ_TIMEOUT": "900s",
}


# The per-model path prefix nginx strips: one or more path segments, no trailing slash.
PATH_PREFIX = re.compile(r"(/[A-Za-z0-9._~:-]+)+")


class RenderError(ValueError):
    pass


def with_defaults(env: Mapping[str, str]) -> dict[str, str]:
    """The template's values: DEFAULTS, then `env`; the path prefix defaults to /<served model>."""
    values = {**DEFAULTS, **env}
    if not values.get("LLM_POD_PATH_PREFIX") and values.get("LLM_POD_SERVED_MODEL"):
        values["LLM_POD_PATH_PREFIX"] = "/" + values["LLM_POD_SERVED_MODEL"]
    return values


def placeholders(text: str) -> set[str]:
    return set(PLACEHOLDER.findall(text))


def render(text: str, env: Mapping[str, str]) -> str:
    missing = sorted(name for name in placeholders(text) if not env.get(name))
    if missing:
        raise RenderError("the nginx template needs: " + ", ".join(missing))
    unsafe = sorted(n for n in placeholders(text) if re.search(r"[\s;{}'\"$\\]", env[n]))
    if unsafe:
        raise RenderError("these values would break the nginx config: " + ", ".join(unsafe))
    prefix = env.get("LLM_POD_PATH_PREFIX")
    if prefix is not None and not PATH_PREFIX.fullmatch(prefix):
        raise RenderError(f"LLM_POD_PATH_PREFIX must look like /name or /a/b, not {prefix!r}")
    return PLACEHOLDER.sub(lambda m: env[m.group(1)], text)


def render_to(prefix: Path, env: Mapping[str, str], template: Path = TEMPLATE) -> Path:
    """Write `<prefix>/llm-pod.conf` for `nginx -p <prefix> -c <prefix>/llm-pod.conf`."""
    prefix.mkdir(parents=True, exist_ok=True)
    out = prefix / "llm-pod.conf"
    out.write_text(render(template.read_text(encoding="utf-8"), with_defaults(env)), encoding="utf-8")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("prefix", type=Path, help="nginx prefix directory (writable)")
    args = parser.parse_args(argv)
    try:
        print(render_to(args.prefix, os.environ))
    except RenderError as err:
        print(err, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
