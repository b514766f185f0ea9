"""The Helm chart, with the real helm (3 and 4), kubernetes-validate, the real KEDA and Prometheus
Operator CRDs, and checkov. No cluster: everything here is what a chart can be checked for without one."""

from __future__ import annotations

import functools
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from sidecar.settings import Settings
from tests.chart.tools import ROOT, ToolError, checkov, helm

CHART = ROOT / "charts" / "llm-pod"
SCENARIOS = sorted(p.name.removesuffix("-values.yaml") for p in (CHART / "ci").glob("*-values.yaml"))
NAMESPACE = "llm-serving"
K8S_VERSIONS = ("1.29.0", "1.37.0")  # the chart's kubeVersion floor, and the newest kubernetes-validate ships
CRD_KINDS = {"InterceptorRoute", "HTTPScaledObject", "ScaledObject", "ServiceMonitor", "PodMonitor"}


def crds_dir() -> Path:
    """Where the CRDs are: $LLM_POD_CRDS_DIR, else ../shared/crds next to the project, else next to the
    local repository this checkout was cloned from (a CI clone in a temporary directory)."""
    configured = os.environ.get("LLM_POD_CRDS_DIR")
    if configured:
        candidates = [Path(configured)]
    else:
        candidates = [ROOT.parent / "shared" / "crds"]
        origin = subprocess.run(
            ["git", "-C", str(ROOT), "config", "--get", "remote.origin.url"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        if origin.startswith("/"):
            candidates.append(Path(origin).parent / "shared" / "crds")
    for path in candidates:
        if path.is_dir():
            return path
    where = ", ".join(map(str, candidates))
    pytest.fail(
        f"no CRD directory at {where}: set LLM_POD_CRDS_DIR to a folder of CRD YAML files", pytrace=False
    )


@functools.cache
def tool(name: str) -> str:
    try:
        return str(checkov() if name == "checkov" else helm(name))
    except ToolError as err:
        pytest.fail(
            f"{err} (install the chart tools with: .venv/bin/python -m tests.chart.tools)", pytrace=False
        )


def run_helm(*args: str, helm_name: str = "helm3") -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool(helm_name), *args], capture_output=True, text=True, check=False)


def values_args(scenario: str) -> list[str]:
    return [] if scenario == "default" else ["-f", str(CHART / "ci" / f"{scenario}-values.yaml")]


@functools.cache
def rendered_text(scenario: str, extra: tuple[str, ...] = ()) -> str:
    done = run_helm("template", "t", str(CHART), "-n", NAMESPACE, *values_args(scenario), *extra)
    assert done.returncode == 0, done.stderr
    return done.stdout


def rendered(scenario: str, *extra: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered_text(scenario, tuple(extra))) if d]


def one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def containers(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    pod = one(docs, "Deployment", "t-llm-pod")["spec"]["template"]["spec"]
    return {c["name"]: c for c in pod["containers"]}


# --- helm lint and the schemas -----------------------------------------------------------------


@pytest.mark.parametrize("helm_name", ["helm3", "helm4"])
@pytest.mark.parametrize("scenario", ["default", *SCENARIOS])
def test_helm_lint_strict(scenario: str, helm_name: str) -> None:
    done = run_helm("lint", "--strict", str(CHART), *values_args(scenario), helm_name=helm_name)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize(("helm_name", "major"), [("helm3", "v3."), ("helm4", "v4.")])
def test_each_helm_binary_is_the_major_it_claims(helm_name: str, major: str) -> None:
    done = run_helm("version", "--short", helm_name=helm_name)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(major), done.stdout


@pytest.mark.parametrize("scenario", ["default", *SCENARIOS])
def test_helm4_renders_what_helm3_renders(scenario: str) -> None:
    """Every test below reads helm 3's output; helm 4 must render the same objects (it differs in
    blank lines only, so the documents are compared, not the text)."""
    done = run_helm("template", "t", str(CHART), "-n", NAMESPACE, *values_args(scenario), helm_name="helm4")
    assert done.returncode == 0, done.stderr
    helm4 = [d for d in yaml.safe_load_all(done.stdout) if d]
    assert helm4 == rendered(scenario)


def test_every_required_scenario_exists() -> None:
    required = {"cpu-llamacpp", "gpu-vllm", "keda-interceptorroute", "keda-httpscaledobject", "jwt-redis",
                "pvc-cache", "balloon"}  # fmt: skip
    assert required <= set(SCENARIOS)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("scenario", ["default", *SCENARIOS])
def test_rendered_objects_are_valid_kubernetes(scenario: str, version: str) -> None:
    checked = 0
    for doc in rendered(scenario):
        if doc["kind"] in CRD_KINDS:
            continue
        kubernetes_validate.validate(doc, version, strict=True)
        checked += 1
    assert checked >= 4


@functools.cache
def crd_schemas() -> dict[tuple[str, str, str], dict[str, Any]]:
    schemas = {}
    for path in crds_dir().glob("*.yaml"):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd or crd.get("kind") != "CustomResourceDefinition":
                continue
            group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
            for version in crd["spec"]["versions"]:
                schemas[(group, version["name"], kind)] = version["schema"]["openAPIV3Schema"]
    return schemas


def strict(schema: dict[str, Any]) -> dict[str, Any]:
    """Like the API server's pruning: properties a CRD does not declare are errors here, not dropped."""
    out = dict(schema)
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if "properties" in out:
        out["properties"] = {k: strict(v) for k, v in out["properties"].items()}
    if isinstance(out.get("items"), dict):
        out["items"] = strict(out["items"])
    return out


@pytest.mark.parametrize("scenario", ["gpu-vllm", "keda-interceptorroute", "keda-httpscaledobject"])
def test_keda_and_prometheus_objects_match_their_crds(scenario: str) -> None:
    docs = [d for d in rendered(scenario) if d["kind"] in CRD_KINDS]
    assert docs
    for doc in docs:
        group, version = doc["apiVersion"].split("/")
        schema = crd_schemas().get((group, version, doc["kind"]))
        assert schema is not None, f"no CRD for {doc['apiVersion']} {doc['kind']} in {crds_dir()}"
        body = {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata")}
        jsonschema.validate(
            body,
            strict(
                {k: v for k, v in schema.items() if k != "required"}
                | {
                    "properties": {
                        k: v
                        for k, v in schema.get("properties", {}).items()
                        if k not in ("apiVersion", "kind", "metadata")
                    }
                }
            ),
        )


# --- what the rendered pod promises -----------------------------------------------------------------


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_engine_is_bound_to_loopback_and_exposes_no_port(scenario: str) -> None:
    docs = rendered(scenario)
    engine = containers(docs)["engine"]
    assert "ports" not in engine
    env = {e["name"]: e.get("value", "") for e in engine.get("env", [])}
    if "args" in engine:  # vLLM: the chart passes the bind address
        assert "--host=127.0.0.1" in engine["args"]
        assert not any(a.startswith("--host=") and a != "--host=127.0.0.1" for a in engine["args"])
    else:  # llama.cpp: the entrypoint always binds 127.0.0.1 and refuses --host in extra args
        assert "--host" not in env.get("LLM_POD_ENGINE_EXTRA_ARGS", "")
    service = one(docs, "Service", "t-llm-pod")
    assert {p["targetPort"] for p in service["spec"]["ports"]} == {"http", "metrics"}
    nginx_ports = {p["name"] for p in containers(docs)["nginx"]["ports"]}
    assert nginx_ports == {"http", "metrics"}


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_probes_hit_nginx_ready_and_healthz(scenario: str) -> None:
    docs = rendered(scenario)
    nginx = containers(docs)["nginx"]
    http = next(p for p in nginx["ports"] if p["name"] == "http")
    env = {e["name"]: e.get("value") for e in nginx["env"]}
    assert str(http["containerPort"]) == env["LLM_POD_LISTEN_PORT"]  # nginx listens where the probes knock
    assert nginx["startupProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert nginx["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    assert nginx["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    budget = nginx["startupProbe"]["periodSeconds"] * nginx["startupProbe"]["failureThreshold"]
    assert budget >= 600, "a startup budget under 10 minutes kills pods loading large models"
    pod = one(docs, "Deployment", "t-llm-pod")["spec"]["template"]["spec"]
    drain = int(
        next(e["value"] for e in containers(docs)["sidecar"]["env"] if e["name"] == "LLM_POD_DRAIN_SECONDS")
    )
    assert pod["terminationGracePeriodSeconds"] > drain
    assert nginx["lifecycle"]["preStop"]["exec"]["command"] == ["sleep", str(drain)]


def test_no_secret_value_in_a_configmap_or_an_env_literal() -> None:
    text = rendered_text("cpu-llamacpp")
    generated = yaml.safe_load((CHART / "ci" / "cpu-llamacpp-values.yaml").read_text())["auth"]["staticKeys"][
        "generate"
    ]
    for item in generated:
        assert item["key"] not in text  # only its hash is rendered
    for scenario in SCENARIOS:
        for doc in rendered(scenario):
            if doc["kind"] == "ConfigMap":
                assert "sk-" not in json.dumps(doc["data"])
            for c in pod_containers(doc):
                for e in c.get("env", []):
                    value = str(e.get("value", ""))
                    assert not value.startswith(("sk-", "redis://", "rediss://", "hf_")), (scenario, e)
                    if any(w in e["name"] for w in ("TOKEN", "REDIS_URL", "SECRET", "PASSWORD")) and not e[
                        "name"
                    ].endswith("_FILE"):
                        assert "valueFrom" in e, (scenario, e)


def pod_containers(doc: dict[str, Any]) -> Iterator[dict[str, Any]]:
    spec = doc.get("spec", {})
    pod = spec.get("template", {}).get("spec", spec) if doc["kind"] in ("Deployment", "Pod") else {}
    yield from pod.get("initContainers", [])
    yield from pod.get("containers", [])


def test_keda_and_hpa_are_exclusive() -> None:
    done = run_helm(
        "template",
        "t",
        str(CHART),
        "--set",
        "autoscaling.keda.enabled=true",
        "--set",
        "autoscaling.hpa.enabled=true",
    )
    assert done.returncode != 0
    assert "choose one autoscaler" in done.stderr
    assert not [d for d in rendered("keda-interceptorroute") if d["kind"] == "HorizontalPodAutoscaler"]
    assert one(rendered("hpa"), "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == "t-llm-pod"


def test_interceptor_route_and_scaled_object_point_at_what_the_chart_creates() -> None:
    docs = rendered("keda-interceptorroute")
    route = one(docs, "InterceptorRoute")
    scaled = one(docs, "ScaledObject")
    service = one(docs, "Service", route["spec"]["target"]["service"])
    assert route["spec"]["target"]["port"] in {p["port"] for p in service["spec"]["ports"]}
    assert one(docs, "Deployment", scaled["spec"]["scaleTargetRef"]["name"])["kind"] == "Deployment"
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "external-push"
    assert trigger["metadata"]["interceptorRoute"] == route["metadata"]["name"]
    assert scaled["spec"]["minReplicaCount"] == 0
    assert "replicas" not in one(docs, "Deployment")["spec"]  # KEDA owns the replica count
    assert route["spec"]["rules"][0]["paths"] == [{"value": "/gemma-3-270m"}]  # default: /<served model>
    assert route["spec"]["coldStart"]["placeholder"]["response"]["statusCode"] == 503
    assert route["spec"]["timeouts"]["readiness"] == "15m"
    ingress = one(docs, "Ingress")
    backend = ingress["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    external = one(docs, "Service", backend["name"])
    assert external["spec"]["type"] == "ExternalName"
    assert external["spec"]["externalName"] == "keda-add-ons-http-interceptor-proxy.keda.svc.cluster.local"
    assert ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"


def test_http_scaled_object_points_at_what_the_chart_creates() -> None:
    docs = rendered("keda-httpscaledobject")
    hso = one(docs, "HTTPScaledObject")
    ref = hso["spec"]["scaleTargetRef"]
    assert one(docs, "Deployment", ref["name"])
    service = one(docs, "Service", ref["service"])
    assert ref["port"] in {p["port"] for p in service["spec"]["ports"]}
    assert hso["spec"]["replicas"]["min"] == 0
    # nginx strips the custom prefix the route sends it; plain /v1 (with the gateway's header) needs none.
    assert hso["spec"]["pathPrefixes"] == ["/models/gemma", "/v1"]
    assert env_of(containers(docs)["nginx"])["LLM_POD_PATH_PREFIX"] == "/models/gemma"
    assert hso["spec"]["headers"] == [{"name": "X-Model", "value": "gemma-3-270m"}]
    assert "requestRate" in hso["spec"]["scalingMetric"]
    assert not [d for d in docs if d["kind"] in ("ScaledObject", "InterceptorRoute")]


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


@pytest.mark.parametrize(
    ("settings", "nginx_prefix", "routed"),
    [
        ((), "/gemma-3-270m", ["/gemma-3-270m"]),  # the defaults: /<served model> on both sides
        (("routing.pathPrefix=/team-a/gemma",), "/team-a/gemma", ["/team-a/gemma"]),
        (("autoscaling.keda.pathPrefixes={/v1/chat}",), "/gemma-3-270m", ["/v1/chat"]),
        (("autoscaling.keda.pathPrefixes={/gemma-3-270m/v1}",), "/gemma-3-270m", ["/gemma-3-270m/v1"]),
    ],
)
def test_keda_path_prefixes_default_to_what_nginx_strips(
    settings: tuple[str, ...], nginx_prefix: str, routed: list[str]
) -> None:
    extra = [a for s in settings for a in ("--set", s)]
    docs = rendered("keda-interceptorroute", *extra)
    assert env_of(containers(docs)["nginx"])["LLM_POD_PATH_PREFIX"] == nginx_prefix
    assert [p["value"] for p in one(docs, "InterceptorRoute")["spec"]["rules"][0]["paths"]] == routed


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (
            ["autoscaling.keda.pathPrefixes={/models/gemma}"],
            '"/models/gemma" would reach nginx, which strips only "/gemma-3-270m" (routing.pathPrefix)',
        ),
        (
            ["routing.pathPrefix=/a", "autoscaling.keda.pathPrefixes={/b}"],
            'autoscaling.keda.pathPrefixes: "/b" would reach nginx, which strips only "/a"',
        ),
        (["model.servedName=org/"], '"/org/" (from model.servedName) is not /name or /a/b'),
        (["routing.pathPrefix=/trailing/"], "routing.pathPrefix: Does not match pattern"),
    ],
)
def test_path_prefixes_nginx_cannot_serve_fail_at_render_time(settings: list[str], message: str) -> None:
    args = [a for s in settings for a in ("--set", s)]
    done = run_helm("template", "t", str(CHART), "--set", "autoscaling.keda.enabled=true", *args)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


def test_a_served_name_with_a_tag_is_its_own_path_prefix() -> None:
    done = run_helm("template", "t", str(CHART), "--set", "model.servedName=qwen2.5:7b")
    assert done.returncode == 0, done.stderr
    assert "- name: LLM_POD_PATH_PREFIX" in done.stdout
    assert 'value: "/qwen2.5:7b"' in done.stdout


def test_hardening() -> None:
    docs = rendered("jwt-redis")
    pod = one(docs, "Deployment", "t-llm-pod")["spec"]["template"]["spec"]
    assert pod["automountServiceAccountToken"] is False
    assert pod["securityContext"]["runAsNonRoot"] is True
    for c in [*pod.get("initContainers", []), *pod["containers"]]:
        sc = c["securityContext"]
        assert sc["capabilities"]["drop"] == ["ALL"]
        assert sc["allowPrivilegeEscalation"] is False
        assert sc["readOnlyRootFilesystem"] is True
        assert sc["seccompProfile"]["type"] == "RuntimeDefault"
    policy = one(docs, "NetworkPolicy")
    assert [p["port"] for rule in policy["spec"]["ingress"] for p in rule["ports"]] == ["http", "metrics"]
    assert one(docs, "PodDisruptionBudget")["spec"]["maxUnavailable"] == 1
    assert one(docs, "ServiceAccount")["automountServiceAccountToken"] is False
    annotations = one(docs, "Deployment", "t-llm-pod")["spec"]["template"]["metadata"]["annotations"]
    assert {"checksum/keys", "checksum/settings"} <= set(annotations)


def test_gpu_scenario_requests_gpus_and_shared_memory() -> None:
    docs = rendered("gpu-vllm")
    engine = containers(docs)["engine"]
    assert engine["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert engine["image"].startswith("docker.io/vllm/vllm-openai:")
    rope = next(a for a in engine["args"] if a.startswith("--rope-scaling="))
    assert json.loads(rope.removeprefix("--rope-scaling=")) == {
        "rope_type": "yarn",
        "factor": 2.0,
        "original_max_position_embeddings": 32768,
    }
    pod = one(docs, "Deployment", "t-llm-pod")["spec"]["template"]["spec"]
    assert {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": "8Gi"}} in pod["volumes"]
    assert pod["runtimeClassName"] == "nvidia"
    fetch = pod["initContainers"][0]
    assert "--source=hf://Qwen/Qwen2.5-7B-Instruct" in fetch["args"]
    assert (
        next(e for e in fetch["env"] if e["name"] == "HF_TOKEN")["valueFrom"]["secretKeyRef"]["name"]
        == "hf-token"
    )
    assert one(docs, "PersistentVolumeClaim")["spec"]["resources"]["requests"]["storage"] == "40Gi"


def test_balloon_placeholders_are_preemptible_and_never_selected_by_the_service() -> None:
    docs = rendered("balloon")
    balloon = one(docs, "Deployment", "t-llm-pod-balloon")
    priority = one(docs, "PriorityClass")
    assert priority["value"] < 0
    assert balloon["spec"]["template"]["spec"]["priorityClassName"] == priority["metadata"]["name"]
    selector = one(docs, "Service", "t-llm-pod")["spec"]["selector"]
    labels = balloon["spec"]["template"]["metadata"]["labels"]
    assert not all(labels.get(k) == v for k, v in selector.items())
    assert balloon["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("engine.type=vlm", 'engine.type must be one of the following: "llamacpp", "vllm"'),
        ("replicaCount=two", "replicaCount: Invalid type. Expected: integer"),
        ("model.weights=x", "Additional property weights is not allowed"),
        ("autoscaling.keda.api=scaledJob", "autoscaling.keda.api must be one of the following"),
        ("model.source=ftp://x", "model.source: Does not match pattern"),
        ("ports.http=70000", "ports.http: Must be less than or equal to 65535"),
        ("auth.limits.defaultRpn=5", "auth.limits: Additional property defaultRpn is not allowed"),
        ("auth.limits.defaultRpm=-1", "auth.limits.defaultRpm: Must be greater than or equal to 0"),
        ("autoscaling.keda.headers[0].name=X-Model", "autoscaling.keda.headers.0: value is required"),
        ("autoscaling.keda.headers[0].header=X", "Additional property header is not allowed"),
        ("clusterDomain=Bad_Domain", "clusterDomain: Does not match pattern"),
    ],
)
def test_the_schema_rejects_bad_values_with_a_clear_error(setting: str, message: str) -> None:
    done = run_helm("template", "t", str(CHART), "--set", setting)
    assert done.returncode != 0
    assert message in done.stderr, done.stderr


# --- checkov ------------------------------------------------------------------------------------


def checkov_failures(*args: str, at_least: int) -> list[tuple[str, str]]:
    """checkov's failed checks, unfiltered: every skip lives in .checkov.yaml (global, with reasons) or
    in a `checkov.io/skipN` annotation on the one resource it applies to."""
    env = {
        **os.environ,
        "PATH": f"{Path(tool('helm3')).parent}:{os.environ.get('PATH', '')}",
        # checkov's helm scan runs a bare `helm template`: helm reads the namespace from here.
        "HELM_NAMESPACE": NAMESPACE,
    }
    config = str(CHART / ".checkov.yaml")
    done = subprocess.run(
        [tool("checkov"), *args, "--config-file", config, "--output", "json", "--quiet"],
        capture_output=True, text=True, check=False, env=env, timeout=600,
    )  # fmt: skip
    assert done.stdout.strip(), done.stderr[-2000:]
    reports = json.loads(done.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    # checkov drops a chart whose `helm template` printed anything on stderr, and then passes: make
    # sure it scanned the resources.
    scanned = sum(r.get("summary", {}).get("resource_count", 0) for r in reports)
    assert scanned >= at_least, f"checkov scanned {scanned} resources: {done.stderr[-2000:]}"
    return [
        (f["check_id"], f["resource"]) for r in reports for f in r.get("results", {}).get("failed_checks", [])
    ]


def test_checkov_passes_on_every_rendered_scenario(tmp_path: Path) -> None:
    for scenario in ["default", *SCENARIOS]:
        (tmp_path / f"{scenario}.yaml").write_text(rendered_text(scenario))
    assert checkov_failures("-d", str(tmp_path), "--framework", "kubernetes", at_least=40) == []


def test_checkov_passes_on_the_chart() -> None:
    # The default values: ServiceAccount, Service, Deployment, NetworkPolicy, the test Pod at least.
    assert checkov_failures("-d", str(CHART), "--framework", "helm", at_least=5) == []


def test_checkov_skips_are_global_only_when_they_apply_to_every_resource() -> None:
    """Per-resource findings are skipped on their resource, so a new container cannot hide behind them."""
    config = yaml.safe_load((CHART / ".checkov.yaml").read_text())
    assert set(config["skip-check"]) == {"CKV_K8S_43", "CKV_K8S_15", "CKV_K8S_11"}
    deployment = one(rendered("gpu-vllm"), "Deployment", "t-llm-pod")["metadata"]["annotations"]
    skips = {v.split("=", 1)[0] for k, v in deployment.items() if k.startswith("checkov.io/skip")}
    assert skips == {"CKV_K8S_8", "CKV_K8S_9", "CKV_K8S_22", "CKV_K8S_35"}
    # llama.cpp has a read-only root filesystem and no Secret in its env: nothing to skip for it.
    deployment = one(rendered("pvc-cache"), "Deployment", "t-llm-pod")["metadata"]["annotations"]
    skips = {v.split("=", 1)[0] for k, v in deployment.items() if k.startswith("checkov.io/skip")}
    assert skips == {"CKV_K8S_8", "CKV_K8S_9"}
    for value in deployment.values():
        assert value.count("=") == 1, "checkov splits a skip on '=': a reason must not contain one"


def test_jwks_and_hmac_secret_are_exclusive() -> None:
    done = run_helm(
        "template", "t", str(CHART), "--set", "auth.jwt.enabled=true", "--set", "auth.jwt.jwksUrl=https://idp/jwks",
        "--set", "auth.jwt.secret.existingSecret=s",
    )  # fmt: skip
    assert done.returncode != 0
    assert "not both" in done.stderr


@pytest.mark.parametrize("scenario", ["default", *SCENARIOS])
def test_the_sidecar_accepts_the_settings_the_chart_renders(scenario: str, tmp_path: Path) -> None:
    """The chart's env for the sidecar, as the sidecar reads it: every name and value must pass
    Settings.from_env (mounted files stand in as temporary files, Secret values as sample values)."""
    sidecar = containers(rendered(scenario))["sidecar"]
    env: dict[str, str] = {}
    for item in sidecar["env"]:
        name = item["name"]
        if "valueFrom" in item:
            env[name] = "redis://127.0.0.1:6379/0" if name == "LLM_POD_REDIS_URL" else "sample"
        elif name.endswith("_FILE"):
            stand_in = tmp_path / Path(item["value"]).name
            stand_in.write_text("keys: []\n" if name == "LLM_POD_API_KEYS_FILE" else "s" * 64)
            env[name] = str(stand_in)
        else:
            env[name] = str(item["value"])
    assert all(name.startswith("LLM_POD_") for name in env)
    settings = Settings.from_env(env)
    assert settings.served_model == env["LLM_POD_SERVED_MODEL"]
    assert settings.engine_port == int(env["LLM_POD_ENGINE_PORT"])
