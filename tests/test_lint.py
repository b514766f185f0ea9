"""`make lint` as part of `make test`: ruff (rules and format) and mypy strict hold for the whole tree."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.harness import ROOT, python

BIN = Path(python()).parent


@pytest.mark.parametrize(
    "argv",
    [["ruff", "check", "."], ["ruff", "format", "--check", "."], ["mypy"]],
    ids=["ruff-check", "ruff-format", "mypy"],
)
def test_lint(argv: list[str]) -> None:
    tool = BIN / argv[0]
    if not tool.exists():
        pytest.fail(f"{argv[0]} is missing: make venv (pyproject's test extra)", pytrace=False)
    done = subprocess.run([str(tool), *argv[1:]], cwd=ROOT, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
