"""`make run`'s runner for real: honcho starts the three processes, the printed key and the printed
curl example work, and Ctrl-C stops everything."""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import openai
import pytest

from localpod.__main__ import ports_from_env, run_env
from localpod.pod import BUNDLED_MODEL_NAME
from tests.conftest import http_get
from tests.harness import Proc, free_port, python, require_tool, wait_until


def run_bash(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, check=False)


def test_make_run_prints_a_working_key_and_example(tmp_path: Path) -> None:
    require_tool("nginx")
    ports = {name: free_port() for name in ("LISTEN", "METRICS", "SIDECAR", "ENGINE", "REQUEST_END")}
    env = {f"LLM_POD_{name}_PORT": str(port) for name, port in ports.items()}
    argv = [python(), "-m", "localpod", "--state-dir", str(tmp_path / "state")]
    runner = Proc("make-run", argv, env, tmp_path, shows_credentials=True)  # its banner prints the key
    base = f"http://127.0.0.1:{ports['LISTEN']}"
    try:
        key = wait_until(
            lambda: re.search(r"^\s+(sk-lp-\S+)$", runner.output(), re.M), 60, 0.1, "the key"
        ).group(1)
        wait_until(lambda: http_get(base + "/ready")[0] == 200, 180, 0.1, "the pod to be ready")

        with openai.OpenAI(base_url=base + "/v1", api_key=key, max_retries=0) as made:
            reply = made.chat.completions.create(
                model="gemma-3-270m", messages=[{"role": "user", "content": "Say hello"}], max_tokens=8
            )
        assert reply.choices[0].message.content

        # The curl example, exactly as printed (continuation lines and all), run by bash.
        output = runner.output()
        curl = output[output.index("curl http") : output.index("openai client:")].strip()
        done = run_bash(curl + " --fail-with-body -sS")
        assert done.returncode == 0, done.stderr + done.stdout
        assert '"chat.completion"' in done.stdout

        # The openai-client example, as printed: a heredoc run with the venv's python.
        client = output[
            output.index("openai client:") + len("openai client:") : output.index("Ctrl-C")
        ].strip()
        done = run_bash(client)
        assert done.returncode == 0, done.stderr + done.stdout
        assert done.stdout.strip(), "the openai example printed no answer"
        assert key not in "\n".join(
            line for line in output.splitlines() if "|" in line
        )  # not in process logs
    finally:
        runner.signal(signal.SIGINT)  # Ctrl-C, as a user stops it
        runner.popen.wait(30)
        code = runner.stop()  # already exited: collects the code and closes the log
    assert code in (0, 130, -signal.SIGINT), runner.output()[-2000:]
    for port in (p for name, p in ports.items() if name != "REQUEST_END"):  # that one is UDP
        wait_until(
            lambda p=port: http_get(f"http://127.0.0.1:{p}/", 0.5)[0] == 0, 10, what=f"port {port} to close"
        )


def test_make_run_honours_the_users_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's configuration table holds for `make run` too: every LLM_POD_* the user sets wins,
    but for the keys file (the printed key must work); another model drops the bundled chat format."""
    monkeypatch.setenv("LLM_POD_REQUEST_END_PORT", "18082")
    ports = ports_from_env(18080)
    assert (ports.listen, ports.request_end) == (18080, 18082)
    keys = tmp_path / "keys.yaml"
    bundled = run_env(ports, tmp_path / "gemma.gguf", keys, {})
    assert (bundled["LLM_POD_SERVED_MODEL"], bundled["LLM_POD_CHAT_FORMAT"]) == (BUNDLED_MODEL_NAME, "gemma")
    user = {
        "LLM_POD_MODEL_PATH": str(tmp_path / "qwen2.5-0.5b.gguf"),
        "LLM_POD_CTX_SIZE": "8192",
        "LLM_POD_API_KEYS_FILE": "/elsewhere.yaml",
        "HOME": "/root",
    }
    own = run_env(ports, tmp_path / "qwen2.5-0.5b.gguf", keys, user)
    assert own["LLM_POD_SERVED_MODEL"] == "qwen2.5-0.5b"
    assert own["LLM_POD_CHAT_FORMAT"] == ""  # the gguf's own chat template
    assert own["LLM_POD_CTX_SIZE"] == "8192"
    assert own["LLM_POD_API_KEYS_FILE"] == str(keys)
    assert own["LLM_POD_REQUEST_END_PORT"] == "18082"
    assert "HOME" not in own
    named = run_env(ports, tmp_path / "q.gguf", keys, {**user, "LLM_POD_SERVED_MODEL": "qwen"})
    assert named["LLM_POD_SERVED_MODEL"] == "qwen"
