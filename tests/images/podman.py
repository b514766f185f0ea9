"""The project's images, built and run for real with podman (no Docker engine, no registry here).

- Base images come from no registry: each upstream base the Dockerfiles name (`FROM ...`) gets a
  STAND-IN built from a debootstrapped Debian bookworm, tagged with the upstream name and labelled
  `io.llm-pod.stand-in`. A stand-in is a test double of the upstream image: the same Debian release
  and the tools the Dockerfiles use (`python`/`pip` in /usr/local/bin; nginx with envsubst and curl),
  not its exact contents. An image of that name without the label (a real upstream pull) is used
  as it is and never replaced.
- The stand-ins trust the CA bundle this machine trusts, so pip inside a build reaches PyPI through
  whatever TLS inspection the machine's network does.
- The project's images are tagged by a hash of everything their build reads, so a machine builds
  each version once (the llama.cpp image compiles llama-cpp-python: about 10 minutes on 2 cores).
- podman runs with a containers.conf of this module's (runc; explicit nofile/nproc ulimits, which
  this sandbox requires) and host networking: every address the tests use is on loopback.

`python -m tests.images.podman` builds everything ahead of the tests.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STATE = ROOT / ".tools" / "podman"
STAND_IN_LABEL = "io.llm-pod.stand-in"
DEBIAN_MIRROR = os.environ.get("LLM_POD_DEBIAN_MIRROR", "http://deb.debian.org/debian")
INSTALL = "apt-get install -y podman runc catatonit debootstrap   (or: make test-deps)"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

# The project's images: Dockerfile, and what their builds read besides it (COPY sources).
PROJECT = ["pyproject.toml", "README.md", "sidecar", "inference", "localpod", "loadtest"]
IMAGES = {
    "nginx": ("nginx/Dockerfile", ["nginx/llm-pod.conf.template", "nginx/entrypoint.sh"]),
    "sidecar": ("sidecar/Dockerfile", PROJECT),
    "llamacpp": ("inference/Dockerfile.llamacpp", PROJECT),
}

# Stand-in recipes for the upstream bases, keyed by the image name without its tag. Each starts
# from the debootstrapped Debian (BASE) and adds what the Dockerfiles rely on.
BASE = "localhost/llm-pod-test/debian:bookworm"
STAND_INS = {
    "docker.io/library/python": """
FROM {base}
RUN apt-get update && apt-get install -y --no-install-recommends python3 python3-venv ca-certificates \\
 && rm -rf /var/lib/apt/lists/* \\
 && python3 -m venv /usr/local
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
ENV PIP_CERT=/etc/ssl/certs/ca-certificates.crt SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
LABEL {label}=true
""",
    "docker.io/library/nginx": """
FROM {base}
RUN apt-get update && apt-get install -y --no-install-recommends nginx gettext-base curl ca-certificates \\
 && rm -rf /var/lib/apt/lists/*
LABEL {label}=true
""",
}


class ImageError(RuntimeError):
    pass


def containers_conf() -> Path:
    conf = STATE / "containers.conf"
    text = (
        "# llm-pod tests: runc, and ulimits this sandbox allows (podman's defaults are refused)\n"
        "[containers]\n"
        'default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]\n'
        "[engine]\n"
        'runtime = "runc"\n'
    )
    if not conf.exists() or conf.read_text() != text:
        conf.parent.mkdir(parents=True, exist_ok=True)
        conf.write_text(text)
    return conf


def podman(*args: str, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    exe = shutil.which("podman")
    if exe is None or shutil.which("runc") is None:
        raise ImageError(f"podman and runc are needed: {INSTALL}")
    env = {**os.environ, "CONTAINERS_CONF": str(containers_conf())}
    done = subprocess.run([exe, *args], env=env, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise ImageError(f"podman {' '.join(args[:3])} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def image_exists(name: str) -> bool:
    return podman("image", "exists", name, check=False).returncode == 0


def is_stand_in(name: str) -> bool:
    label = f'{{{{index .Labels "{STAND_IN_LABEL}"}}}}'
    done = podman("image", "inspect", "--format", label, name, check=False)
    return done.stdout.strip() == "true"


def bases(dockerfile: Path) -> list[str]:
    """The upstream images a Dockerfile builds from (stage names excluded)."""
    stages: set[str] = set()
    found: list[str] = []
    for match in re.finditer(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", dockerfile.read_text(), re.M | re.I):
        image, stage = match.group(1), match.group(2)
        if image not in stages and image not in found:
            found.append(image)
        if stage:
            stages.add(stage)
    return found


def debian_base() -> str:
    """Debian bookworm from debootstrap (Debian's own archive), imported once."""
    if image_exists(BASE):
        return BASE
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ImageError(f"debootstrap is needed for the base images: {INSTALL}")
    with tempfile.TemporaryDirectory(prefix="llm-pod-rootfs-") as rootfs:
        done = subprocess.run(
            [debootstrap, "--variant=minbase", "bookworm", rootfs, DEBIAN_MIRROR],
            capture_output=True, text=True, timeout=1200, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            raise ImageError(f"debootstrap failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        tar = subprocess.Popen(["tar", "-C", rootfs, "-c", "."], stdout=subprocess.PIPE)
        env = {**os.environ, "CONTAINERS_CONF": str(containers_conf())}
        imported = subprocess.run(
            [shutil.which("podman") or "podman", "import", "-", BASE],
            stdin=tar.stdout, capture_output=True, text=True, env=env, timeout=600, check=False,
        )  # fmt: skip
        tar.wait()
        if imported.returncode != 0:
            raise ImageError(f"podman import failed:\n{imported.stderr[-2000:]}")
    return BASE


def ensure_base(name: str) -> str:
    """The base image `name`: already there (an upstream pull, or our stand-in), or a stand-in now."""
    if image_exists(name):
        return "upstream" if not is_stand_in(name) else "stand-in"
    recipe = STAND_INS.get(name.rsplit(":", 1)[0])
    if recipe is None:
        raise ImageError(f"no stand-in recipe for base image {name}: add one to STAND_INS")
    base = debian_base()
    with tempfile.TemporaryDirectory(prefix="llm-pod-stand-in-") as ctx:
        shutil.copy(CA_BUNDLE, Path(ctx) / "ca-certificates.crt")
        (Path(ctx) / "Containerfile").write_text(recipe.format(base=base, label=STAND_IN_LABEL))
        podman("build", "--network", "host", "--pull=never", "-t", name, ctx)
    return "stand-in"


def context_hash(dockerfile: str, inputs: Sequence[str]) -> str:
    """A hash of everything the build reads, so each version of an image is built once."""
    digest = hashlib.sha256()
    for rel in [dockerfile, *inputs]:
        path = ROOT / rel
        files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
        for file in files:
            if "__pycache__" in file.parts:
                continue
            digest.update(str(file.relative_to(ROOT)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def build(name: str) -> str:
    """The project's image `name` (a key of IMAGES), built from the repository unless already built."""
    dockerfile, inputs = IMAGES[name]
    tag = f"localhost/llm-pod-test/{name}:{context_hash(dockerfile, inputs)}"
    if image_exists(tag):
        return tag
    for base in bases(ROOT / dockerfile):
        ensure_base(base)
    # A context of exactly the inputs: what a build may read is what the hash covers.
    with tempfile.TemporaryDirectory(prefix=f"llm-pod-{name}-") as ctx:
        for rel in [dockerfile, *inputs]:
            src, dst = ROOT / rel, Path(ctx) / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True)
            else:
                shutil.copy2(src, dst)
        podman("build", "--network", "host", "--pull=never", "-f", dockerfile, "-t", tag, ctx, timeout=3600)
    return tag


def main(argv: list[str] | None = None) -> int:
    names = (argv if argv is not None else sys.argv[1:]) or list(IMAGES)
    for name in names:
        print(name, build(name), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
