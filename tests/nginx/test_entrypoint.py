"""The nginx image's entrypoint (nginx/entrypoint.sh), run for real with the Debian nginx: it renders
the one template from the environment and serves; a missing setting stops it with the names."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from localpod.render import DEFAULTS, TEMPLATE, RenderError, render
from tests.conftest import http_get
from tests.harness import ROOT, Proc, free_port, require_tool, wait_until

ENTRYPOINT = ROOT / "nginx" / "entrypoint.sh"


def image_env(tmp: Path) -> dict[str, str]:
    env = {**DEFAULTS, "LLM_POD_SERVED_MODEL": "m1", "LLM_POD_NGINX_TEMPLATE": str(TEMPLATE)}
    env.update({name: str(free_port()) for name in DEFAULTS if name.endswith("_PORT")})
    env["LLM_POD_NGINX_PREFIX"] = str(tmp / "prefix")
    return env


def test_entrypoint_renders_the_template_and_serves(tmp_path: Path) -> None:
    require_tool("nginx")
    require_tool("envsubst")
    env = image_env(tmp_path)
    proc = Proc("nginx-image", ["sh", str(ENTRYPOINT)], env, tmp_path)
    try:
        base = f"http://127.0.0.1:{env['LLM_POD_LISTEN_PORT']}"
        wait_until(lambda: http_get(base + "/nowhere")[0] == 404, 10, 0.05, "nginx from the entrypoint")
        status, _, body = http_get(base + "/nowhere")
        assert b'"code":"not_found"' in body
        assert b"/m1/v1/" in body  # the served model was substituted
        conf = (tmp_path / "prefix" / "llm-pod.conf").read_text()
        assert not re.search(r"\$\{LLM_POD_[A-Z0-9_]+\}", conf)
        assert "$llm_request_id" in conf  # nginx's own variables were left alone
        status, _, _ = http_get(base + "/ready")
        assert status == 503  # no sidecar behind it: an OpenAI-shaped 503, not a hang
    finally:
        proc.stop()


def test_entrypoint_names_every_missing_setting(tmp_path: Path) -> None:
    env = image_env(tmp_path)
    env["LLM_POD_ENGINE_PORT"] = ""
    env["LLM_POD_SERVED_MODEL"] = ""
    done = subprocess.run(
        ["sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=10, check=False
    )
    assert done.returncode == 2
    assert "LLM_POD_ENGINE_PORT" in done.stderr
    assert "LLM_POD_SERVED_MODEL" in done.stderr


def test_entrypoint_routes_a_configured_path_prefix(tmp_path: Path) -> None:
    """A gateway's own per-model prefix (LLM_POD_PATH_PREFIX) is the one nginx strips; the default
    /<served model> is then unknown. No sidecar runs here: the prefix reaching auth (503) shows the route."""
    require_tool("nginx")
    require_tool("envsubst")
    env = {**image_env(tmp_path), "LLM_POD_PATH_PREFIX": "/models/m1"}
    proc = Proc("nginx-prefix", ["sh", str(ENTRYPOINT)], env, tmp_path)
    try:
        base = f"http://127.0.0.1:{env['LLM_POD_LISTEN_PORT']}"
        wait_until(lambda: http_get(base + "/nowhere")[0] == 404, 10, 0.05, "nginx from the entrypoint")
        status, _, body = http_get(base + "/models/m1/v1/models")
        assert status == 503
        assert b'"code":"auth_unavailable"' in body
        status, _, body = http_get(base + "/m1/v1/models")
        assert status == 404
        assert b"/models/m1/v1/" in body
    finally:
        proc.stop()


@pytest.mark.parametrize("prefix", ["/m1/", "models", "~x", "/a//b", "/a b"])
def test_entrypoint_refuses_a_malformed_path_prefix(tmp_path: Path, prefix: str) -> None:
    """The same rule as localpod.render and the chart: /name or /a/b, nothing nginx would misread."""
    with pytest.raises(RenderError):
        render("${LLM_POD_PATH_PREFIX}", {"LLM_POD_PATH_PREFIX": prefix})
    env = {**image_env(tmp_path), "LLM_POD_PATH_PREFIX": prefix}
    done = subprocess.run(
        ["sh", str(ENTRYPOINT)], env=env, capture_output=True, text=True, timeout=10, check=False
    )
    assert done.returncode == 2
    assert "LLM_POD_PATH_PREFIX" in done.stderr
