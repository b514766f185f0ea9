from __future__ import annotations

from pathlib import Path

import pytest

from inference.llamacpp import EngineConfigError, engine_environ, server_args


def env(model: Path, **extra: str) -> dict[str, str]:
    return {"LLM_POD_MODEL_PATH": str(model), "LLM_POD_SERVED_MODEL": "gemma-3-270m", **extra}


def test_engine_always_binds_loopback_and_never_interrupts(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    args = server_args(
        env(model, LLM_POD_CHAT_FORMAT="gemma", LLM_POD_THREADS="3", LLM_POD_ENGINE_PORT="9123")
    )
    pairs = dict(zip(args[3::2], args[4::2], strict=False))
    assert pairs["--host"] == "127.0.0.1"
    assert pairs["--port"] == "9123"
    assert pairs["--model_alias"] == "gemma-3-270m"
    assert pairs["--chat_format"] == "gemma"
    assert pairs["--n_threads"] == "3"
    assert pairs["--interrupt_requests"] == "false"


def test_extra_args_cannot_move_the_engine_off_loopback(tmp_path: Path) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF")
    for extra in ("--host=0.0.0.0", "--hos 0.0.0.0", "--config_file x.yaml", "--conf x.json", "--po 1"):
        with pytest.raises(EngineConfigError, match="may not set --host"):
            server_args(env(model, LLM_POD_ENGINE_EXTRA_ARGS=extra))
    assert server_args(env(model, LLM_POD_ENGINE_EXTRA_ARGS="--flash_attn true"))[-2:] == [
        "--flash_attn",
        "true",
    ]


def test_every_problem_is_reported(tmp_path: Path) -> None:
    with pytest.raises(EngineConfigError) as caught:
        server_args({"LLM_POD_MODEL_PATH": str(tmp_path / "missing.gguf"), "LLM_POD_CTX_SIZE": "big"})
    text = str(caught.value)
    assert "missing.gguf: no such file" in text
    assert "LLM_POD_SERVED_MODEL is required" in text
    assert "LLM_POD_CTX_SIZE='big'" in text


def test_llama_settings_variables_are_dropped_from_the_engine_environment() -> None:
    cleaned = engine_environ(
        {"PORT": "5000", "HOST": "0.0.0.0", "API_KEY": "x", "N_CTX": "1", "CONFIG_FILE": "c", "PATH": "/bin"}
    )
    assert cleaned == {"PATH": "/bin"}
