from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sidecar.settings import Settings, SettingsError


def test_defaults_from_a_minimal_environment(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys: []\n")
    s = Settings.from_env({"LLM_POD_SERVED_MODEL": "org/model-7b:q4", "LLM_POD_API_KEYS_FILE": str(keys)})
    assert s.served_model == "org/model-7b:q4"
    assert s.engine_url == "http://127.0.0.1:8000"
    assert (s.sidecar_host, s.sidecar_port, s.drain_seconds) == ("127.0.0.1", 8081, 15.0)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(
            {
                "LLM_POD_ENGINE_PORT": "eighty",
                "LLM_POD_SIDECAR_PORT": "70000",
                "LLM_POD_READY_POLL_FAST": "3",
                "LLM_POD_READY_POLL_SLOW": "2",
                "LLM_POD_LOG_LEVEL": "chatty",
                "LLM_POD_API_KEYS_FILE": "/nonexistent/keys.yaml",
            }
        )
    text = str(caught.value)
    for expected in (
        "LLM_POD_SERVED_MODEL is required",
        "LLM_POD_ENGINE_PORT='eighty'",
        "LLM_POD_SIDECAR_PORT=70000",
        "LLM_POD_READY_POLL_FAST=3.0",
        "LLM_POD_LOG_LEVEL='CHATTY'",
        "LLM_POD_API_KEYS_FILE=/nonexistent/keys.yaml: no such file",
    ):
        assert expected in text
    assert len(caught.value.problems) == 6


@pytest.mark.parametrize("name", ["bad name", "x;rm", "/leading-slash", "a" * 129, "quote'd"])
def test_model_names_that_would_break_nginx_are_refused(tmp_path: Path, name: str) -> None:
    keys = tmp_path / "k.yaml"
    keys.write_text("keys: []\n")
    with pytest.raises(SettingsError, match="SERVED_MODEL"):
        Settings(served_model=name, api_keys_file=keys)


def test_no_credential_source_is_a_config_error() -> None:
    with pytest.raises(SettingsError, match="are all unset: with no credential source"):
        Settings(served_model="m")


def test_settings_are_frozen(tmp_path: Path) -> None:
    keys = tmp_path / "k.yaml"
    keys.write_text("keys: []\n")
    s = Settings(served_model="m", api_keys_file=keys)
    with pytest.raises(AttributeError):
        s.served_model = "other"  # type: ignore[misc]


def test_jwt_settings_refuse_a_short_secret_and_a_key_source_of_the_other_family(tmp_path: Path) -> None:
    secret = tmp_path / "jwt-secret"
    secret.write_text("x" * 40 + "\n")  # long enough for HS256 (32 bytes), not for HS512 (64)
    env = {
        "LLM_POD_SERVED_MODEL": "m",
        "LLM_POD_JWT_ISSUER": "https://issuer.test",
        "LLM_POD_JWT_AUDIENCE": "llm-pod",
        "LLM_POD_JWT_SECRET_FILE": str(secret),
    }
    assert Settings.from_env({**env, "LLM_POD_JWT_ALGORITHMS": "HS256"}).jwt_enabled
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(
            {**env, "LLM_POD_JWT_ALGORITHMS": "HS512", "LLM_POD_JWT_JWKS_URL": "https://issuer.test/jwks"}
        )
    assert caught.value.problems == [
        "LLM_POD_JWT_SECRET_FILE holds a 40-byte secret: HS512 needs at least 64 bytes",
        "LLM_POD_JWT_JWKS_URL is set but LLM_POD_JWT_ALGORITHMS are HMAC: the JWKS would never be used; "
        "unset one",
    ]
    with pytest.raises(SettingsError, match="JWT_SECRET_FILE is set but LLM_POD_JWT_ALGORITHMS are asym"):
        Settings.from_env(
            {**env, "LLM_POD_JWT_ALGORITHMS": "ES256", "LLM_POD_JWT_JWKS_URL": "https://issuer.test/jwks"}
        )


def test_a_jwt_audience_alone_is_not_silently_ignored() -> None:
    with pytest.raises(SettingsError) as caught:
        Settings.from_env({"LLM_POD_SERVED_MODEL": "m", "LLM_POD_JWT_AUDIENCE": "llm-pod"})
    assert "LLM_POD_JWT_ALGORITHMS is required with JWTs, e.g. RS256 or HS256" in caught.value.problems


def test_a_broken_keys_file_is_a_settings_problem(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys:\n  - id: a\n    sha256: not-a-hash\n")
    with pytest.raises(SettingsError) as caught:
        Settings.from_env(
            {"LLM_POD_SERVED_MODEL": "m", "LLM_POD_API_KEYS_FILE": str(keys), "LLM_POD_ENGINE_PORT": "x"}
        )
    assert len(caught.value.problems) == 2  # the file and the port, in one message
    assert "LLM_POD_API_KEYS_FILE" in str(caught.value)


def test_the_sidecar_binds_loopback_only(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys: []\n")
    with pytest.raises(SettingsError, match=r"SIDECAR_HOST='0\.0\.0\.0'"):
        Settings(served_model="m", api_keys_file=keys, sidecar_host="0.0.0.0")


def test_the_sidecar_stops_with_one_message_on_a_broken_keys_file(tmp_path: Path) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text("keys: [ {id: a, sha256: 'x'\n")  # not even YAML
    env = {**os.environ, "LLM_POD_SERVED_MODEL": "m", "LLM_POD_API_KEYS_FILE": str(keys)}
    done = subprocess.run(
        [sys.executable, "-m", "sidecar"], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert done.returncode == 2
    assert done.stderr.startswith("invalid llm-pod settings:")
    assert "LLM_POD_API_KEYS_FILE" in done.stderr
    assert "Traceback" not in done.stderr


def test_jwks_refetch_bounds_are_checked() -> None:
    jwt = {
        "served_model": "m",
        "jwt_issuer": "https://issuer.test",
        "jwt_audience": "llm-pod",
        "jwt_algorithms": ("RS256",),
        "jwt_jwks_url": "https://issuer.test/jwks.json",
    }
    Settings(**jwt)
    with pytest.raises(SettingsError) as caught:
        Settings(**jwt, jwt_jwks_cooldown=-1, jwt_jwks_cache_seconds=-1)
    text = str(caught.value)
    assert "JWT_JWKS_COOLDOWN=-1" in text
    assert "JWT_JWKS_CACHE_SECONDS=-1" in text
