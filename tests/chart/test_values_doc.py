"""Chart hygiene: every value is documented with a `# --` comment, and the chart README's values
table lists each documented value."""

from __future__ import annotations

import re
from typing import Any

import yaml

from tests.chart.tools import ROOT

CHART = ROOT / "charts" / "llm-pod"


def documented_paths() -> dict[str, str]:
    """Paths of values.yaml keys preceded by a `# --` comment, with the comment's text."""
    docs: dict[str, str] = {}
    stack: list[tuple[int, str]] = []
    pending: list[str] = []
    for line in (CHART / "values.yaml").read_text().splitlines():
        if m := re.match(r"^\s*# -- (.*)$", line):
            pending = [m.group(1)]
        elif (m := re.match(r"^\s*#\s?(.*)$", line)) and pending:
            pending.append(m.group(1))
        elif m := re.match(r"^(\s*)([A-Za-z0-9_]+):", line):
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            path = ".".join([k for _, k in stack] + [m.group(2)])
            if pending:
                docs[path] = " ".join(pending)
            stack.append((indent, m.group(2)))
            pending = []
    return docs


def leaves(value: Any, path: str = "") -> list[str]:
    if isinstance(value, dict) and value:
        return [leaf for k, v in value.items() for leaf in leaves(v, f"{path}.{k}" if path else k)]
    return [path]


def test_every_value_is_documented() -> None:
    docs = documented_paths()
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    undocumented = [
        leaf for leaf in leaves(values)
        if not any(leaf == p or leaf.startswith(p + ".") for p in docs)
    ]  # fmt: skip
    assert not undocumented, f"values without a `# --` comment: {undocumented}"


def test_the_readme_lists_every_documented_value() -> None:
    readme = (CHART / "README.md").read_text()
    missing = [p for p in documented_paths() if f"| `{p}` |" not in readme]
    assert not missing, f"charts/llm-pod/README.md lacks rows for: {missing}"
