"""keda/: what a cluster needs once. The add-on values are checked against the chart's own budgets;
the kind script cannot run here (no container engine), so it is checked for syntax and deadlines."""

from __future__ import annotations

import re
import subprocess

import yaml

from tests.chart.tools import ROOT

KEDA = ROOT / "keda"
CHART_VALUES = ROOT / "charts" / "llm-pod" / "values.yaml"


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(ms|s|m|h)", duration)
    assert match, duration
    return int(match.group(1)) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[match.group(2)]


def test_add_on_timeouts_cover_the_chart_startup_budget_and_the_queue_is_bounded() -> None:
    interceptor = yaml.safe_load((KEDA / "http-add-on-values.yaml").read_text())["interceptor"]
    startup = yaml.safe_load(CHART_VALUES.read_text())["probes"]["startup"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert seconds(interceptor["readinessTimeout"]) >= budget
    assert seconds(interceptor["replicas"]["waitTimeout"]) >= budget  # add-on < 0.14
    assert seconds(interceptor["responseHeaderTimeout"]) >= 600  # long non-streamed completions
    assert seconds(interceptor["requestTimeout"]) == 0  # streams may last long
    assert interceptor["coldStart"]["maxPendingRequests"] > 0  # add-on >= 1.0; 0.15 has no bound


def test_kind_script_is_valid_bash_and_every_wait_has_a_deadline() -> None:
    script = KEDA / "kind-e2e.sh"
    done = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    text = script.read_text().replace("\\\n", " ")  # one line per command
    lines = [line.strip() for line in text.splitlines() if not line.strip().startswith("#")]
    loops = [line for line in lines if re.match(r"(until|while)\b", line)]
    # The one loop is wait_for's, which gives up at its deadline.
    assert loops == ['until "$@" >/dev/null 2>&1; do'], loops
    assert "if ((SECONDS >= deadline)); then" in lines
    for line in lines:
        if re.search(r"--wait(?!=false)\b", line) and line.startswith("helm"):
            assert "--timeout" in line, line
        if line.startswith(("helm test", "kubectl wait")):
            assert "--timeout" in line, line
        if "loadtest.coldstart" in line:
            assert "--deadline" in line, line
        if line.startswith("kind create cluster"):
            assert "--wait" in line, line
