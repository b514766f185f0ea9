from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sidecar.keys import (
    KEY_PREFIX,
    KeyEntry,
    KeyFileError,
    StaticKeyStore,
    add_key,
    hash_key,
    new_key,
    read_key_file,
    revoke_key,
    write_key_file,
)


def test_new_keys_are_long_random_and_prefixed() -> None:
    keys = {new_key() for _ in range(100)}
    assert len(keys) == 100
    assert all(k.startswith(KEY_PREFIX) and len(k) >= 40 for k in keys)


def test_hash_is_sha256_hex() -> None:
    assert hash_key("sk-lp-abc") == hashlib.sha256(b"sk-lp-abc").hexdigest()


def test_file_stores_hashes_only_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    key = add_key(path, "alice", priority=3)
    text = path.read_text()
    assert key not in text
    assert hash_key(key) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    (entry,) = read_key_file(path)
    assert (entry.id, entry.priority, entry.disabled) == ("alice", 3, False)


def test_lookup_finds_the_matching_entry_only(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    a, b = add_key(path, "a"), add_key(path, "b")
    store = StaticKeyStore(path)
    assert store.lookup(a).id == "a"  # type: ignore[union-attr]
    assert store.lookup(b).id == "b"  # type: ignore[union-attr]
    assert store.lookup("sk-lp-unknown") is None
    assert store.lookup(a[:-1]) is None


def test_recreating_an_id_replaces_its_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    old = add_key(path, "a")
    new = add_key(path, "a")
    store = StaticKeyStore(path)
    assert store.lookup(old) is None
    assert store.lookup(new) is not None


def test_revoke_disables(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    key = add_key(path, "a")
    assert revoke_key(path, "a")
    assert StaticKeyStore(path).lookup(key).disabled  # type: ignore[union-attr]
    assert not revoke_key(path, "nobody")


@pytest.mark.parametrize(
    ("document", "problem"),
    [
        ("[]", "expected a mapping with a 'keys' list"),
        ("keys: [{id: a, sha256: abc}]", "sha256 must be 64 hex digits"),
        ("keys: [{id: 'a b', sha256: " + "a" * 64 + "}]", "id 'a b'"),
        ("keys: [{id: a, sha256: " + "a" * 64 + ", colour: red}]", "unknown field(s) colour"),
        ("keys: [{id: a, sha256: " + "a" * 64 + "}, {id: a, sha256: " + "b" * 64 + "}]", "duplicate id"),
        ("keys: [{id: a, sha256: " + "a" * 64 + ", expires: soon}]", "not an ISO 8601"),
        ("keys: [{id: a, sha256: " + "a" * 64 + ", priority: high}]", "priority must be an integer"),
        ("keys: [", "cannot read keys"),
    ],
)
def test_bad_files_are_refused_with_the_reason(tmp_path: Path, document: str, problem: str) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(document)
    with pytest.raises(KeyFileError) as caught:
        read_key_file(path)
    assert problem in str(caught.value)


def test_store_reloads_a_changed_file_and_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    first = add_key(path, "a")
    store = StaticKeyStore(path, check_interval=0)
    second = add_key(path, "b")
    assert store.lookup(second) is not None
    path.write_text("keys: [broken")
    os.utime(path, (time.time() + 5, time.time() + 5))
    assert store.lookup(first) is not None  # previous set kept
    write_key_file(path, [KeyEntry("c", hash_key("sk-lp-c-key"))])
    assert store.lookup("sk-lp-c-key") is not None
    assert store.lookup(first) is None


def llm_pod_keys(*args: str) -> subprocess.CompletedProcess[str]:
    """The `llm-pod-keys` console script that `make venv` installs, run as a user runs it."""
    script = Path(sys.executable).parent / "llm-pod-keys"
    if not script.exists():
        pytest.fail(f"{script} is missing: run `make venv` (installs the project's console scripts)")
    return subprocess.run([str(script), *args], capture_output=True, text=True, check=False, timeout=60)


def test_the_console_script_prints_a_new_key_once_and_lists_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    made = llm_pod_keys("create", "--file", str(path), "--id", "ci", "--priority", "2", "--rpm", "30")
    assert made.returncode == 0, made.stderr
    key = made.stdout.strip()
    assert key.startswith(KEY_PREFIX)
    assert made.stdout == key + "\n"  # the key, once, and nothing else
    assert key not in made.stderr
    (entry,) = read_key_file(path)
    assert (entry.id, entry.sha256, entry.priority, entry.limits) == ("ci", hash_key(key), 2, {"rpm": 30})
    listed = llm_pod_keys("list", "--file", str(path))
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"id": "ci", "priority": 2, "state": "active", "limits": {"rpm": 30}}
    for output in (listed.stdout, listed.stderr):
        assert key not in output
        assert hash_key(key) not in output
    shown = llm_pod_keys("show", "--file", str(path), "--id", "ci")
    assert hash_key(key) not in shown.stdout
    assert key not in shown.stdout


def test_creating_an_existing_id_in_a_keys_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    assert llm_pod_keys("create", "--file", str(path), "--id", "ci").returncode == 0
    before = path.read_text()
    again = llm_pod_keys("create", "--file", str(path), "--id", "ci")
    assert again.returncode != 0
    assert "exists: rotate or revoke it" in again.stderr
    assert again.stdout == ""  # no key printed: none was made
    assert path.read_text() == before
