"""The sidecar's configuration: read once from ``LLM_POD_*`` environment variables, validated as a whole."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TypeVar

from sidecar.keys import KeyFileError, read_key_file

PREFIX = "LLM_POD_"
# The sidecar decides who may use the engine: only nginx, in the same pod, may reach it.
# nginx's upstream for it is 127.0.0.1 (the template), so that is the one address it may bind.
LOOPBACK_HOSTS = ("127.0.0.1",)

# A served model name becomes an nginx location prefix (/<model>/v1/...) and a Prometheus label:
# keep it to characters that are literal in both.
MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:/-]{0,127}$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
ENGINE_TYPES = ("llamacpp", "vllm")
# HMAC algorithms and the least secret length (bytes) each needs: its hash size (RFC 7518 3.2).
HMAC_ALGORITHMS = {"HS256": 32, "HS384": 48, "HS512": 64}
ASYMMETRIC_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512"}
)

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
    engine_hung_seconds: float = 900.0
    log_level: str = "INFO"
    engine_type: str = "llamacpp"
    nginx_status_url: str = ""  # nginx's stub_status, exported with the sidecar's metrics ("" = not)
    # Redis: shared keys and limits across replicas.
    redis_url: str = ""
    redis_prefix: str = "llm-pod"
    redis_timeout: float = 0.25
    redis_cache_seconds: float = 2.0  # also the bound on how long a revoked Redis key keeps working
    redis_stale_seconds: float = 60.0  # how long a cached Redis key keeps working while Redis is down
    # JWTs.
    jwt_issuer: str = ""
    jwt_audience: str = ""
    jwt_algorithms: tuple[str, ...] = ()
    jwt_jwks_url: str = ""
    jwt_secret_file: Path | None = None
    jwt_leeway: float = 30.0
    jwt_jwks_cooldown: float = 30.0
    jwt_jwks_cache_seconds: float = 600.0
    # Limits and admission.
    default_rpm: int = 0
    default_concurrency: int = 0
    lease_seconds: float = 900.0
    request_end_port: int = 8082
    saturation_queue: int = 0
    priority_min_under_load: int = 0

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
        if self.api_keys_file is None and not self.redis_url and not self.jwt_enabled:
            found.append(
                f"{PREFIX}API_KEYS_FILE, {PREFIX}REDIS_URL and {PREFIX}JWT_* are all unset: with no "
                "credential source every request would be refused "
                "(make a key with `python -m sidecar keys create --file PATH`)"
            )
        elif self.api_keys_file is not None and not self.api_keys_file.is_file():
            found.append(f"{PREFIX}API_KEYS_FILE={self.api_keys_file}: no such file")
        elif self.api_keys_file is not None:
            # Parsed once here so a broken file stops the sidecar with the other problems, before it serves.
            try:
                read_key_file(self.api_keys_file)
            except KeyFileError as err:
                found.append(f"{PREFIX}API_KEYS_FILE: {err}")
        if self.sidecar_host not in LOOPBACK_HOSTS:
            found.append(
                f"{PREFIX}SIDECAR_HOST={self.sidecar_host!r}: the sidecar answers nginx inside the pod only; "
                f"{', '.join(LOOPBACK_HOSTS)}"
            )
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            found.append(f"{PREFIX}REDIS_URL: must start with redis://, rediss:// or unix://")
        if not 0.01 <= self.redis_timeout <= 5:
            found.append(f"{PREFIX}REDIS_TIMEOUT={self.redis_timeout}: must be 0.01-5 s")
        if not 0 <= self.redis_cache_seconds <= 60:
            found.append(f"{PREFIX}REDIS_CACHE_SECONDS={self.redis_cache_seconds}: must be 0-60 s")
        if self.redis_stale_seconds < self.redis_cache_seconds:
            found.append(f"{PREFIX}REDIS_STALE_SECONDS must be >= {PREFIX}REDIS_CACHE_SECONDS")
        found.extend(self._jwt_problems())
        if self.nginx_status_url and not self.nginx_status_url.startswith("http://127.0.0.1:"):
            found.append(
                f"{PREFIX}NGINX_STATUS_URL: nginx's stub_status is read on loopback, http://127.0.0.1:PORT/..."
            )
        if self.engine_type not in ENGINE_TYPES:
            found.append(f"{PREFIX}ENGINE_TYPE={self.engine_type!r}: one of {', '.join(ENGINE_TYPES)}")
        for name, value in (
            ("DEFAULT_RPM", self.default_rpm),
            ("DEFAULT_CONCURRENCY", self.default_concurrency),
            ("SATURATION_QUEUE", self.saturation_queue),
        ):
            if value < 0:
                found.append(f"{PREFIX}{name}={value}: must be >= 0 (0 turns it off)")
        if not 1 <= self.request_end_port <= 65535 or self.request_end_port in (
            self.engine_port,
            self.sidecar_port,
        ):
            found.append(f"{PREFIX}REQUEST_END_PORT={self.request_end_port}: a free TCP/UDP port, 1-65535")
        if self.lease_seconds < 1:
            found.append(f"{PREFIX}LEASE_SECONDS={self.lease_seconds}: must be >= 1")
        if self.drain_seconds < 0:
            found.append(f"{PREFIX}DRAIN_SECONDS={self.drain_seconds}: must be >= 0")
        if not 0.01 <= self.ready_poll_fast <= self.ready_poll_slow:
            found.append(
                f"{PREFIX}READY_POLL_FAST={self.ready_poll_fast} / {PREFIX}READY_POLL_SLOW="
                f"{self.ready_poll_slow}: need 0.01 <= fast <= slow"
            )
        if self.ready_poll_slow > 5:
            found.append(
                f"{PREFIX}READY_POLL_SLOW={self.ready_poll_slow}: "
                "above 5 s a dead engine stays ready too long"
            )
        if not 0.05 <= self.engine_probe_timeout <= 30:
            found.append(f"{PREFIX}ENGINE_PROBE_TIMEOUT={self.engine_probe_timeout}: must be 0.05-30 s")
        if self.engine_hung_seconds < 10 * self.engine_probe_timeout:
            found.append(
                f"{PREFIX}ENGINE_HUNG_SECONDS={self.engine_hung_seconds}: at least ten probe timeouts "
                f"({10 * self.engine_probe_timeout:g} s), or a busy engine would be taken out of service"
            )
        if self.log_level not in LOG_LEVELS:
            found.append(f"{PREFIX}LOG_LEVEL={self.log_level!r}: one of {', '.join(LOG_LEVELS)}")
        return found

    @property
    def jwt_enabled(self) -> bool:
        return bool(
            self.jwt_algorithms
            or self.jwt_issuer
            or self.jwt_audience
            or self.jwt_jwks_url
            or self.jwt_secret_file
        )

    def _jwt_problems(self) -> list[str]:
        if not self.jwt_enabled:
            return []
        found: list[str] = []
        algs = set(self.jwt_algorithms)
        unknown = algs - HMAC_ALGORITHMS.keys() - ASYMMETRIC_ALGORITHMS
        if not algs:
            found.append(f"{PREFIX}JWT_ALGORITHMS is required with JWTs, e.g. RS256 or HS256")
        if unknown:
            found.append(f"{PREFIX}JWT_ALGORITHMS: unknown or unsafe {', '.join(sorted(unknown))}")
        mixed = bool(algs & HMAC_ALGORITHMS.keys() and algs & ASYMMETRIC_ALGORITHMS)
        if mixed:
            found.append(
                f"{PREFIX}JWT_ALGORITHMS mixes HMAC and asymmetric algorithms: a public key could then be "
                "used as an HMAC secret; choose one family"
            )
        hmac_algs = sorted(algs & HMAC_ALGORITHMS.keys())
        if hmac_algs:
            if self.jwt_secret_file is None:
                found.append(f"{PREFIX}JWT_SECRET_FILE is required for {', '.join(hmac_algs)}")
            elif not self.jwt_secret_file.is_file():
                found.append(f"{PREFIX}JWT_SECRET_FILE={self.jwt_secret_file}: no such file")
            else:
                # RFC 7518 3.2: an HMAC key at least as long as the hash. PyJWT only warns below that
                # (and refuses an empty key per request): refuse it here, once, at start.
                need = max(HMAC_ALGORITHMS[a] for a in hmac_algs)
                try:
                    have = len(read_secret(self.jwt_secret_file))
                except OSError as err:
                    found.append(
                        f"{PREFIX}JWT_SECRET_FILE={self.jwt_secret_file}: unreadable ({err.strerror})"
                    )
                    have = need
                if have < need:
                    found.append(
                        f"{PREFIX}JWT_SECRET_FILE holds a {have}-byte secret: "
                        f"{', '.join(hmac_algs)} needs at least {need} bytes"
                    )
            if self.jwt_jwks_url and not mixed:
                found.append(
                    f"{PREFIX}JWT_JWKS_URL is set but {PREFIX}JWT_ALGORITHMS are HMAC: "
                    "the JWKS would never be used; unset one"
                )
        if algs & ASYMMETRIC_ALGORITHMS:
            if not self.jwt_jwks_url.startswith(("https://", "http://")):
                found.append(f"{PREFIX}JWT_JWKS_URL (http(s)://...) is required for asymmetric algorithms")
            if self.jwt_secret_file is not None and not mixed:
                found.append(
                    f"{PREFIX}JWT_SECRET_FILE is set but {PREFIX}JWT_ALGORITHMS are asymmetric: "
                    "the secret would never be used; unset one"
                )
        if not self.jwt_issuer:
            found.append(f"{PREFIX}JWT_ISSUER is required with JWTs (the iss every token must carry)")
        if not self.jwt_audience:
            found.append(f"{PREFIX}JWT_AUDIENCE is required with JWTs (the aud every token must carry)")
        if not 0 <= self.jwt_leeway <= 300:
            found.append(f"{PREFIX}JWT_LEEWAY={self.jwt_leeway}: must be 0-300 s")
        # The cooldown bounds how often a flood of made-up kids makes the sidecar fetch the JWKS.
        if not 0 <= self.jwt_jwks_cooldown <= 3600:
            found.append(f"{PREFIX}JWT_JWKS_COOLDOWN={self.jwt_jwks_cooldown}: must be 0-3600 s")
        if not 0 <= self.jwt_jwks_cache_seconds <= 86400:
            found.append(f"{PREFIX}JWT_JWKS_CACHE_SECONDS={self.jwt_jwks_cache_seconds}: must be 0-86400 s")
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
        secret_file = env.get(PREFIX + "JWT_SECRET_FILE", "").strip()
        values = {
            "engine_port": get("ENGINE_PORT", int),
            "sidecar_host": get("SIDECAR_HOST", str),
            "sidecar_port": get("SIDECAR_PORT", int),
            "api_keys_file": Path(keys_file) if keys_file else None,
            "drain_seconds": get("DRAIN_SECONDS", float),
            "ready_poll_fast": get("READY_POLL_FAST", float),
            "ready_poll_slow": get("READY_POLL_SLOW", float),
            "engine_probe_timeout": get("ENGINE_PROBE_TIMEOUT", float),
            "engine_hung_seconds": get("ENGINE_HUNG_SECONDS", float),
            "log_level": get("LOG_LEVEL", str.upper),
            "engine_type": get("ENGINE_TYPE", str.lower),
            "nginx_status_url": get("NGINX_STATUS_URL", str),
            "redis_url": get("REDIS_URL", str),
            "redis_prefix": get("REDIS_PREFIX", str),
            "redis_timeout": get("REDIS_TIMEOUT", float),
            "redis_cache_seconds": get("REDIS_CACHE_SECONDS", float),
            "redis_stale_seconds": get("REDIS_STALE_SECONDS", float),
            "jwt_issuer": get("JWT_ISSUER", str),
            "jwt_audience": get("JWT_AUDIENCE", str),
            "jwt_algorithms": get("JWT_ALGORITHMS", comma_list),
            "jwt_jwks_url": get("JWT_JWKS_URL", str),
            "jwt_secret_file": Path(secret_file) if secret_file else None,
            "jwt_leeway": get("JWT_LEEWAY", float),
            "jwt_jwks_cooldown": get("JWT_JWKS_COOLDOWN", float),
            "jwt_jwks_cache_seconds": get("JWT_JWKS_CACHE_SECONDS", float),
            "default_rpm": get("DEFAULT_RPM", int),
            "default_concurrency": get("DEFAULT_CONCURRENCY", int),
            "lease_seconds": get("LEASE_SECONDS", float),
            "request_end_port": get("REQUEST_END_PORT", int),
            "saturation_queue": get("SATURATION_QUEUE", int),
            "priority_min_under_load": get("PRIORITY_MIN_UNDER_LOAD", int),
        }
        try:
            settings = cls(served_model=served_model or "unset", **values)  # type: ignore[arg-type]
        except SettingsError as err:
            problems.extend(p for p in err.problems if not (not served_model and "SERVED_MODEL=" in p))
        if problems:
            raise SettingsError(problems)
        return settings


def read_secret(path: Path) -> bytes:
    """A secret from a mounted file, without the trailing newline an editor or `echo` leaves."""
    return path.read_bytes().strip()


def comma_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip().upper() for part in raw.split(",") if part.strip())


_FIELDS = {f.name: f for f in fields(Settings)}
