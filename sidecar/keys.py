"""API keys: how they are made, hashed, stored in a file and checked.

A key is shown once, when it is made; only its SHA-256 is ever stored. The static file is a
mounted Secret (or `.run/keys.yaml` under `make run`) and is re-read when it changes.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

logger = logging.getLogger(__name__)

KEY_PREFIX = "sk-lp-"
# A key id of the file or Redis store. It never holds `:`, so it can never equal a JWT's key id,
# which is `jwt:<sub>` or `jwt:<prefix>:<hash>` (sidecar.tokens.key_id_for), at most 64 characters
# from the same alphabet plus `:`, which headers, log lines and metric labels all carry as it is.
KEY_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
# Per-key limits: requests per minute, and requests in flight at once.
LIMIT_NAMES = frozenset({"rpm", "concurrency"})


class KeyFileError(ValueError):
    pass


def new_key() -> str:
    """A fresh API key: 256 bits from the OS's CSPRNG, url-safe, recognisable by its prefix."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


@dataclass(frozen=True, slots=True)
class KeyEntry:
    id: str
    sha256: str
    priority: int = 0
    disabled: bool = False
    expires: datetime | None = None
    limits: dict[str, int] = field(default_factory=dict)
    models: tuple[str, ...] = ()  # served models this key may use; empty: any

    def allows_model(self, served_model: str) -> bool:
        return not self.models or served_model in self.models

    def expired(self, now: datetime | None = None) -> bool:
        return self.expires is not None and (now or datetime.now(UTC)) >= self.expires

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"id": self.id, "sha256": self.sha256, "priority": self.priority}
        if self.disabled:
            out["disabled"] = True
        if self.expires is not None:
            out["expires"] = self.expires.isoformat()
        if self.limits:
            out["limits"] = dict(self.limits)
        if self.models:
            out["models"] = list(self.models)
        return out


def _parse_expires(value: Any, where: str, problems: list[str]) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        parsed = value
    else:
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            problems.append(f"{where}: expires={value!r} is not an ISO 8601 date-time")
            return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_entries(document: Any, source: str) -> list[KeyEntry]:
    """Validate a keys document ({"keys": [...]}) and return its entries; list every problem."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise KeyFileError(f"{source}: expected a mapping with a 'keys' list")
    problems: list[str] = []
    entries: list[KeyEntry] = []
    seen_ids: set[str] = set()
    seen_hashes: set[str] = set()
    for index, raw in enumerate(document["keys"]):
        where = f"{source}: keys[{index}]"
        if not isinstance(raw, dict):
            problems.append(f"{where}: expected a mapping")
            continue
        unknown = set(raw) - {"id", "sha256", "priority", "disabled", "expires", "limits", "models"}
        if unknown:
            problems.append(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        key_id, digest = str(raw.get("id", "")), str(raw.get("sha256", "")).lower()
        if not KEY_ID.match(key_id):
            problems.append(f"{where}: id {key_id!r} must be 1-64 of letters, digits, . _ -")
        elif key_id in seen_ids:
            problems.append(f"{where}: duplicate id {key_id!r}")
        if not SHA256_HEX.match(digest):
            problems.append(f"{where}: sha256 must be 64 hex digits (the hash, never the key)")
        elif digest in seen_hashes:
            problems.append(f"{where}: the same key hash appears twice")
        priority, disabled = raw.get("priority", 0), raw.get("disabled", False)
        if not isinstance(priority, int) or isinstance(priority, bool):
            problems.append(f"{where}: priority must be an integer")
            priority = 0
        if not isinstance(disabled, bool):
            problems.append(f"{where}: disabled must be true or false")
        limits = raw.get("limits") or {}
        if not isinstance(limits, dict) or not all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in limits.values()
        ):
            problems.append(f"{where}: limits must map names to non-negative integers")
            limits = {}
        elif set(limits) - LIMIT_NAMES:
            problems.append(f"{where}: unknown limit(s) {', '.join(sorted(set(limits) - LIMIT_NAMES))}")
        models = raw.get("models") or []
        if not isinstance(models, list) or not all(isinstance(m, str) for m in models):
            problems.append(f"{where}: models must be a list of served model names")
            models = []
        expires = _parse_expires(raw.get("expires"), where, problems)
        seen_ids.add(key_id)
        seen_hashes.add(digest)
        entries.append(
            KeyEntry(key_id, digest, priority, disabled is True, expires, dict(limits), tuple(models))
        )
    if problems:
        raise KeyFileError("\n".join(problems))
    return entries


def read_key_file(path: Path) -> list[KeyEntry]:
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as err:
        raise KeyFileError(f"{path}: cannot read keys: {err}") from err
    return parse_entries(document, str(path))


def write_key_file(path: Path, entries: Iterable[KeyEntry]) -> None:
    """Replace the file atomically so a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    body = yaml.safe_dump({"keys": [e.to_dict() for e in entries]}, sort_keys=False)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(body)
    tmp.replace(path)


class StaticKeyStore:
    """Keys from one file, re-read (at most once per `check_interval`) when its mtime changes.

    A file that turns invalid on reload keeps the last good set and logs the problem: a typo in a
    Secret must not lock every user out, and the previous set was a deliberate state.
    """

    def __init__(self, path: Path, check_interval: float = 1.0) -> None:
        self.path = path
        self.check_interval = check_interval
        self._entries = read_key_file(path)
        self._stamp = self._file_stamp()
        self._checked = time.monotonic()

    def _file_stamp(self) -> tuple[int, int, int]:
        st = self.path.stat()
        return (st.st_mtime_ns, st.st_size, st.st_ino)

    @property
    def entries(self) -> list[KeyEntry]:
        return list(self._entries)

    def maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._checked < self.check_interval:
            return
        self._checked = now
        try:
            stamp = self._file_stamp()
            if stamp == self._stamp:
                return
            self._entries = read_key_file(self.path)
            self._stamp = stamp
            logger.info("reloaded %d key(s) from %s", len(self._entries), self.path)
        except (OSError, KeyFileError) as err:
            logger.error("keeping the previous keys: %s", err)  # noqa: TRY400 - the message is the detail

    def lookup(self, presented: str) -> KeyEntry | None:
        """Find the entry whose hash matches, comparing against every entry in constant time."""
        self.maybe_reload()
        digest = hash_key(presented)
        found: KeyEntry | None = None
        for entry in self._entries:
            if hmac.compare_digest(entry.sha256, digest) and found is None:
                found = entry
        return found


def check_key_id(key_id: str) -> None:
    if not KEY_ID.match(key_id):
        raise KeyFileError(f"id {key_id!r} must be 1-64 of letters, digits, . _ -")


def add_key(
    path: Path,
    key_id: str,
    priority: int = 0,
    expires: datetime | None = None,
    limits: dict[str, int] | None = None,
    models: tuple[str, ...] = (),
) -> str:
    """Add (or replace, by id) one key in a keys file; return the new key, which is stored nowhere."""
    check_key_id(key_id)
    entries = read_key_file(path) if path.exists() else []
    key = new_key()
    entry = KeyEntry(
        key_id, hash_key(key), priority, expires=expires, limits=dict(limits or {}), models=models
    )
    kept = [e for e in entries if e.id != key_id]
    write_key_file(path, [*kept, entry])
    return key


def revoke_key(path: Path, key_id: str) -> bool:
    entries = read_key_file(path)
    changed = [replace(e, disabled=True) if e.id == key_id else e for e in entries]
    if changed == entries:
        return False
    write_key_file(path, changed)
    return True


def rotate_key(path: Path, key_id: str) -> str:
    """A new key for an id, keeping its metadata; the old key stops working on the next reload."""
    entries = read_key_file(path)
    if not any(e.id == key_id for e in entries):
        raise KeyFileError(f"no key with id {key_id!r}")
    key = new_key()
    write_key_file(
        path, [replace(e, sha256=hash_key(key), disabled=False) if e.id == key_id else e for e in entries]
    )
    return key
