"""The sidecar's configuration: read once from ``LLM_POD_*`` environment variables, validated as a whole."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

PREFIX = "LLM_POD_"

# A served model name becomes an nginx location prefix (/<model>/v1/...) and a Prometheus label:
# keep it to characters that are literal in both.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

T = TypeVar("T")


class SettingsError(ValueError):
    """Every problem found in the environment, one per line."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("invalid llm-pod settings:\n" + "\n".join(f"  - {p}" for p in problems))


@dataclass(frozen=True, slots=True)
class Settings:
    served_model: str
    engine_port: int = 8000
    sidecar_host: str = "127.0.0.1"
    sidecar_port: int = 8081
    api_keys_file: Path | None = None
    drain_seconds: float = 15.0
    ready_poll_fast: float = 0.1
    ready_poll_slow: float = 1.0
    engine_probe_timeout: float = 1.0
    log_level: str = "INFO"

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise SettingsError(problems)

    @property
    def engine_url(self) -> str:
        # The engine listens on loopback only, by design: it is never addressed by another host.
        return f"http://127.0.0.1:{self.engine_port}"

    def problems(self) -> list[str]:
        found: list[str] = []
        if not MODEL_NAME.match(self.served_model):
            found.append(
                f"{PREFIX}SERVED_MODEL={self.served_model!r}: use 1-128 characters from "
                "letters, digits and . _ : / -, starting with a letter or digit"
            )
        for name, port in (("ENGINE_PORT", self.engine_port), ("SIDECAR_PORT", self.sidecar_port)):
            if not 1 <= port <= 65535:
                found.append(f"{PREFIX}{name}={port}: a TCP port is 1-65535")
        if self.engine_port == self.sidecar_port:
            found.append(f"{PREFIX}ENGINE_PORT and {PREFIX}SIDECAR_PORT are both {self.engine_port}")
        if self.api_keys_file is None:
            found.append(
                f"{PREFIX}API_KEYS_FILE is not set: with no credential source every request would be "
                "refused (make a key with `python -m sidecar keys create --file PATH`)"
            )
        elif not self.api_keys_file.is_file():
            found.append(f"{PREFIX}API_KEYS_FILE={self.api_keys_file}: no such file")
        if self.drain_seconds < 0:
            found.append(f"{PREFIX}DRAIN_SECONDS={self.drain_seconds}: must be >= 0")
        if not 0.01 <= self.ready_poll_fast <= self.ready_poll_slow:
            found.append(
                f"{PREFIX}READY_POLL_FAST={self.ready_poll_fast} / {PREFIX}READY_POLL_SLOW="
                f"{self.ready_poll_slow}: need 0.01 <= fast <= slow"
            )
        if self.ready_poll_slow > 5:
            found.append(f"{PREFIX}READY_POLL_SLOW={self.ready_poll_slow}: above 5 s a dead engine stays ready too long")
        if not 0.05 <= self.engine_probe_timeout <= 30:
            found.append(f"{PREFIX}ENGINE_PROBE_TIMEOUT={self.engine_probe_timeout}: must be 0.05-30 s")
        if self.log_level not in LOG_LEVELS:
            found.append(f"{PREFIX}LOG_LEVEL={self.log_level!r}: one of {', '.join(LOG_LEVELS)}")
        return found

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Build settings from the environment; raise one SettingsError naming every problem."""
        env = os.environ if environ is None else environ
        problems: list[str] = []

        def get(name: str, convert: Callable[[str], T]) -> T:
            default: T = _FIELDS[name.lower()].default  # type: ignore[assignment]
            raw = env.get(PREFIX + name)
            if raw is None or raw == "":
                return default
            try:
                return convert(raw.strip())
            except ValueError:
                problems.append(f"{PREFIX}{name}={raw!r}: expected {getattr(convert, '__name__', convert)}")
                return default

        served_model = env.get(PREFIX + "SERVED_MODEL", "").strip()
        if not served_model:
            problems.append(f"{PREFIX}SERVED_MODEL is required: the model id the engine lists in /v1/models")
        keys_file = env.get(PREFIX + "API_KEYS_FILE", "").strip()
        values = {
            "engine_port": get("ENGINE_PORT", int),
            "sidecar_host": get("SIDECAR_HOST", str),
            "sidecar_port": get("SIDECAR_PORT", int),
            "api_keys_file": Path(keys_file) if keys_file else None,
            "drain_seconds": get("DRAIN_SECONDS", float),
            "ready_poll_fast": get("READY_POLL_FAST", float),
            "ready_poll_slow": get("READY_POLL_SLOW", float),
            "engine_probe_timeout": get("ENGINE_PROBE_TIMEOUT", float),
            "log_level": get("LOG_LEVEL", str.upper),
        }
        try:
            settings = cls(served_model=served_model or "unset", **values)  # type: ignore[arg-type]
        except SettingsError as err:
            problems.extend(p for p in err.problems if not (not served_model and "SERVED_MODEL=" in p))
        if problems:
            raise SettingsError(problems)
        return settings


_FIELDS = {f.name: f for f in fields(Settings)}
