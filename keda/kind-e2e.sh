#!/usr/bin/env bash
# A cold start end to end on a local kind cluster: KEDA + the HTTP add-on + llm-pod with the bundled
# model, scaled from zero by the first request. Needs docker, kind, kubectl and helm on PATH.
# It cannot run where there is no container engine (the project's CI machines); GitHub Actions runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
cluster=${KIND_CLUSTER:-llm-pod-e2e}
tag=e2e

# Every wait has a deadline: wait_for SECONDS WHAT COMMAND... retries COMMAND until it succeeds.
wait_for() {
  local seconds=$1 what=$2 deadline=$((SECONDS + $1))
  shift 2
  until "$@" >/dev/null 2>&1; do
    if ((SECONDS >= deadline)); then
      echo "kind-e2e: gave up after ${seconds}s waiting for $what" >&2
      return 1
    fi
    sleep 2
  done
}

kind create cluster --name "$cluster" --wait 120s
trap 'kind delete cluster --name "$cluster"' EXIT

for image in nginx:nginx/Dockerfile sidecar:sidecar/Dockerfile llamacpp:inference/Dockerfile.llamacpp; do
  name=${image%%:*} file=${image#*:}
  docker build -q -f "$file" -t "ghcr.io/llm-pod/$name:$tag" .
  kind load docker-image --name "$cluster" "ghcr.io/llm-pod/$name:$tag"
done

helm repo add kedacore https://kedacore.github.io/charts >/dev/null
helm repo update >/dev/null
helm install keda kedacore/keda -n keda --create-namespace --version 2.20.2 --wait --timeout 10m
helm install http-add-on kedacore/keda-add-ons-http -n keda --version 0.15.0 -f keda/http-add-on-values.yaml \
  --wait --timeout 10m

key=$(python3 -c 'import secrets; print("sk-lp-" + secrets.token_urlsafe(32))')
helm install gemma charts/llm-pod --wait=false \
  --set nginx.image.tag="$tag" --set sidecar.image.tag="$tag" \
  --set engine.llamacpp.image.tag="$tag" \
  --set auth.staticKeys.existingSecret="" --set "auth.staticKeys.generate[0].id=e2e" \
  --set "auth.staticKeys.generate[0].key=$key" \
  --set autoscaling.keda.enabled=true --set networkPolicy.enabled=false

# Scaled to zero before the first request: no pod runs.
scaled_to_zero() { [ "$(kubectl get deployment gemma-llm-pod -o jsonpath='{.spec.replicas}')" = 0 ]; }
wait_for 300 "KEDA to scale gemma-llm-pod to zero" scaled_to_zero
kubectl -n keda port-forward svc/keda-add-ons-http-interceptor-proxy 18080:8080 >/dev/null &
trap 'kill %1 2>/dev/null; kind delete cluster --name "$cluster"' EXIT
wait_for 60 "the port-forward to the interceptor" curl -s -o /dev/null http://127.0.0.1:18080/
LLM_POD_API_KEY="$key" timeout 960 python3 -m loadtest.coldstart --url http://127.0.0.1:18080/gemma-3-270m --deadline 900
# The chart's own test: through the interceptor, as NOTES.txt says.
helm test gemma --timeout 22m --logs
